"""Shape ops: channel concatenation (U-Net skips), the sum of a skip's two gradients,
flatten, reflection padding.

Outputs keep the memory layout of the input (channels-last on cuDNN's path), and copies
walk memory order (``backend.in_memory_order``): CuPy would otherwise allocate C order
and index a channels-last array against its grain.
"""

from typing import NamedTuple

import numpy

from ..backend import empty_like_memory, get_array_module, in_memory_order, is_gpu_array


def _assign(dst, src):
    """dst[...] = src, walking dst's memory order."""
    (d, s), _ = in_memory_order(dst, src)
    d[...] = s


def concat_forward(a, b):
    """Concatenate along channels: y = [a, b], shapes (N, Ca, *S), (N, Cb, *S).

    Returns
    -------
    y : array (N, Ca + Cb, *S), a's memory layout
    cache : int
        Ca, where backward splits.
    """
    if a.ndim == 4 and not is_gpu_array(a):      # channels-last bands (shape_cpu.py)
        from . import shape_cpu
        return shape_cpu.concat_forward(a, b)
    Ca = a.shape[1]
    y = empty_like_memory(a, (a.shape[0], Ca + b.shape[1]) + a.shape[2:])
    _assign(y[:, :Ca], a)
    _assign(y[:, Ca:], b)
    return y, Ca


def concat_backward(dy, cache):
    """Split dy (N, Ca + Cb, *S) into (da, db) at channel Ca = cache (views of dy)."""
    return dy[:, :cache], dy[:, cache:]


def add_gradients(a, b):
    """a + b in a's memory layout: the gradient of a tensor used twice (a U-Net's encoder
    output feeds the next level and a skip connection).

    Parameters
    ----------
    a, b : arrays, same shape and dtype (b may be a view, e.g. of a concatenation's
        gradient)

    Returns
    -------
    array, a's shape and memory layout
    """
    xp = get_array_module(a)
    out = empty_like_memory(a)
    (o, u, v), _ = in_memory_order(out, a, b)
    xp.add(u, v, out=o)
    return out


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
    widths = ((0, 0), (0, 0), (top, bottom), (left, right))
    (v,), undo = in_memory_order(x)                  # pad in memory order: x's layout kept
    order = numpy.argsort(undo)
    y = xp.pad(v, [widths[i] for i in order], mode="reflect").transpose(undo)
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
    d = empty_like_memory(dy, dy.shape[:2] + (H, dy.shape[3]))
    _assign(d, dy[:, :, top:top + H])               # rows: (N, C, H, W + left + right)
    for i in range(top):
        d[:, :, top - i] += dy[:, :, i]             # padded row i copies row top - i
    for i in range(bottom):
        d[:, :, H - 2 - i] += dy[:, :, top + H + i]  # padded row top + H + i copies H - 2 - i
    dx = empty_like_memory(dy, cache.x_shape)
    _assign(dx, d[:, :, :, left:left + W])          # columns: (N, C, H, W)
    for j in range(left):
        dx[:, :, :, left - j] += d[:, :, :, j]
    for j in range(right):
        dx[:, :, :, W - 2 - j] += d[:, :, :, left + W + j]
    return dx
