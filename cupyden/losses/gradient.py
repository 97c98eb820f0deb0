"""Gradient (edge) loss: L1 between finite-difference image gradients.

    Dx p = p[..., :, 1:] - p[..., :, :-1],   Dy p = p[..., 1:, :] - p[..., :-1, :]
    L = mean |Dx p - Dx t| + mean |Dy p - Dy t|

Backward: with s = sign(Dx p - Dx t) / (number of Dx terms), each difference sends +s to
its right pixel and -s to its left one (likewise along y); the subgradient 0 is taken at 0.
"""

from ..backend import get_array_module


def gradient_forward(pred, target):
    """Gradient loss.

    Parameters
    ----------
    pred, target : arrays (N, C, H, W), H, W >= 2

    Returns
    -------
    loss : 0-d array
    cache : (ex, ey, shape)
        ex, ey = the differences of gradients along x and y.
    """
    ex = (pred[..., :, 1:] - pred[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    ey = (pred[..., 1:, :] - pred[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return abs(ex).mean() + abs(ey).mean(), (ex, ey, pred.shape)


def gradient_backward(cache):
    """Gradient of the loss with respect to the prediction, shape (N, C, H, W)."""
    ex, ey, shape = cache
    xp = get_array_module(ex)
    sx = ((ex > 0).astype(ex.dtype) - (ex < 0).astype(ex.dtype)) / ex.size
    sy = ((ey > 0).astype(ey.dtype) - (ey < 0).astype(ey.dtype)) / ey.size
    dp = xp.zeros(shape, ex.dtype)
    dp[..., :, 1:] += sx
    dp[..., :, :-1] -= sx
    dp[..., 1:, :] += sy
    dp[..., :-1, :] -= sy
    return dp
