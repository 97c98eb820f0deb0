"""Metrics and baselines against hand-computed values."""

import numpy
import pytest

from cupyden import metrics
from cupyden.baselines import best_gaussian, gaussian_lowpass
from cupyden.backend import to_device, to_host


def test_psnr_by_hand():
    ref = numpy.array([[0.0, 1.0], [2.0, 3.0]])
    est = ref + numpy.array([[0.3, 0, 0, 0]]).reshape(2, 2)
    # range 3, MSE 0.09 / 4 = 0.0225: 10 log10(9 / 0.0225) = 10 log10(400)
    assert metrics.psnr(est, ref) == pytest.approx(26.020599913, abs=1e-8)
    assert metrics.psnr(est, ref, data_range=1.0) == pytest.approx(10 * numpy.log10(1 / 0.0225))
    assert metrics.psnr(ref, ref) == float("inf")


def test_ssim_by_hand_on_one_window():
    """11 x 11 images: one window position. y = x + c changes only the luminance term:
    SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1) with means under the Gaussian window."""
    rng = numpy.random.default_rng(0)
    x = rng.random((11, 11))
    y = x + 0.25
    g = numpy.exp(-(numpy.arange(11) - 5) ** 2 / (2 * 1.5 ** 2))
    w = numpy.outer(g, g) / numpy.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    R = y.max() - y.min()
    C1 = (0.01 * R) ** 2
    assert metrics.ssim(x, y) == pytest.approx((2 * mx * my + C1) / (mx ** 2 + my ** 2 + C1),
                                               abs=1e-12)
    assert metrics.ssim(y, y) == pytest.approx(1.0, abs=1e-12)
    # sign flip of the structure: covariance term -> (C2 - 2 s^2) / (2 s^2 + C2) < 0
    assert metrics.ssim(2 * x.mean() - x, x, data_range=1.0) < 0


def test_frc_resolution_interpolates_the_crossing():
    freq = numpy.array([0.05, 0.15, 0.25, 0.35, 0.45])
    curve = numpy.array([0.2, 0.9, 0.6, 0.4, 0.1])
    # 0.5 between 0.25 (0.6) and 0.35 (0.4): halfway, f = 0.30 cycles/px -> 2 Å / 0.30
    assert metrics.frc_resolution(freq, curve, 2.0, 0.5) == pytest.approx(2.0 / 0.30)
    # 0.143: between 0.35 (0.4) and 0.45 (0.1): t = 0.257/0.3
    f = 0.35 + 0.1 * (0.4 - 0.143) / 0.3
    assert metrics.frc_resolution(freq, curve, 2.0, 0.143) == pytest.approx(2.0 / f)
    assert metrics.frc_resolution(freq, numpy.ones(5), 2.0, 0.143) == 4.0      # Nyquist
    assert metrics.frc_resolution(freq, numpy.zeros(5), 2.0, 0.143) == float("inf")


def test_power_spectrum_of_white_noise_and_of_a_cosine():
    rng = numpy.random.default_rng(1)
    noise = rng.standard_normal((256, 256)) * 3
    f, p = metrics.power_spectrum(noise, 2.0)
    assert f[-1] == pytest.approx((127.5 / 128) * 0.25)          # 1/Å, Nyquist 1/(2*2 Å)
    assert p[10:].mean() == pytest.approx(9.0, rel=0.02)           # variance in every ring
    # a cosine of 16 cycles over 128 px: all power in ring 16 (0.125 cycles/px)
    x = numpy.cos(2 * numpy.pi * 16 * numpy.arange(128) / 128)[None, :] * numpy.ones((128, 1))
    f, p = metrics.power_spectrum(x, 1.0)
    assert int(numpy.argmax(p)) == 16 and p.sum() == pytest.approx(p[16])


def test_removed_correlation_is_zero_for_pure_noise_removal():
    rng = numpy.random.default_rng(2)
    signal = gaussian_lowpass(rng.standard_normal((128, 128)), 4) * 10
    noise = rng.standard_normal((128, 128)) * 0.1
    assert abs(metrics.removed_correlation(signal + noise, signal)) < 0.05
    # removing half the signal as well correlates with what is kept
    assert metrics.removed_correlation(signal + noise, 0.5 * signal) > 0.5


def test_gaussian_lowpass_sums_to_one_with_variance_sigma_squared(xp):
    delta = numpy.zeros((64, 64))
    delta[0, 0] = 1
    k = to_host(gaussian_lowpass(to_device(delta, xp), 2.5))
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    r = numpy.minimum(numpy.arange(64), 64 - numpy.arange(64))
    assert (k.sum(axis=0) * r ** 2).sum() == pytest.approx(2.5 ** 2, rel=1e-6)


def test_best_gaussian_is_the_same_against_clean_or_an_independent_view():
    rng = numpy.random.default_rng(3)
    clean = gaussian_lowpass(rng.standard_normal((256, 256)), 3) * 10
    a = clean + rng.standard_normal(clean.shape)
    b = clean + rng.standard_normal(clean.shape)
    s_clean, errs = best_gaussian(a, clean)
    s_half, _ = best_gaussian(a, b)
    assert 1 < s_clean < 4
    assert abs(numpy.log(s_half / s_clean)) < 1.01 * numpy.log(32 / 0.25) / 28   # one step
    assert min(e for _, e in errs) < ((a - clean) ** 2).mean()
