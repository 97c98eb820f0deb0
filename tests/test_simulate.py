"""The simulator's physics: counts, noise, scattering, CTF zeros, determinism."""

import os

import numpy
import pytest

from cupyden import simulate as sim
from cupyden.backend import to_device, to_host
from cupyden.baselines import gaussian_lowpass

GROEL = sim.DEFAULT_MODEL


def test_wavelength_and_interaction_constant_at_300_kv():
    # Kirkland (2010), Table 2.2 / eq. 5.6: 0.01969 Å and 6.526e-4 rad/(V Å) at 300 kV
    assert sim.electron_wavelength(300) == pytest.approx(0.019687, rel=1e-4)
    assert sim.interaction_constant(300) == pytest.approx(6.526e-4, rel=1e-3)
    assert sim.POTENTIAL_PER_SCATTERING == pytest.approx(47.878, rel=1e-4)


def test_scattering_factor_at_zero_is_the_sum_of_a():
    # f_e(0) of hydrogen is the Bohr radius, 0.529 Å; carbon's is 2.51 Å (Peng 1996)
    assert float(sim.scattering_factor(1, numpy.zeros(1))[0]) == pytest.approx(0.5288, abs=1e-4)
    assert float(sim.scattering_factor(6, numpy.zeros(1))[0]) == pytest.approx(2.5088, abs=1e-4)


def test_projected_potential_of_one_atom_integrates_to_its_scattering_at_zero():
    xyz, z = numpy.zeros((1, 3)), numpy.array([6.0])
    v = sim.projected_potential(xyz, z, numpy.array([[32.3, 30.7]]), numpy.eye(3)[None],
                                (64, 64), 0.5, bfactor=20, ice_potential=0)
    assert v.sum() * 0.5 ** 2 == pytest.approx(47.878 * 2.5088, rel=1e-3)   # V Å^3
    assert numpy.unravel_index(v.argmax(), v.shape) == (32, 31)
    # the displaced water lowers the integral by V_w * 17 Å^3
    w = sim.projected_potential(xyz, z, numpy.array([[32.3, 30.7]]), numpy.eye(3)[None],
                                (64, 64), 0.5, bfactor=20, ice_potential=4.5)
    assert (v - w).sum() * 0.25 == pytest.approx(4.5 * 17.0, rel=1e-6)


@pytest.mark.parametrize("optics", [sim.Optics(), sim.Optics(cs=0.0, amplitude_contrast=0.0),
                                    sim.Optics(defocus=8000, astigmatism=1200,
                                               astigmatism_angle=30)])
def test_ctf_is_zero_where_the_formula_puts_its_zeros(optics):
    for theta in (0.0, 0.7, 2.0):
        k = sim.ctf_zeros(optics, 6, theta)
        c = sim.chi(k, theta, optics)
        a = optics.amplitude_contrast
        value = -(numpy.sqrt(1 - a * a) * numpy.sin(c) + a * numpy.cos(c))
        assert numpy.abs(value).max() < 1e-9
        # and the CTF changes sign across each zero
        lo = sim.chi(k * 0.999, theta, optics)
        hi = sim.chi(k * 1.001, theta, optics)
        f = lambda x: -(numpy.sqrt(1 - a * a) * numpy.sin(x) + a * numpy.cos(x))  # noqa: E731
        assert (f(lo) * f(hi) < 0).all()
    if optics.cs == 0 and optics.amplitude_contrast == 0:   # chi = n pi -> k = sqrt(n / (lambda df))
        lam = sim.electron_wavelength(optics.voltage)
        assert sim.ctf_zeros(optics, 3) == pytest.approx(
            numpy.sqrt(numpy.arange(1, 4) / (lam * optics.defocus)), rel=1e-12)


def test_weak_object_image_transfers_through_the_ctf(xp):
    """For a weak potential, FFT(I - 1) = 2 CTF FFT(phase): the simulated image's zeros are
    the CTF's."""
    rng = numpy.random.default_rng(0)
    optics = sim.Optics(defocus=12000, astigmatism=2000, astigmatism_angle=20)
    potential = rng.standard_normal((95, 127)) * 1e-3   # V Å; odd sizes: no Nyquist row
    image = sim.image_intensity(to_device(potential, xp), 1.2, optics, 0.0)
    measured = numpy.fft.fft2(to_host(image) - 1)
    phase = numpy.fft.fft2(potential * sim.interaction_constant(optics.voltage))
    expected = 2 * sim.ctf((95, 127), 1.2, optics) * phase
    assert abs(measured - expected).max() < 1e-5 * abs(expected).max()


