"""Siamese clustering and class averages (issue: clustering)."""

import os

import mrcfile
import numpy
import pytest

from cupyden.cli import cluster as cli
from cupyden.cluster import cluster, kmeans, nmi, purity, sample_pairs
from cupyden.io.patches import fourier_resize
from cupyden.io.star import write_particles_star
from cupyden.simulate import DEFAULT_MODEL, particle_set, particle_stack, read_atoms

from conftest import shared_data



def test_purity_and_nmi_by_hand():
    truth = numpy.array([0, 0, 0, 1, 1, 1])
    assert purity(numpy.array([1, 1, 1, 0, 0, 0]), truth) == 1.0
    assert nmi(numpy.array([1, 1, 1, 0, 0, 0]), truth) == pytest.approx(1.0)
    # clusters {0,1,3} and {2,4,5}: majorities 2 + 2 of 6
    assert purity(numpy.array([0, 0, 1, 0, 1, 1]), truth) == pytest.approx(4 / 6)
    assert nmi(numpy.array([0, 1, 0, 1, 0, 1]), truth) == pytest.approx(0.0817, abs=1e-4)


def test_kmeans_separates_blobs(xp):
    rng = numpy.random.default_rng(0)
    centres = rng.standard_normal((4, 6)) * 10
    truth = numpy.repeat(numpy.arange(4), 25)
    x = centres[truth] + rng.standard_normal((100, 6))
    assert purity(kmeans(xp.asarray(x), 4), truth) == 1.0


def test_pairs_are_half_same_half_different():
    labels = numpy.repeat([0, 1, 2], 5)
    i, j, y = sample_pairs(labels, 40, numpy.random.default_rng(0))
    assert (labels[i][y == 0] == labels[j][y == 0]).all() and (i[y == 0] != j[y == 0]).all()
    assert (labels[i][y == 1] != labels[j][y == 1]).all() and y.mean() == 0.5


def test_simulated_groel_orientations_are_recovered():
    """Round 0 at an easy SNR (0.5 per pixel) on views without in-plane rotation. The
    rotation-invariant rounds are not asserted here: on unrotated views they lose purity
    (measured 1.000 -> 0.775 -> 0.675 with 2 rounds of 150 steps; issue 19's report)."""
    xyz, z = read_atoms(DEFAULT_MODEL)          # the GroEL 14-mer, shipped
    images, truth, _ = particle_set(xyz, z, 4, 20, 64, 3.0, 0.5, numpy.random.default_rng(1))
    labels, history = cluster(fourier_resize(images, (32, 32)), 4, 0, numpy, truth=truth,
                              log=lambda m: None)
    assert history[0]["purity"] >= 0.9 and history[0]["nmi"] > 0.8


def test_cli_on_a_real_stack(tmp_path):
    out = str(tmp_path / "cl")
    stack = shared_data("particles", "cryojax", "trpv1_small_stack.mrcs")
    assert cli.main([stack, "-k", "2", "--rounds", "1", "--steps", "3", "--box", "16",
                     "-d", "-1", "-o", out]) == 0
    with mrcfile.open(os.path.join(out, "class_averages.mrcs")) as m:
        assert m.data.shape == (2, 48, 48)
    lines = open(os.path.join(out, "labels.csv")).read().split()
    assert lines[0] == "image,class,angle_deg,shift_x_px,shift_y_px" and len(lines) == 11
    assert os.path.exists(os.path.join(out, "montage.png"))
    starfile = pytest.importorskip("starfile", reason="STAR files need the starfile package")
    star = starfile.read(os.path.join(out, "particles.star"), always_dict=True)
    table = star["particles"]
    assert len(table) == 10 and set(table["rlnClassNumber"]) <= {1, 2}
    assert table["rlnImageName"][0].startswith("000001@") and table["rlnImageName"][0].endswith(
        "trpv1_small_stack.mrcs")
    assert float(star["optics"]["rlnImagePixelSize"][0]) == pytest.approx(4.88, abs=0.01)
    rows = [line.split(",") for line in lines[1:]]
    psi = numpy.array([float(r[2]) for r in rows])
    assert numpy.allclose((-psi) % 360, table["rlnAnglePsi"], atol=0.01)


def test_particles_star_reads_back_with_relion_signs(tmp_path):
    starfile = pytest.importorskip("starfile", reason="STAR files need the starfile package")
    path = str(tmp_path / "p.star")
    angles, shifts = numpy.array([30.0, 350.0]), numpy.array([[1.0, -2.0], [0.5, 0.0]])
    assert write_particles_star(path, "stack.mrcs", numpy.array([0, 2]), angles, shifts, 2.0, 64) == 2
    table = starfile.read(path, always_dict=True)["particles"]
    assert list(table["rlnImageName"]) == ["000001@stack.mrcs", "000002@stack.mrcs"]
    assert list(table["rlnClassNumber"]) == [1, 3]
    assert numpy.allclose(table["rlnAnglePsi"], [330.0, 10.0])
    assert numpy.allclose(table["rlnOriginXAngst"], [-2.0, -1.0])
    assert numpy.allclose(table["rlnOriginYAngst"], [4.0, 0.0])
    write_particles_star(path, "stack.mrcs", numpy.array([0, 2]), angles, shifts, 0.0, 64)
    star = starfile.read(path, always_dict=True)
    assert numpy.allclose(star["particles"]["rlnOriginX"], [-1.0, -0.5])
    assert "rlnImagePixelSize" not in star["optics"].columns


@pytest.mark.slow
def test_siamese_round_beats_round_0_on_particles_at_any_angle():
    """The small CPU case of benchmarks/cluster_snr.py: 4 orientations x 30 images at random
    in-plane angles, SNR 0.2, the network at 16 px. Round 0 (k-means on principal
    components) is near chance (0.25); one round on augmented views lifts purity by
    0.2 (seeded: 0.308 -> 0.508)."""
    xyz, z = read_atoms(DEFAULT_MODEL)
    st = particle_stack(xyz, z, 4, 30, 64, 4.0, 0.2, numpy.random.default_rng(1))
    _, history = cluster(fourier_resize(st.images, (16, 16)), 4, 1, numpy, steps=60,
                         truth=st.labels, log=lambda m: None)
    assert history[0]["purity"] < 0.35
    assert history[1]["purity"] >= history[0]["purity"] + 0.15


def test_cli_bad_stack(tmp_path, capsys):
    path = str(tmp_path / "one.mrcs")
    with mrcfile.new(path) as m:
        m.set_data(numpy.random.default_rng(0).standard_normal((3, 16, 16)).astype(numpy.float32))
    assert cli.main([path, "-k", "2", "-d", "-1", "-o", str(tmp_path / "o")]) == 2
    assert "too few" in capsys.readouterr().err
