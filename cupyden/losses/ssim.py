"""SSIM loss (Wang, Bovik, Sheikh & Simoncelli 2004, IEEE TIP 13:600, eqs. 13-14):
L = 1 - mean SSIM, with an 11-tap Gaussian window of sigma 1.5 px, K1 = 0.01, K2 = 0.03,
applied in 'valid' mode (the map covers (H - 10) x (W - 10) pixels, as in the paper).

With x the prediction, y the target and G the (separable) Gaussian filter:

    mx = G x,  my = G y,  exx = G x^2,  eyy = G y^2,  exy = G xy
    sxx = exx - mx^2,  syy = eyy - my^2,  sxy = exy - mx my
    A1 = 2 mx my + C1,  A2 = 2 sxy + C2,  B1 = mx^2 + my^2 + C1,  B2 = sxx + syy + C2
    S = A1 A2 / (B1 B2),   C1 = (K1 R)^2,  C2 = (K2 R)^2,  R the data range

Backward, with S a function of (mx, exx, exy) for fixed y:

    dS/dexx = -S / B2
    dS/dexy = 2 A1 / (B1 B2)
    dS/dmx  = 2 my (A2 - A1) / (B1 B2) - 2 mx S / B1 + 2 mx S / B2
    dL/dx   = -(1/M) [ G^T(dS/dmx) + 2 x G^T(dS/dexx) + y G^T(dS/dexy) ]

G^T, the adjoint of 'valid' filtering, is a 'full' correlation: zero-pad by 5 px on every
side and filter with the same (symmetric) taps.
"""

from typing import NamedTuple

import numpy

from ..backend import get_array_module

WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


def gaussian_taps(size=WINDOW, sigma=SIGMA):
    """Normalised 1-D Gaussian taps (float64 numpy array of ``size``)."""
    t = numpy.arange(size) - (size - 1) / 2
    g = numpy.exp(-t ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def filter_valid(x, taps):
    """Separable 'valid' filtering of the last two axes: (..., H, W) -> (..., H-10, W-10)."""
    n = len(taps)
    H, W = x.shape[-2:]
    rows = sum(float(taps[t]) * x[..., t:H - n + 1 + t, :] for t in range(n))
    return sum(float(taps[t]) * rows[..., :, t:W - n + 1 + t] for t in range(n))


def filter_valid_adjoint(u, taps):
    """Adjoint of :func:`filter_valid`: (..., h, w) -> (..., h + 10, w + 10)."""
    xp = get_array_module(u)
    n = len(taps)
    pad = [(0, 0)] * (u.ndim - 2) + [(n - 1, n - 1), (n - 1, n - 1)]
    return filter_valid(xp.pad(u, pad), taps[::-1])


class SSIMCache(NamedTuple):
    """Per-pixel derivatives of S (maps of (N, C, H-10, W-10)) and what backward needs."""
    dmx: object
    dexx: object
    dexy: object
    x: object
    y: object
    count: int


def ssim_map(x, y, data_range=None):
    """The SSIM map and the intermediate terms.

    Parameters
    ----------
    x, y : arrays (N, C, H, W), H, W >= 11
    data_range : float or None
        R in C1 = (K1 R)^2, C2 = (K2 R)^2; None takes max(y) - min(y).

    Returns
    -------
    S : array (N, C, H - 10, W - 10)
    terms : tuple (mx, my, A1, A2, B1, B2)
    """
    taps = gaussian_taps()
    R = float(y.max() - y.min()) if data_range is None else data_range
    C1, C2 = (K1 * R) ** 2, (K2 * R) ** 2
    mx, my = filter_valid(x, taps), filter_valid(y, taps)
    sxx = filter_valid(x * x, taps) - mx * mx
    syy = filter_valid(y * y, taps) - my * my
    sxy = filter_valid(x * y, taps) - mx * my
    A1, A2 = 2 * mx * my + C1, 2 * sxy + C2
    B1, B2 = mx * mx + my * my + C1, sxx + syy + C2
    return A1 * A2 / (B1 * B2), (mx, my, A1, A2, B1, B2)


def ssim_forward(pred, target, data_range=None):
    """SSIM loss 1 - mean(SSIM map).

    Parameters
    ----------
    pred, target : arrays (N, C, H, W), H, W >= 11
    data_range : float or None

    Returns
    -------
    loss : 0-d array
    cache : SSIMCache
    """
    S, (mx, my, A1, A2, B1, B2) = ssim_map(pred, target, data_range)
    B = B1 * B2
    dexx = -S / B2
    dexy = 2 * A1 / B
    dmx = 2 * my * (A2 - A1) / B - 2 * mx * S / B1 + 2 * mx * S / B2
    return 1 - S.mean(), SSIMCache(dmx, dexx, dexy, pred, target, S.size)


def ssim_backward(cache):
    """Gradient of 1 - mean SSIM with respect to the prediction, shape (N, C, H, W)."""
    taps = gaussian_taps()
    gm = filter_valid_adjoint(cache.dmx, taps)
    gxx = filter_valid_adjoint(cache.dexx, taps)
    gxy = filter_valid_adjoint(cache.dexy, taps)
    return -(gm + 2 * cache.x * gxx + cache.y * gxy) / cache.count


def ssim_naive(x, y, data_range):
    """Loop reference: mean SSIM of two (H, W) numpy images from explicit 11x11 windows."""
    g = gaussian_taps()
    w = numpy.outer(g, g)
    C1, C2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    H, W = x.shape
    vals = []
    for i in range(H - WINDOW + 1):
        for j in range(W - WINDOW + 1):
            a, b = x[i:i + WINDOW, j:j + WINDOW], y[i:i + WINDOW, j:j + WINDOW]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + C1) * (2 * cov + C2) / ((ma ** 2 + mb ** 2 + C1) * (va + vb + C2)))
    return float(numpy.mean(vals))