def test_mean_counts_are_dose_times_pixel_area_and_variance_equals_mean():
    xyz, z = sim.read_atoms(GROEL)
    frames, p, dose = 8, 1.3, 30.0
    r = sim.simulate_micrograph(xyz, z, (128, 160), p, particles=0, ice_thickness=0,
                                dose=dose, frames=frames, seed=3)
    expected = dose / frames * p * p                          # 6.3375 per frame and pixel
    counts = r.movie.astype(numpy.float64)
    n = counts.size
    assert abs(counts.mean() - expected) < 4 * numpy.sqrt(expected / n)
    assert counts.var() == pytest.approx(expected, rel=0.03)
    assert r.movie.dtype == numpy.int16 and r.movie.shape == (frames, 128, 160)


def test_counts_scatter_around_the_clean_image_with_poisson_variance():
    xyz, z = sim.read_atoms(GROEL)
    r = sim.simulate_micrograph(xyz, z, (256, 256), 2.0, particles=3, dose=20, frames=10,
                                seed=1)
    assert r.params["particles"] == 3
    total = r.movie.sum(axis=0, dtype=numpy.float64)
    resid = total - r.clean
    assert abs(resid.mean()) < 4 * numpy.sqrt(r.clean.mean() / resid.size)
    assert (resid ** 2).mean() / r.clean.mean() == pytest.approx(1.0, rel=0.03)
    # ice attenuation: mean intensity exp(-300 / 3500) within the particles' contrast
    assert r.clean.mean() / (20 * 4.0) == pytest.approx(numpy.exp(-300 / 3500), rel=0.02)


def test_same_seed_same_movie_and_particles_do_not_overlap():
    xyz, z = sim.read_atoms(GROEL)
    kw = dict(particles=6, dose=5, frames=2, drift=1.5)
    a = sim.simulate_micrograph(xyz, z, (300, 300), 3.0, seed=7, **kw)
    b = sim.simulate_micrograph(xyz, z, (300, 300), 3.0, seed=7, **kw)
    c = sim.simulate_micrograph(xyz, z, (300, 300), 3.0, seed=8, **kw)
    assert numpy.array_equal(a.movie, b.movie) and a.particles == b.particles
    assert not numpy.array_equal(a.movie, c.movie)
    centres = numpy.array([[t["row"], t["column"]] for t in a.particles])
    d = numpy.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    assert d[numpy.triu_indices(len(centres), 1)].min() >= 2 * a.params["particle_radius_A"] / 3.0
    assert a.shifts[0].tolist() == [0.0, 0.0] and abs(a.shifts[1]).max() > 0


# --------------------------------------------------------------------------------------
# Tilt series and tomograms
# --------------------------------------------------------------------------------------

def _point_projections(point, angles, shape):
    """Tilt images (T, H, W) of a unit point at voxel (k, i, j) of a (D, H, W) volume:
    a delta at row i, column u = (j - W/2) cos + (k - D/2) sin + W/2, split linearly."""
    D, H, W = shape
    k, i, j = point
    images = numpy.zeros((len(angles), H, W))
    for t, a in enumerate(numpy.deg2rad(angles)):
        u = (j - W / 2) * numpy.cos(a) + (k - D / 2) * numpy.sin(a) + W / 2
        u0 = int(numpy.floor(u))
        images[t, i, u0] += 1 - (u - u0)
        images[t, i, u0 + 1] += u - u0
    return images


