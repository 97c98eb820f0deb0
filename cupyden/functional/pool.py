"""Max pooling with a square window equal to its stride (the U-Net's 2x2, stride 2).

y[n, c, i, j] = max_{a, b < K} x[n, c, i*K + a, j*K + b],  OH = H // K, OW = W // K
(trailing rows and columns that do not fill a window are dropped, as PyTorch does).
Backward: the gradient goes to the position of the maximum; on ties, to the first in
row-major window order (so gradient checks sample inputs without ties).

On the GPU, channels-last arrays (cuDNN's layout) go through ``kernels.layout``: one
thread per output element, output channels-last too; the array code below is the path
for everything else, and the loop reference at the end is what both are tested against.
"""

from typing import NamedTuple

import numpy

from ..backend import channels_last_gpu, get_array_module, is_gpu_array


class MaxPoolCache(NamedTuple):
    """argmax : int array (N, C, OH, OW), index a * K + b of the max in each window
    (uint8 in channels-last memory when the GPU kernel made it); x_shape : (N, C, H, W);
    kernel : K."""
    argmax: object
    x_shape: tuple
    kernel: int


def maxpool2d_forward(x, kernel=2):
    """Max pooling forward.

    Parameters
    ----------
    x : array (N, C, H, W), float; H, W >= kernel
    kernel : int
        Window size and stride, in pixels.

    Returns
    -------
    y : array (N, C, H // kernel, W // kernel)
    cache : MaxPoolCache
    """
    if channels_last_gpu(x):
        from ..kernels import layout
        y, argmax = layout.maxpool_forward(x, kernel)
        return y, MaxPoolCache(argmax, x.shape, kernel)
    if not is_gpu_array(x):                     # channels-last bands (pool_cpu.py)
        from . import pool_cpu
        return pool_cpu.maxpool2d_forward(x, kernel)
    N, C, H, W = x.shape
    K = kernel
    OH, OW = H // K, W // K
    # (N, C, OH, K, OW, K) -> (N, C, OH, OW, K*K): each window on the last axis
    win = x[:, :, :OH * K, :OW * K].reshape(N, C, OH, K, OW, K).transpose(0, 1, 2, 4, 3, 5)
    win = win.reshape(N, C, OH, OW, K * K)
    argmax = win.argmax(axis=-1)
    y = win.max(axis=-1)
    return y, MaxPoolCache(argmax, x.shape, K)


def maxpool2d_backward(dy, cache):
    """Max pooling backward: dx is dy placed at each window's argmax, zero elsewhere.

    Parameters
    ----------
    dy : array (N, C, OH, OW)
    cache : MaxPoolCache

    Returns
    -------
    dx : array (N, C, H, W)
    """
    if not isinstance(cache, MaxPoolCache):
        from . import pool_cpu
        return pool_cpu.maxpool2d_backward(dy, cache)
    if cache.argmax.dtype == numpy.uint8:
        from ..kernels import layout
        return layout.maxpool_backward(dy, cache.argmax, cache.x_shape, cache.kernel)
    xp = get_array_module(dy)
    N, C, H, W = cache.x_shape
    K = cache.kernel
    OH, OW = dy.shape[2:]
    onehot = cache.argmax[..., None] == xp.arange(K * K)        # (N, C, OH, OW, K*K)
    dwin = onehot * dy[..., None]
    # (N, C, OH, OW, K, K) -> (N, C, OH, K, OW, K) -> (N, C, OH*K, OW*K)
    dwin = dwin.reshape(N, C, OH, OW, K, K).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, OH * K, OW * K)
    dx = xp.zeros(cache.x_shape, dy.dtype)
    dx[:, :, :OH * K, :OW * K] = dwin
    return dx


def maxpool2d_forward_naive(x, kernel=2):
    """Loop reference (NumPy): returns y and the cache (x, kernel)."""
    N, C, H, W = x.shape
    K = kernel
    y = numpy.empty((N, C, H // K, W // K), x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(H // K):
                for j in range(W // K):
                    y[n, c, i, j] = x[n, c, i * K:(i + 1) * K, j * K:(j + 1) * K].max()
    return y, (x, kernel)


def maxpool2d_backward_naive(dy, cache):
    """Loop reference: gradient to the first maximum of each window."""
    x, K = cache
    dx = numpy.zeros_like(x)
    N, C, OH, OW = dy.shape
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    win = x[n, c, i * K:(i + 1) * K, j * K:(j + 1) * K]
                    a, b = numpy.unravel_index(numpy.argmax(win), win.shape)
                    dx[n, c, i * K + a, j * K + b] += dy[n, c, i, j]
    return dx
