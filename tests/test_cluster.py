"""Siamese clustering and class averages (issue: clustering)."""

import os

import mrcfile
import numpy
import pytest

from cupyden.cli import cluster as cli
from cupyden.cluster import cluster, kmeans, nmi, purity, sample_pairs
from cupyden.io.patches import fourier_resize
from cupyden.simulate import DEFAULT_MODEL, particle_set, read_atoms

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
    """End to end at an easy SNR (0.5 per pixel); harder SNRs are measured, not tested."""
    xyz, z = read_atoms(DEFAULT_MODEL)          # the GroEL 14-mer, shipped
    images, truth, _ = particle_set(xyz, z, 4, 20, 64, 3.0, 0.5, numpy.random.default_rng(1))
    labels, history = cluster(fourier_resize(images, (32, 32)), 4, 1, numpy, steps=30,
                              batch_size=16, truth=truth, log=lambda m: None)
    assert history[-1]["purity"] >= 0.9 and history[-1]["nmi"] > 0.8


def test_cli_on_a_real_stack(tmp_path):
    out = str(tmp_path / "cl")
    stack = shared_data("particles", "cryojax", "trpv1_small_stack.mrcs")
    assert cli.main([stack, "-k", "2", "--rounds", "1", "--steps", "3", "--box", "16",
                     "-d", "-1", "-o", out]) == 0
    with mrcfile.open(os.path.join(out, "class_averages.mrcs")) as m:
        assert m.data.shape == (2, 48, 48)
    lines = open(os.path.join(out, "labels.csv")).read().split()
    assert lines[0] == "image,class" and len(lines) == 11
    assert os.path.exists(os.path.join(out, "montage.png"))


def test_cli_bad_stack(tmp_path, capsys):
    path = str(tmp_path / "one.mrcs")
    with mrcfile.new(path) as m:
        m.set_data(numpy.random.default_rng(0).standard_normal((3, 16, 16)).astype(numpy.float32))
    assert cli.main([path, "-k", "2", "-d", "-1", "-o", str(tmp_path / "o")]) == 2
    assert "too few" in capsys.readouterr().err