def _wedge_power(volume_xz):
    """Mean power of the 2-D or 3-D DFT of a volume (..., D, [H,] W) inside the missing
    wedge (within 20 degrees of the kz axis) over its mean outside it (over 40 degrees
    from the kz axis), frequencies between 0.1 and 0.45 cycles/voxel."""
    f = numpy.fft.fftn(volume_xz)
    kz = numpy.fft.fftfreq(volume_xz.shape[0]).reshape((-1,) + (1,) * (volume_xz.ndim - 1))
    kx = numpy.fft.fftfreq(volume_xz.shape[-1])
    angle = numpy.degrees(numpy.arctan2(abs(kx), abs(kz)))      # from the kz axis
    radius = numpy.sqrt(kz ** 2 + kx ** 2)
    band = (radius > 0.1) & (radius < 0.45)
    power = abs(f) ** 2
    inside = numpy.broadcast_to(band & (angle < 20), power.shape)
    outside = numpy.broadcast_to(band & (angle > 40), power.shape)
    return power[inside].mean() / power[outside].mean()


def test_dose_symmetric_order_and_exposure_filter():
    angles = sim.tilt_angles(-9, 9, 3)
    assert angles.tolist() == [-9, -6, -3, 0, 3, 6, 9]
    order = sim.dose_symmetric_order(angles)
    assert angles[order].tolist() == [0, 3, -3, -6, 6, 9, -9]        # Hagen et al. 2017
    assert len(sim.tilt_angles()) == 41
    # Grant & Grigorieff 2015: after the critical exposure the amplitude is exp(-1/2)
    a, b, c = sim.CRITICAL_EXPOSURE_300KV
    critical = a * 0.1 ** b + c                                       # 14.1 e/Å^2 at 10 Å
    q = sim.exposure_filter((10, 10), 1.0, critical)
    assert q[0, 1] == pytest.approx(numpy.exp(-0.5), rel=1e-12)     # k = 0.1 / Å
    assert q[0, 0] == 1.0 and q[0, 5] < q[0, 1]


def test_zero_and_ninety_degree_projections_are_the_potential_summed_along_the_beam():
    xyz, z = sim.read_atoms(GROEL)
    shape, p = (48, 48, 48), 6.0
    # two copies (radius 15.8 voxels) well inside the box: no atom leaves the grid
    centres = numpy.array([[22.0, 24.0, 25.0], [25.5, 23.0, 22.3]])
    rot = sim.random_rotations(2, numpy.random.default_rng(4))
    volume = sim.coulomb_potential(xyz, z, centres, rot, shape, p, 60.0)          # V
    zero = sim.tilted_projection(xyz, z, centres, rot, 0.0, shape, p, 60.0)        # V Å
    assert abs(zero - volume.sum(axis=0) * p).max() < 1e-9 * abs(zero).max()
    # at +90 degrees x' = z: column u of the image is the volume's slice k = u (D = W)
    ninety = sim.tilted_projection(xyz, z, centres, rot, 90.0, shape, p, 60.0)
    assert abs(ninety - volume.sum(axis=2).T * p).max() < 1e-9 * abs(ninety).max()


def test_back_project_matches_its_loop_reference(xp):
    rng = numpy.random.default_rng(0)
    images = rng.standard_normal((2, 3, 4, 7))
    angles, weights = [-40.0, 5.0, 70.0], [0.3, 1.0, 2.0]
    fast = sim.back_project(to_device(images, xp), angles, 5, weights)
    assert fast.shape == (2, 5, 4, 7)
    ref = sim.back_project_loop(images, angles, 5, weights)
    assert abs(to_host(fast) - ref).max() < 1e-12


def test_weighted_back_projection_of_a_point_is_a_peak_elongated_along_z_with_a_missing_wedge():
    shape, point = (48, 3, 64), (27, 1, 36)
    angles = sim.tilt_angles()                                        # -60..60, step 3
    volume = sim.weighted_back_projection(_point_projections(point, angles, shape), angles,
                                          shape[0])
    assert numpy.unravel_index(volume.argmax(), volume.shape) == point
    assert not volume[:, [0, 2]].any()                                # other rows untouched
    assert _wedge_power(volume[:, 1]) < 0.02
    # the same point over +-87 degrees: no wedge
    full_range = sim.tilt_angles(-87, 87, 3)
    no_wedge = sim.weighted_back_projection(_point_projections(point, full_range, shape),
                                            full_range, shape[0])
    assert _wedge_power(no_wedge[:, 1]) > 0.3
    # widths of the peak (low-passed: one voxel is too sharp to see it) along z and x:
    # the wedge elongates it along z (by ~1.5 for +-60 degrees, Radermacher 1988)
    def spread(xz):
        g = numpy.maximum(gaussian_lowpass(xz, 1.5), 0)[21:34, 30:43]      # 13 x 13 voxels
        dz, dx = numpy.mgrid[-6:7, -6:7]
        return (g * dz * dz).sum() / (g * dx * dx).sum()
    assert spread(volume[:, 1]) > 1.6
    assert spread(no_wedge[:, 1]) < 1.25


