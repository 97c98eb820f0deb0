"""Shape ops: channel concatenation (U-Net skips), flatten, reflection padding."""

from typing import NamedTuple

from ..backend import get_array_module, is_gpu_array


def concat_forward(a, b):
    """Concatenate along channels: y = [a, b], shapes (N, Ca, H, W), (N, Cb, H, W).

    Returns
    -------
    y : array (N, Ca + Cb, H, W)
    cache : int
        Ca, where backward splits.
    """
    if a.ndim == 4 and not is_gpu_array(a):      # channels-last bands (shape_cpu.py)
        from . import shape_cpu
        return shape_cpu.concat_forward(a, b)
    xp = get_array_module(a)
    return xp.concatenate([a, b], axis=1), a.shape[1]


def concat_backward(dy, cache):
    """Split dy (N, Ca + Cb, H, W) into (da, db) at channel Ca = cache."""
    return dy[:, :cache], dy[:, cache:]


def flatten_forward(x):
    """(N, ...) -> (N, D); the cache is the input shape."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dy, cache):
    """(N, D) -> the input shape."""
    return dy.reshape(cache)


class ReflectionPadCache(NamedTuple):
    """pads : (top, bottom, left, right) in pixels; x_shape : (N, C, H, W)."""
    pads: tuple
    x_shape: tuple


def reflection_pad2d_forward(x, padding):
    """Reflection padding of the last two axes (the edge pixel is not repeated).

    xpad[..., i, :] = x[..., r(i - top), :] with r(k) = -k for k < 0, 2(H-1) - k for
    k > H - 1, k otherwise; likewise along W. Each pad must be smaller than the size.

    Parameters
    ----------
    x : array (N, C, H, W)
    padding : int or tuple (top, bottom, left, right)
        Pixels added on each side.

    Returns
    -------
    y : array (N, C, H + top + bottom, W + left + right)
    cache : ReflectionPadCache
    """
    xp = get_array_module(x)
    pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
    top, bottom, left, right = pads
    y = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="reflect")
    return y, ReflectionPadCache(pads, x.shape)


def reflection_pad2d_backward(dy, cache):
    """Fold the gradients of the reflected borders back onto the pixels they copy.

    Parameters
    ----------
    dy : array (N, C, H + top + bottom, W + left + right)
    cache : ReflectionPadCache

    Returns
    -------
    dx : array (N, C, H, W)
    """
    top, bottom, left, right = cache.pads
    H, W = cache.x_shape[2:]
    d = dy[:, :, top:top + H].copy()                # rows: (N, C, H, W + left + right)
    for i in range(top):
        d[:, :, top - i] += dy[:, :, i]             # padded row i copies row top - i
    for i in range(bottom):
        d[:, :, H - 2 - i] += dy[:, :, top + H + i]  # padded row top + H + i copies H - 2 - i
    dx = d[:, :, :, left:left + W].copy()           # columns: (N, C, H, W)
    for j in range(left):
        dx[:, :, :, left - j] += d[:, :, :, j]
    for j in range(right):
        dx[:, :, :, W - 2 - j] += d[:, :, :, left + W + j]
    return dx
