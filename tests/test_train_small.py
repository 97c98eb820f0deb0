"""A small supervised run lowers the validation loss (issue: engine core)."""

import numpy

from cupyden.models import DnCNN
from cupyden.optim import Adam, Parameters
from cupyden.training import evaluate, train_step


def smooth_images(rng, n, size, cutoff=0.05):
    """Smooth random images (white noise low-passed by a Gaussian in Fourier space),
    unit variance: a stand-in for clean micrograph patches. Shape (n, 1, size, size)."""
    f = numpy.fft.rfft2(rng.standard_normal((n, 1, size, size)))
    ky, kx = numpy.fft.fftfreq(size)[:, None], numpy.fft.rfftfreq(size)[None, :]
    x = numpy.fft.irfft2(f * numpy.exp(-(kx ** 2 + ky ** 2) / (2 * cutoff ** 2)), s=(size, size))
    return (x / x.std(axis=(2, 3), keepdims=True)).astype(numpy.float32)


def test_supervised_dncnn_lowers_validation_loss_by_30_percent():
    rng = numpy.random.default_rng(0)
    sigma = 0.5
    model = DnCNN(depth=6, width=16, seed=0).to(numpy, numpy.float32).train()
    params = Parameters(model)
    opt = Adam(params, lr=1e-3)
    val = smooth_images(rng, 8, 64)
    val_noisy = val + sigma * rng.standard_normal(val.shape).astype(numpy.float32)
    before = evaluate(model, "mse", val_noisy, val)
    for _ in range(200):
        clean = smooth_images(rng, 8, 64)
        noisy = clean + sigma * rng.standard_normal(clean.shape).astype(numpy.float32)
        train_step(model, params, opt, "mse", noisy, clean)
    after = evaluate(model, "mse", val_noisy, val)
    assert after < 0.7 * before
    assert after < 0.5 * sigma ** 2        # and it denoises: well below the noise variance