def test_blank_tilt_series_counts_are_dose_times_pixel_area():
    xyz, z = sim.read_atoms(GROEL)
    angles, dose, p, frames = [-60.0, 0.0, 30.0], 30.0, 2.0, 4
    r = sim.simulate_tilt_series(xyz, z, (24, 40, 48), p, angles=angles, particles=0,
                                 dose=dose, frames=frames, inelastic_mfp=0, seed=2)
    assert r.params["particles"] == 0
    total = r.tilts_even.astype(numpy.float64) + r.tilts_odd
    expected = dose / 3 * p * p                                       # 40 counts per tilt
    n = total[0].size
    for t in range(3):
        assert abs(total[t].mean() - expected) < 4 * numpy.sqrt(expected / n)
        assert total[t].var() == pytest.approx(expected, rel=0.15)   # Poisson
        assert r.tilts_even[t].mean() == pytest.approx(expected / 2, rel=0.05)
    # with the ice: zero-loss attenuation exp(-t / (cos(theta) lambda_in))
    a = sim.simulate_tilt_series(xyz, z, (24, 40, 48), p, angles=angles, particles=0,
                                 dose=dose, frames=frames, seed=2)
    ice = a.params["ice_thickness_A"]
    for t, theta in enumerate(numpy.deg2rad(angles)):
        mean = (a.tilts_even[t].astype(numpy.float64) + a.tilts_odd[t]).mean()
        assert mean == pytest.approx(expected * numpy.exp(-ice / numpy.cos(theta) / 3500),
                                     rel=0.03)


def test_halves_have_independent_noise_with_a_missing_wedge_and_average_to_the_full():
    xyz, z = sim.read_atoms(GROEL)
    r = sim.simulate_tilt_series(xyz, z, (32, 24, 48), 4.0, angles=sim.tilt_angles(-60, 60, 6),
                                 particles=0, dose=60, frames=4, seed=5)
    assert abs(r.full - (r.even + r.odd) / 2).max() < 1e-6 * abs(r.full).max()
    assert abs(numpy.corrcoef(r.even.ravel(), r.odd.ravel())[0, 1]) < 0.03
    assert _wedge_power(r.even) < 0.05
    # and the noise is correlated between voxels (the ramp makes x neighbours
    # anticorrelated), unlike Poisson noise per voxel
    x = r.even - r.even.mean()
    assert (x[:, :, 1:] * x[:, :, :-1]).mean() / (x * x).mean() < -0.1


def test_tilt_series_of_particles_recovers_the_potential(xp):
    """Same seed, same series; the reconstruction of a few copies correlates with the
    truth after a low-pass (protein dark: a negative correlation), the halves agree."""
    xyz, z = sim.read_atoms(GROEL)
    kw = dict(angles=sim.tilt_angles(-60, 60, 5), particles=3, dose=120, frames=2,
              defocus_gradient=True, seed=11, xp=xp)
    r = sim.simulate_tilt_series(xyz, z, (40, 64, 64), 8.0, **kw)
    assert r.params["particles"] == 3 and r.clean.shape == r.full.shape == (40, 64, 64)
    assert r.clean.dtype == r.full.dtype == numpy.float32
    assert r.params["dose_before_tilt_e_per_A2"][r.order[0]] == 0
    low = gaussian_lowpass(r.full, 2.0, 3)
    assert numpy.corrcoef(low.ravel(), r.clean.ravel())[0, 1] < -0.3
    le, lo = gaussian_lowpass(r.even, 2.0, 3), gaussian_lowpass(r.odd, 2.0, 3)
    assert numpy.corrcoef(le.ravel(), lo.ravel())[0, 1] > 0.3
    again = sim.simulate_tilt_series(xyz, z, (40, 64, 64), 8.0, **kw)
    assert numpy.array_equal(r.even, again.even) and r.particles == again.particles


