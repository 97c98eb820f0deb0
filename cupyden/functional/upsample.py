"""Nearest-neighbour upsampling to a given output size.

y[n, c, i, j] = x[n, c, floor(i * H / OH), floor(j * W / OW)]
(the source-index rule of PyTorch's ``F.interpolate(mode='nearest', size=...)``, which
Topaz-Denoise's UDenoiseNet uses to match a skip connection of any size). When
OH = 2H and OW = 2W every input pixel is copied to a 2x2 block.
Backward: each input pixel receives the sum of dy over the output pixels copied from it.
"""

from typing import NamedTuple

import numpy

from ..backend import get_array_module


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
    xp = get_array_module(dy)
    N, C, H, W = cache.x_shape
    OH, OW = dy.shape[2:]
    if xp is numpy and (OH, OW) == (2 * H, 2 * W):
        from . import upsample_cpu
        return upsample_cpu.upsample2x_backward(dy, cache)
    if OH == 2 * H and OW == 2 * W:
        return dy.reshape(N, C, H, 2, W, 2).sum(axis=(3, 5))
    # general sizes: dx = Ry^T dy Rx with 0/1 selection matrices Ry (OH, H), Rx (OW, W)
    ry = (cache.rows[:, None] == xp.arange(H)).astype(dy.dtype)
    rx = (cache.cols[:, None] == xp.arange(W)).astype(dy.dtype)
    return ry.T @ dy @ rx
