"""Baselines a denoiser must beat: no denoising, and the best Gaussian low-pass.

The Gaussian filter is applied in Fourier space, H(k) = exp(-2 pi^2 sigma^2 |k|^2) with k
in cycles per pixel (the transform of a unit-sum Gaussian of standard deviation sigma px;
periodic edges). Its sigma is chosen on a validation region by the least squared error
against a target. The target may be the clean image (simulations) or an independent
noisy view of the same signal (the other half of a count split, the odd frames): for
noise independent of the input, E|G(A) - B|^2 = E|G(A) - s|^2 + var(noise of B), so
both targets choose the same sigma (the Noise2Noise argument, Lehtinen et al. 2018).
"""

import numpy

from .backend import get_array_module
from .fourier import rfft_k2

#: Candidate sigmas in pixels, log-spaced from 0.25 to 32.
SIGMAS = tuple(float(s) for s in numpy.round(numpy.geomspace(0.25, 32, 29), 3))


def gaussian_lowpass(image, sigma, ndim=2):
    """Gaussian low-pass of standard deviation ``sigma`` px (0 returns a copy).

    Parameters
    ----------
    image : float array (..., H, W), or (..., D, H, W) with ndim=3; NumPy or CuPy
    sigma : float
        Pixels (voxels).
    ndim : int
        Trailing axes filtered: 2 for images, 3 for volumes.

    Returns
    -------
    float64 array like ``image``
    """
    xp = get_array_module(image)
    x = image.astype(numpy.float64)
    if sigma <= 0:
        return x.copy()
    shape = x.shape[-ndim:]
    k2 = rfft_k2(shape, 1.0, xp)
    ax = tuple(range(-ndim, 0))
    return xp.fft.irfftn(xp.fft.rfftn(x, axes=ax) * xp.exp(-2 * numpy.pi ** 2 * sigma ** 2 * k2),
                         s=shape, axes=ax)


def best_gaussian(noisy, target, sigmas=SIGMAS, ndim=2):
    """The sigma whose low-pass of ``noisy`` is closest to ``target`` (least mean square).

    Parameters
    ----------
    noisy : array (H, W), or (D, H, W) with ndim=3
        The validation region of the input.
    target : array, the shape of ``noisy``
        The same region of the clean image, or of an independent noisy view.
    sigmas : sequence of float
        Candidates in pixels.
    ndim : int
        2 for images, 3 for volumes.

    Returns
    -------
    sigma : float
    errors : list of (sigma, mean squared error)
    """
    t = target.astype(numpy.float64)
    errors = [(s, float(((gaussian_lowpass(noisy, s, ndim) - t) ** 2).mean())) for s in sigmas]
    return min(errors, key=lambda e: e[1])[0], errors