def test_cli_tilt_series_writes_tomograms_with_the_voxel_size_and_a_relion5_star(tmp_path, capsys):
    import mrcfile
    starfile = pytest.importorskip("starfile", reason="the star extra (starfile) is not installed")

    from cupyden.cli import simulate as cli
    out = str(tmp_path / "ts")
    assert cli.main(["tilt-series", out, "--volume", "32x48x40", "--voxel-size", "10",
                     "--tilts", "-45:45:15", "--particles", "1", "--frames", "2", "--star",
                     "--no-progress", "-d", "-1"]) == 0
    for suffix in ("half1", "half2", "full", "clean"):
        with mrcfile.open(str(tmp_path / "ts" / ("sim_00000_%s.mrc" % suffix))) as m:
            assert m.data.shape == (32, 48, 40) and m.data.dtype == numpy.float32
            assert float(m.voxel_size.x) == pytest.approx(10.0)
    with mrcfile.open(str(tmp_path / "ts" / "sim_00000_even.mrcs")) as m:
        assert m.data.shape == (7, 48, 40)
    assert open(str(tmp_path / "ts" / "sim_00000.tlt")).read().split() == [
        "-45.00", "-30.00", "-15.00", "0.00", "15.00", "30.00", "45.00"]
    star = starfile.read(str(tmp_path / "ts" / "tomograms.star"), always_dict=True)["global"]
    row = star.iloc[0]
    assert row["rlnTomoName"] == "sim_00000"
    assert row["rlnTomoTiltSeriesPixelSize"] == pytest.approx(10.0)
    assert os.path.samefile(row["rlnTomoReconstructedTomogramHalf1"],
                            str(tmp_path / "ts" / "sim_00000_half1.mrc"))
    assert row["rlnTomoReconstructedTomogramHalf2"].endswith("sim_00000_half2.mrc")
    assert (row["rlnTomoSizeX"], row["rlnTomoSizeY"], row["rlnTomoSizeZ"]) == (40, 48, 32)
    # a bad tilt list is one line and exit status 2
    assert cli.main(["tilt-series", out, "--tilts", "-95:95:5"]) == 2
    assert "--tilts" in capsys.readouterr().err


def test_expected_tomogram_is_the_noise_free_limit_of_the_halves():
    """``expected`` (the reconstruction of the expected contrast) is the mean of the
    tomograms over the Poisson noise: the halves scatter about it with independent,
    zero-mean noise, and at a 100x higher dose the full tomogram converges to it."""
    xyz, z = sim.read_atoms(GROEL)
    kw = dict(angles=sim.tilt_angles(-60, 60, 10), particles=2, damage=False, seed=3)
    r = sim.simulate_tilt_series(xyz, z, (24, 48, 48), 8.0, dose=120, frames=2, **kw)
    assert r.expected.shape == r.full.shape and r.expected.dtype == numpy.float32
    ne, no = r.even - r.expected, r.odd - r.expected
    assert abs(numpy.corrcoef(ne.ravel(), no.ravel())[0, 1]) < 0.03
    assert abs(ne.mean()) < 0.05 * ne.std()
    # the signal is weak against the noise at 120 e/Å^2 (8 Å voxels)...
    assert r.expected.std() < 0.3 * ne.std()
    # ...and the noise falls as 1 / sqrt(dose); without radiation damage (which grows with
    # the dose) the specimen and the expectation do not change
    hi = sim.simulate_tilt_series(xyz, z, (24, 48, 48), 8.0, dose=12000, frames=64, **kw)
    assert numpy.allclose(hi.expected, r.expected, atol=1e-6 * abs(r.expected).max())
    assert (hi.full - hi.expected).std() == pytest.approx((r.full - r.expected).std() / 10,
                                                         rel=0.1)
    assert numpy.corrcoef(hi.full.ravel(), hi.expected.ravel())[0, 1] > 0.5
