"""The simulator's physics: counts, noise, scattering, CTF zeros, determinism."""

import numpy
import pytest

from cupyden import simulate as sim
from cupyden.backend import to_device, to_host

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
