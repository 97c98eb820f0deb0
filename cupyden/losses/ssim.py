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



#: Scale weights of MS-SSIM (Wang, Simoncelli & Bovik 2003, "Multi-scale structural
#: similarity for image quality assessment", Asilomar; beta_j = gamma_j, alpha_M = beta_M).
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _pool2(x):
    """2x2 average pooling of the last two axes (odd trailing rows/columns dropped)."""
    H, W = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    x = x[..., :H, :W]
    return (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) / 4


def _pool2_backward(d, shape):
    """Adjoint of :func:`_pool2`: each input pixel gets a quarter of its window's gradient."""
    xp = get_array_module(d)
    out = xp.zeros(shape, d.dtype)
    for a in (0, 1):
        for b in (0, 1):
            out[..., a:2 * d.shape[-2]:2, b:2 * d.shape[-1]:2] = d / 4
    return out


def msssim_scales(H, W):
    """Number of scales whose image is still at least the 11 px window (at most 5)."""
    m = 1
    while m < len(MS_WEIGHTS) and min(H, W) // 2 ** m >= WINDOW:
        m += 1
    return m


def msssim_forward(pred, target, data_range=None):
    """Multi-scale SSIM loss 1 - MS-SSIM.

    MS-SSIM = prod_{j < M} mean(cs_j)^w_j * mean(S_M)^w_M, cs = A2 / B2 (the contrast-
    structure term of :func:`ssim_map`), S_M the full SSIM map at the coarsest scale M,
    scales made by 2x2 average pooling, as many as fit the window (weights renormalised
    to sum 1); negative means are clipped to 1e-6 before the powers.

    Parameters
    ----------
    pred, target : arrays (N, C, H, W), H, W >= 11

    Returns
    -------
    loss : 0-d array
    cache : tuple
    """
    R = float(target.max() - target.min()) if data_range is None else data_range
    M = msssim_scales(*pred.shape[-2:])
    w = numpy.array(MS_WEIGHTS[:M]) / sum(MS_WEIGHTS[:M])
    x, y = pred, target
    values, scales = [], []
    for j in range(M):
        S, (mx, my, A1, A2, B1, B2) = ssim_map(x, y, R)
        v = S if j == M - 1 else A2 / B2
        mean = v.mean()
        values.append(mean)
        scales.append((x, y, mx, my, A1, A2, B1, B2, S, v.size))
        if j < M - 1:
            x, y = _pool2(x), _pool2(y)
    clipped = [m * (m > 1e-6) + 1e-6 * (m <= 1e-6) for m in values]
    ms = 1.0
    for c, wj in zip(clipped, w):
        ms = ms * c ** wj
    return 1 - ms, (scales, clipped, values, w, ms, pred.shape)


def msssim_backward(cache):
    """Gradient of 1 - MS-SSIM with respect to the prediction, shape (N, C, H, W).

    d(1 - MS)/dx = -MS sum_j (w_j / v_j) dv_j/dx, with dv_j/dx the mean cs (or SSIM at
    the coarsest scale) differentiated as in :func:`ssim_backward`, then carried back
    through the poolings to full resolution.
    """
    taps = gaussian_taps()
    scales, clipped, values, w, ms, shape = cache
    grad = None
    for j in reversed(range(len(scales))):
        x, y, mx, my, A1, A2, B1, B2, S, count = scales[j]
        coef = -ms * w[j] / clipped[j] * (values[j] > 1e-6) / count
        if j == len(scales) - 1:                       # full SSIM at the coarsest scale
            B = B1 * B2
            dexx, dexy = -S / B2, 2 * A1 / B
            dmx = 2 * my * (A2 - A1) / B - 2 * mx * S / B1 + 2 * mx * S / B2
        else:                                           # cs = A2 / B2
            cs = A2 / B2
            dexx, dexy = -cs / B2, 2 / B2 + 0 * cs
            dmx = -2 * my / B2 + 2 * mx * cs / B2
        g = coef * (filter_valid_adjoint(dmx, taps) + 2 * x * filter_valid_adjoint(dexx, taps)
                    + y * filter_valid_adjoint(dexy, taps))
        grad = g if grad is None else g + grad
        if j > 0:
            grad = _pool2_backward(grad, scales[j - 1][0].shape)
    return grad
