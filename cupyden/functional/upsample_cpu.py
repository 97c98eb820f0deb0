"""Nearest upsampling by exactly 2 on the CPU: channels-last memory, bands of rows.

The U-Nets' decoders upsample by 2 (formulas in :mod:`cupyden.functional.upsample`). On
channels-last memory it is a copy of contiguous channel vectors:

    y[n, 2i + a, 2j + b, :] = x[n, i, j, :]          (a, b in {0, 1}; one broadcast copy)
    dx[n, i, j, :] = sum_{a, b} dy[n, 2i + a, 2j + b, :]              (three additions)

where upsample.py's broadcast-and-reshape returns an NCHW-ordered copy (a transposing
gather from a channels-last input, and NCHW memory for the convolution that follows).
Bands of rows run on the CPU threads. The cache is upsample.py's.
"""

import numpy

from ..backend import cpu_empty, cpu_map_rows
from .upsample import UpsampleCache, source_index


def upsample2x_forward(x):
    """Nearest upsampling by 2 (NumPy).

    Parameters
    ----------
    x : numpy.ndarray (N, C, H, W), any layout

    Returns
    -------
    y : numpy.ndarray (N, C, 2H, 2W), channels-last memory
    cache : UpsampleCache
    """
    N, C, H, W = x.shape
    xs = x.transpose(0, 2, 3, 1)
    ys = cpu_empty((N, 2 * H, 2 * W, C), x.dtype)

    def band(n, r0, r1, slot):
        # (2R, 2W, C) -> (R, 2, W, 2, C): each input pixel fills a 2 x 2 block
        dst = ys[n, 2 * r0:2 * r1].reshape(r1 - r0, 2, W, 2, C)
        dst[...] = xs[n, r0:r1, None, :, None, :]

    cpu_map_rows(band, N, H, 5 * W * C)
    return ys.transpose(0, 3, 1, 2), UpsampleCache(source_index(2 * H, H),
                                                   source_index(2 * W, W), x.shape)


def upsample2x_backward(dy, cache):
    """Nearest upsampling by 2, backward (NumPy): each input pixel receives the sum of dy
    over its 2 x 2 block.

    Parameters
    ----------
    dy : numpy.ndarray (N, C, 2H, 2W), any layout
    cache : UpsampleCache

    Returns
    -------
    dx : numpy.ndarray (N, C, H, W), channels-last memory
    """
    N, C, H, W = cache.x_shape
    dys = dy.transpose(0, 2, 3, 1)
    dxs = cpu_empty((N, H, W, C), dy.dtype)

    def band(n, r0, r1, slot):
        d = dys[n, 2 * r0:2 * r1]
        dst = dxs[n, r0:r1]
        numpy.add(d[0::2, 0::2], d[0::2, 1::2], out=dst)
        dst += d[1::2, 0::2]
        dst += d[1::2, 1::2]

    cpu_map_rows(band, N, H, 5 * W * C)
    return dxs.transpose(0, 3, 1, 2)
