"""Max pooling on the CPU, on channels-last memory, in parallel bands of rows.

Same formulas and tie rule as :mod:`cupyden.functional.pool` (window = stride = K, the
gradient to the first maximum in row-major window order). With x channels-last,
x[:, :, a::K, b::K] for each window position (a, b) is an (N, C, OH, OW) view whose
channels are contiguous, so

    y = max_{a, b} x[:, :, a::K, b::K]                      (K * K - 1 elementwise maxima)

is computed without gathering windows (pool.py builds an (N, C, OH, OW, K * K) copy,
which on channels-last memory is a transposing gather). Backward, in window order:

    hit_ab = (x[:, :, a::K, b::K] == y) and not taken;  dx[:, :, a::K, b::K] = dy * hit_ab;
    taken |= hit_ab

The cache keeps references to x and y (the convolution before a pooling keeps x anyway)
instead of an argmax array.
"""

from typing import NamedTuple

import numpy

from ..backend import cpu_empty, cpu_map_rows


class MaxPoolCpuCache(NamedTuple):
    """x : array (N, C, H, W), the input (a reference); y : array (N, C, OH, OW), the
    output; kernel : K."""
    x: object
    y: object
    kernel: int


def maxpool2d_forward(x, kernel=2):
    """Max pooling forward (NumPy).

    Parameters
    ----------
    x : numpy.ndarray (N, C, H, W), float, any layout (channels-last is the fast one)
    kernel : int
        Window size and stride, in pixels.

    Returns
    -------
    y : numpy.ndarray (N, C, H // kernel, W // kernel), channels-last memory
    cache : MaxPoolCpuCache
    """
    N, C, H, W = x.shape
    K = kernel
    OH, OW = H // K, W // K
    xs = x.transpose(0, 2, 3, 1)                                   # (N, H, W, C)
    ys = cpu_empty((N, OH, OW, C), x.dtype)

    def band(n, r0, r1, slot):
        dst = ys[n, r0:r1]
        for k in range(K * K):
            a, b = divmod(k, K)
            win = xs[n, r0 * K + a:r1 * K:K, b:OW * K:K]          # (r1 - r0, OW, C)
            if k == 0:
                dst[...] = win
            else:
                numpy.maximum(dst, win, out=dst)

    cpu_map_rows(band, N, OH, K * K * OW * C)
    y = ys.transpose(0, 3, 1, 2)
    return y, MaxPoolCpuCache(x, y, K)


def maxpool2d_backward(dy, cache):
    """Max pooling backward (NumPy): dy to the first maximum of each window.

    Parameters
    ----------
    dy : numpy.ndarray (N, C, OH, OW), any layout
    cache : MaxPoolCpuCache

    Returns
    -------
    dx : numpy.ndarray (N, C, H, W), channels-last memory
    """
    x, y, K = cache
    N, C, H, W = x.shape
    OH, OW = y.shape[2:]
    xs, ys, dys = (a.transpose(0, 2, 3, 1) for a in (x, y, dy))
    dxs = cpu_empty((N, H, W, C), dy.dtype)
    dxs[:, OH * K:] = 0                                            # rows no window covers
    dxs[:, :OH * K, OW * K:] = 0

    def band(n, r0, r1, slot):
        yb, db = ys[n, r0:r1], dys[n, r0:r1]
        taken = numpy.zeros(yb.shape, bool)
        hit = numpy.empty(yb.shape, bool)
        for k in range(K * K):
            a, b = divmod(k, K)
            rows, cols = slice(r0 * K + a, r1 * K, K), slice(b, OW * K, K)
            numpy.equal(xs[n, rows, cols], yb, out=hit)
            if k:
                hit &= ~taken
            numpy.multiply(db, hit, out=dxs[n, rows, cols])
            taken |= hit

    cpu_map_rows(band, N, OH, 2 * K * K * OW * C)
    return dxs.transpose(0, 3, 1, 2)
