"""Losses against direct references (issue: losses and training options)."""

import numpy
import pytest

from cupyden.backend import to_host
from cupyden.losses import Objective, mse_forward
from cupyden.losses.fourier import (fourier_forward, fourier_loss_direct, frc_ring_weights,
                                    twin_counts)
from cupyden.losses.gradient import gradient_forward
from cupyden.losses.ssim import ssim_forward, ssim_naive


@pytest.mark.parametrize("shape", [(4, 4), (5, 6), (5, 5)])
def test_fourier_loss_equals_direct_dft(xp, shape):
    rng = numpy.random.default_rng(0)
    p, t = rng.standard_normal(shape), rng.standard_normal(shape)
    loss, _ = fourier_forward(xp.asarray(p)[None, None], xp.asarray(t)[None, None])
    assert abs(float(loss) - fourier_loss_direct(p, t)) < 1e-12


def test_twin_counts():
    assert twin_counts(4, 6).tolist() == [[1, 2, 2, 1]]     # columns 0 and 3 self-conjugate
    assert twin_counts(4, 5).tolist() == [[1, 2, 2]]


def test_ssim_equals_loop_reference(xp):
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((16, 15))
    y = x + 0.5 * rng.standard_normal((16, 15))
    loss, _ = ssim_forward(xp.asarray(x)[None, None], xp.asarray(y)[None, None], data_range=4.0)
    assert abs((1 - float(loss)) - ssim_naive(x, y, 4.0)) < 1e-12
    same, _ = ssim_forward(xp.asarray(y)[None, None], xp.asarray(y)[None, None])
    assert abs(float(same)) < 1e-12                           # SSIM(y, y) = 1


def test_gradient_loss_by_hand():
    p = numpy.array([[[[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]]]])
    t = numpy.zeros((1, 1, 2, 3))
    loss, _ = gradient_forward(p, t)
    # x differences 1, 2, 0, 0 (mean 0.75); y differences 0, -1, -3 (mean |.| 4/3)
    assert float(loss) == pytest.approx(0.75 + 4 / 3, abs=1e-15)


def test_frc_weights_follow_signal(xp):
    """Two views with signal only at low frequencies: weights ~1 there, ~0 at high ones."""
    rng = numpy.random.default_rng(2)
    f = numpy.fft.rfft2(rng.standard_normal((64, 1, 32, 32)))
    k = numpy.hypot(numpy.fft.fftfreq(32)[:, None], numpy.fft.rfftfreq(32)[None, :])
    signal = numpy.fft.irfft2(f * (k < 0.1), s=(32, 32)) * 10
    a = signal + rng.standard_normal(signal.shape)
    b = signal + rng.standard_normal(signal.shape)
    w = to_host(frc_ring_weights(xp.asarray(a), xp.asarray(b)))
    assert w[1, 1] > 0.95 and w[16, 16] < 0.3


def test_objective_sums_weighted_terms():
    rng = numpy.random.default_rng(3)
    p, t = rng.standard_normal((2, 1, 12, 12)), rng.standard_normal((2, 1, 12, 12))
    total, _ = Objective([("mse", 1.0), ("fourier", 0.1), ("ssim", 0.0)]).forward(p, t)
    assert float(total) == pytest.approx(float(mse_forward(p, t)[0]) + 0.1 * float(fourier_forward(p, t)[0]))


def test_msssim_equals_explicit_scales(xp):
    """MS-SSIM from explicit windows at each 2x2-pooled scale (Wang et al. 2003)."""
    from cupyden.losses.ssim import K1, K2, MS_WEIGHTS, WINDOW, gaussian_taps, msssim_forward
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((24, 26))
    y = x + 0.7 * rng.standard_normal((24, 26))
    R = 5.0
    g = gaussian_taps()
    win = numpy.outer(g, g)
    C1, C2 = (K1 * R) ** 2, (K2 * R) ** 2

    def terms(a, b):
        cs, ss = [], []
        for i in range(a.shape[0] - WINDOW + 1):
            for j in range(a.shape[1] - WINDOW + 1):
                u, v = a[i:i + WINDOW, j:j + WINDOW], b[i:i + WINDOW, j:j + WINDOW]
                mu, mv = (win * u).sum(), (win * v).sum()
                vu, vv = (win * (u - mu) ** 2).sum(), (win * (v - mv) ** 2).sum()
                c = (2 * (win * (u - mu) * (v - mv)).sum() + C2) / (vu + vv + C2)
                cs.append(c)
                ss.append(c * (2 * mu * mv + C1) / (mu ** 2 + mv ** 2 + C1))
        return numpy.mean(cs), numpy.mean(ss)

    def pool(a):
        a = a[:a.shape[0] // 2 * 2, :a.shape[1] // 2 * 2]
        return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4

    w = numpy.array(MS_WEIGHTS[:2]) / sum(MS_WEIGHTS[:2])      # 24 px: scales 24 and 12
    cs0, _ = terms(x, y)
    _, s1 = terms(pool(x), pool(y))
    expect = cs0 ** w[0] * s1 ** w[1]
    loss, _ = msssim_forward(xp.asarray(x)[None, None], xp.asarray(y)[None, None], R)
    assert abs((1 - float(loss)) - expect) < 1e-12
