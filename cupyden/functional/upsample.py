"""Nearest-neighbour upsampling to a given output size.

y[n, c, i, j] = x[n, c, floor(i * H / OH), floor(j * W / OW)]
(the source-index rule of PyTorch's ``F.interpolate(mode='nearest', size=...)``, which
Topaz-Denoise's UDenoiseNet uses to match a skip connection of any size). When
OH = 2H and OW = 2W every input pixel is copied to a 2x2 block.
Backward: each input pixel receives the sum of dy over the output pixels copied from it.

A U-Net's decoder upsamples to a skip connection's size and concatenates the skip
(:func:`upsample_concat_forward`, 2-D or 3-D): on the GPU, for channels-last arrays, one
kernel (``kernels.layout``) writes both into one channels-last buffer that the next
convolution reads as it is; elsewhere the two ops run one after the other.
"""

from typing import NamedTuple

import numpy

from ..backend import channels_last_gpu, get_array_module
from .shape import concat_backward, concat_forward
from .volume import upsample3d_backward, upsample3d_forward


class UpsampleCache(NamedTuple):
    """rows : int array (OH,), source row of each output row; cols : int array (OW,);
    x_shape : (N, C, H, W)."""
    rows: object
    cols: object
    x_shape: tuple


def source_index(out_size, in_size, xp=numpy):
    """floor(i * in_size / out_size) for i in [0, out_size), as an int array of xp."""
    return (xp.arange(out_size) * in_size) // out_size


def upsample2d_forward(x, size):
    """Nearest upsampling forward.

    Parameters
    ----------
    x : array (N, C, H, W)
    size : tuple (OH, OW)
        Output size in pixels, e.g. the spatial size of the skip connection it joins.

    Returns
    -------
    y : array (N, C, OH, OW)
    cache : UpsampleCache
    """
    if channels_last_gpu(x):
        from ..kernels import layout
        return layout.upsample_concat(x, None, size), UpsampleCache(None, None, x.shape)
    xp = get_array_module(x)
    N, C, H, W = x.shape
    OH, OW = size
    if xp is numpy and (OH, OW) == (2 * H, 2 * W):   # channels-last bands (upsample_cpu.py)
        from . import upsample_cpu
        return upsample_cpu.upsample2x_forward(x)
    rows, cols = source_index(OH, H, xp), source_index(OW, W, xp)
    if OH == 2 * H and OW == 2 * W:
        # fast path: (N, C, H, 1, W, 1) broadcast to (N, C, H, 2, W, 2)
        y = xp.broadcast_to(x[:, :, :, None, :, None], (N, C, H, 2, W, 2)).reshape(N, C, OH, OW)
    else:
        y = x[:, :, rows][:, :, :, cols]
    return xp.ascontiguousarray(y), UpsampleCache(rows, cols, x.shape)


def upsample2d_backward(dy, cache):
    """Nearest upsampling backward.

    Parameters
    ----------
    dy : array (N, C, OH, OW)
    cache : UpsampleCache

    Returns
    -------
    dx : array (N, C, H, W)
    """
    if channels_last_gpu(dy):
        from ..kernels import layout
        return layout.upsample_backward(dy, cache.x_shape)
    xp = get_array_module(dy)
    N, C, H, W = cache.x_shape
    OH, OW = dy.shape[2:]
    if xp is numpy and (OH, OW) == (2 * H, 2 * W):   # channels-last bands (upsample_cpu.py)
        from . import upsample_cpu
        return upsample_cpu.upsample2x_backward(dy, cache)
    rows = source_index(OH, H, xp) if cache.rows is None else cache.rows
    cols = source_index(OW, W, xp) if cache.cols is None else cache.cols
    if OH == 2 * H and OW == 2 * W:
        return dy.reshape(N, C, H, 2, W, 2).sum(axis=(3, 5))
    # general sizes: dx = Ry^T dy Rx with 0/1 selection matrices Ry (OH, H), Rx (OW, W)
    ry = (rows[:, None] == xp.arange(H)).astype(dy.dtype)
    rx = (cols[:, None] == xp.arange(W)).astype(dy.dtype)
    return ry.T @ dy @ rx


class UpsampleConcatCache(NamedTuple):
    """x_shape : (N, Cx, *S) of the upsampled input; up : the upsampling's cache on the
    two-op path, None after the GPU kernel."""
    x_shape: tuple
    up: object


def upsample_concat_forward(x, skip):
    """Nearest upsampling of x to skip's size, then concatenation with skip: a U-Net's
    decoder input.

    y[:, :Cx] = upsample(x, skip.shape[2:]) (the rule above, per spatial axis),
    y[:, Cx:] = skip.

    Parameters
    ----------
    x : array (N, Cx, *S), 2 or 3 spatial axes
    skip : array (N, Cs, *S'), same dtype; S' the output's size

    Returns
    -------
    y : array (N, Cx + Cs, *S'), channels-last on the GPU kernel's path
    cache : UpsampleConcatCache
    """
    if channels_last_gpu(x, skip):
        from ..kernels import layout
        return layout.upsample_concat(x, skip), UpsampleConcatCache(x.shape, None)
    forward = upsample2d_forward if x.ndim == 4 else upsample3d_forward
    up, cache = forward(x, skip.shape[2:])
    y, _ = concat_forward(up, skip)
    return y, UpsampleConcatCache(x.shape, cache)


def upsample_concat_backward(dy, cache):
    """Gradients of :func:`upsample_concat_forward`: (dx (N, Cx, *S), dskip (N, Cs, *S')).

    dskip is a view of dy's channels [Cx, Cx + Cs); dx sums dy[:, :Cx] over the outputs
    copied from each input pixel.
    """
    du, dskip = concat_backward(dy, cache.x_shape[1])
    if cache.up is None:
        from ..kernels import layout
        return layout.upsample_backward(du, cache.x_shape), dskip
    backward = upsample2d_backward if du.ndim == 4 else upsample3d_backward
    return backward(du, cache.up), dskip


def upsample_concat_naive(x, skip):
    """Loop reference for :func:`upsample_concat_forward` (NumPy, 2-D or 3-D)."""
    N, Cx = x.shape[:2]
    size = skip.shape[2:]
    y = numpy.zeros((N, Cx + skip.shape[1]) + size, x.dtype)
    for n in range(N):
        for c in range(Cx):
            for o in numpy.ndindex(*size):
                src = tuple(i * s // t for i, s, t in zip(o, x.shape[2:], size))
                y[(n, c) + o] = x[(n, c) + src]
        y[n, Cx:] = skip[n]
    return y


def upsample_concat_backward_naive(dy, x_shape):
    """Loop reference for :func:`upsample_concat_backward`: (dx, dskip)."""
    Cx = x_shape[1]
    dx = numpy.zeros(x_shape, dy.dtype)
    size = dy.shape[2:]
    for n in range(dy.shape[0]):
        for c in range(Cx):
            for o in numpy.ndindex(*size):
                src = tuple(i * s // t for i, s, t in zip(o, x_shape[2:], size))
                dx[(n, c) + src] += dy[(n, c) + o]
    return dx, dy[:, Cx:]
