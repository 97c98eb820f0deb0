"""3-D operations for tomograms: convolution, max pooling, nearest upsampling, reflection
padding.

Shapes: x (N, C, D, H, W) (D = z slices); a 3-D kernel w (F, C, K, K, K) with K odd,
stride 1 and zero padding P = K // 2 ("same": the output keeps D x H x W).

Convolution as a sum over the K^3 kernel offsets, each one matrix product (the
"shift-and-multiply" form of im2col that never materialises the K^3-times larger column
array, which at 64^3 voxels x 32 channels x 27 offsets would be 900 MB per sample):

    y[n, f, v] = b[f] + sum_{o} sum_c w[f, c, o] * xpad[n, c, v + o]        (o over K^3 offsets)

Backward, with dy (N, F, D, H, W):

    db[f]       = sum_{n, v} dy[n, f, v]
    dw[f, c, o] = sum_{n, v} dy[n, f, v] * xpad[n, c, v + o]           (dy @ window^T)
    dxpad[n, c, v + o] += sum_f w[f, c, o] * dy[n, f, v]               (w^T @ dy)

A fused activation (ReLU or LeakyReLU) may follow the bias (``functional.activation``).
Max pooling and nearest upsampling follow ``pool.py`` and ``upsample.py`` in 3-D:
window = stride = K, trailing voxels dropped; output index i reads input
floor(i * n_in / n_out) along each axis. On the GPU, channels-last volumes (cuDNN's
layout) go through the same kernels as in 2-D (``kernels.layout``).
"""

from itertools import product
from typing import NamedTuple

import numpy

from ..backend import channels_last_gpu, empty_like_memory, get_array_module, in_memory_order
from . import conv_cudnn
from .activation import activate_, activation_backward
from .conv import channel_sum


class Conv3dCache(NamedTuple):
    """xpad : padded input (N, C, D + 2P, H + 2P, W + 2P); w; y (output, after the
    activation); slope : None or the activation's slope; bias : whether b was given."""
    xpad: object
    w: object
    y: object
    slope: object
    bias: bool


def _pad(x, p):
    """Zero padding of the three spatial axes by p voxels."""
    xp = get_array_module(x)
    N, C, D, H, W = x.shape
    out = xp.zeros((N, C, D + 2 * p, H + 2 * p, W + 2 * p), x.dtype)
    out[:, :, p:p + D, p:p + H, p:p + W] = x
    return out


def conv3d_forward(x, w, b=None, slope=None):
    """3-D convolution forward ("same" zero padding, stride 1).

    Parameters
    ----------
    x : array (N, C, D, H, W), float
    w : array (F, C, K, K, K), K odd
    b : array (F,) or None
    slope : None, 0.0 (ReLU) or the LeakyReLU slope, fused after the bias

    Returns
    -------
    y : array (N, F, D, H, W)
    cache : Conv3dCache
    """
    xp = get_array_module(x)
    N, C, D, H, W = x.shape
    F, _, K = w.shape[:3]
    if conv_cudnn.usable(x):
        out = conv_cudnn.conv_forward(x, w, b, 1, K // 2, slope, True)
        if out is not None:
            return out
    xpad = _pad(x, K // 2)
    M = D * H * W
    y = xp.zeros((N, F, M), x.dtype)
    for a, bb, c in product(range(K), repeat=3):
        window = xpad[:, :, a:a + D, bb:bb + H, c:c + W].reshape(N, C, M)
        y += xp.matmul(w[:, :, a, bb, c], window)               # (F, C) @ (N, C, M)
    y = y.reshape(N, F, D, H, W)
    if b is not None:
        y += b[None, :, None, None, None]
    activate_(y, slope)
    return y, Conv3dCache(xpad, w, y, slope, b is not None)


def conv3d_backward(dy, cache):
    """3-D convolution backward.

    Returns
    -------
    dx : array (N, C, D, H, W)
    dw : array (F, C, K, K, K)
    db : array (F,) or None
    """
    if isinstance(cache, conv_cudnn.CudnnConvCache):
        out = conv_cudnn.conv_backward(dy, cache)
        if out is not None:
            return out
        cache = Conv3dCache(_pad(cache.x, cache.padding), cache.w, cache.y, cache.slope,
                            cache.bias)
    xp = get_array_module(dy)
    dy = activation_backward(dy, cache.y, cache.slope)     # dz = dy * act'(y)
    db = channel_sum(dy) if cache.bias else None
    w = cache.w
    N, F, D, H, W = dy.shape
    C, K = w.shape[1], w.shape[2]
    M = D * H * W
    dyf = dy.reshape(N, F, M)
    dw = xp.zeros_like(w)
    dxpad = xp.zeros_like(cache.xpad)
    for a, bb, c in product(range(K), repeat=3):
        window = cache.xpad[:, :, a:a + D, bb:bb + H, c:c + W].reshape(N, C, M)
        dw[:, :, a, bb, c] = xp.matmul(dyf, window.transpose(0, 2, 1)).sum(axis=0)
        dxpad[:, :, a:a + D, bb:bb + H, c:c + W] += xp.matmul(
            w[:, :, a, bb, c].T, dyf).reshape(N, C, D, H, W)
    p = K // 2
    dx = dxpad[:, :, p:p + D, p:p + H, p:p + W]
    return xp.ascontiguousarray(dx), dw, db


def conv3d_naive(x, w, b=None):
    """Loop reference: y[n, f, z, i, j] = b[f] + sum over c and the K^3 window (tests only)."""
    xp = get_array_module(x)
    N, C, D, H, W = x.shape
    F, K = w.shape[0], w.shape[2]
    xpad = _pad(x, K // 2)
    y = xp.zeros((N, F, D, H, W), x.dtype)
    for n, f, z, i, j in product(range(N), range(F), range(D), range(H), range(W)):
        y[n, f, z, i, j] = (xpad[n, :, z:z + K, i:i + K, j:j + K] * w[f]).sum()
    if b is not None:
        y += b[None, :, None, None, None]
    return y


class MaxPool3dCache(NamedTuple):
    """argmax : index of the max in each K^3 window (N, C, OD, OH, OW) (uint8 in
    channels-last memory when the GPU kernel made it); x_shape; kernel."""
    argmax: object
    x_shape: tuple
    kernel: int


def maxpool3d_forward(x, kernel=2):
    """Max pooling over K x K x K windows with stride K (trailing voxels dropped).

    Parameters
    ----------
    x : array (N, C, D, H, W), D, H, W >= kernel
    kernel : int

    Returns
    -------
    y : array (N, C, D // K, H // K, W // K)
    cache : MaxPool3dCache
    """
    if channels_last_gpu(x):
        from ..kernels import layout
        y, argmax = layout.maxpool_forward(x, kernel)
        return y, MaxPool3dCache(argmax, x.shape, kernel)
    N, C, D, H, W = x.shape
    K = kernel
    OD, OH, OW = D // K, H // K, W // K
    win = x[:, :, :OD * K, :OH * K, :OW * K].reshape(N, C, OD, K, OH, K, OW, K)
    win = win.transpose(0, 1, 2, 4, 6, 3, 5, 7).reshape(N, C, OD, OH, OW, K ** 3)
    return win.max(axis=-1), MaxPool3dCache(win.argmax(axis=-1), x.shape, K)


def maxpool3d_backward(dy, cache):
    """dx: dy at each window's argmax (first in row-major order on ties), zero elsewhere."""
    if cache.argmax.dtype == numpy.uint8:
        from ..kernels import layout
        return layout.maxpool_backward(dy, cache.argmax, cache.x_shape, cache.kernel)
    xp = get_array_module(dy)
    N, C, D, H, W = cache.x_shape
    K = cache.kernel
    OD, OH, OW = dy.shape[2:]
    onehot = cache.argmax[..., None] == xp.arange(K ** 3)      # (N, C, OD, OH, OW, K^3)
    win = onehot * dy[..., None]
    win = win.reshape(N, C, OD, OH, OW, K, K, K).transpose(0, 1, 2, 5, 3, 6, 4, 7)
    dx = xp.zeros((N, C, D, H, W), dy.dtype)
    dx[:, :, :OD * K, :OH * K, :OW * K] = win.reshape(N, C, OD * K, OH * K, OW * K)
    return dx


class Upsample3dCache(NamedTuple):
    """idx : source index arrays (depth, rows, columns), None after the GPU kernel;
    x_shape."""
    idx: tuple
    x_shape: tuple


def upsample3d_forward(x, size):
    """Nearest upsampling to ``size`` = (OD, OH, OW): output i reads floor(i * n_in / n_out).

    Returns
    -------
    y : array (N, C, OD, OH, OW)
    cache : Upsample3dCache
    """
    if channels_last_gpu(x):
        from ..kernels import layout
        return layout.upsample_concat(x, None, size), Upsample3dCache(None, x.shape)
    xp = get_array_module(x)
    idx = tuple((xp.arange(o) * n) // o for o, n in zip(size, x.shape[2:]))
    y = x[:, :, idx[0]][:, :, :, idx[1]][:, :, :, :, idx[2]]
    return xp.ascontiguousarray(y), Upsample3dCache(idx, x.shape)


def upsample3d_backward(dy, cache):
    """Each input voxel receives the sum of dy over the output voxels copied from it."""
    if channels_last_gpu(dy):
        from ..kernels import layout
        return layout.upsample_backward(dy, cache.x_shape)
    xp = get_array_module(dy)
    N, C, D, H, W = cache.x_shape
    d0, d1, d2 = cache.idx or tuple((xp.arange(o) * n) // o
                                    for o, n in zip(dy.shape[2:], cache.x_shape[2:]))

    def fold(a, idx, axis, n):
        """Sum along ``axis`` of the output positions that copied each of n inputs:
        a product with the one-hot selection matrix (n_out, n)."""
        select = (idx[:, None] == xp.arange(n)[None, :]).astype(a.dtype)
        return xp.moveaxis(xp.matmul(xp.moveaxis(a, axis, -1), select), -1, axis)

    return xp.ascontiguousarray(fold(fold(fold(dy, d2, 4, W), d1, 3, H), d0, 2, D))


class ReflectionPad3dCache(NamedTuple):
    """pads : ((front, back), (top, bottom), (left, right)) in voxels; x_shape :
    (N, C, D, H, W)."""
    pads: tuple
    x_shape: tuple


def reflection_pad3d_forward(x, pads):
    """Reflection padding of the three spatial axes (the edge voxel is not repeated).

    Along each axis of size n with pads (lo, hi): xpad[i] = x[r(i - lo)] with r(k) = -k
    for k < 0, 2 (n - 1) - k for k > n - 1, k otherwise (``numpy.pad`` mode "reflect";
    the 3-D twin of ``shape.reflection_pad2d_forward``). Each pad must be smaller than its
    axis.

    Parameters
    ----------
    x : array (N, C, D, H, W)
    pads : ((int, int), (int, int), (int, int))
        Voxels added before and after along D, H and W.

    Returns
    -------
    y : array (N, C, D + front + back, H + top + bottom, W + left + right), x's layout
    cache : ReflectionPad3dCache
    """
    xp = get_array_module(x)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    widths = ((0, 0), (0, 0)) + pads
    (v,), undo = in_memory_order(x)                  # pad in memory order: x's layout kept
    order = numpy.argsort(undo)
    y = xp.pad(v, [widths[i] for i in order], mode="reflect").transpose(undo)
    return y, ReflectionPad3dCache(pads, x.shape)


def reflection_pad3d_backward(dy, cache):
    """Fold the gradients of the reflected borders back onto the voxels they copy, one
    axis at a time: along an axis of size n with pads (lo, hi), padded index i < lo copies
    lo - i and padded index lo + n + i copies n - 2 - i.

    Parameters
    ----------
    dy : array (N, C, D + front + back, H + top + bottom, W + left + right)
    cache : ReflectionPad3dCache

    Returns
    -------
    dx : array (N, C, D, H, W), dy's layout
    """
    d = dy
    for axis, ((lo, hi), n) in enumerate(zip(cache.pads, cache.x_shape[2:]), start=2):
        def at(i):
            return (slice(None),) * axis + (i,)
        shape = d.shape[:axis] + (n,) + d.shape[axis + 1:]
        out = empty_like_memory(d, shape)
        (o, v), _ = in_memory_order(out, d[at(slice(lo, lo + n))])
        o[...] = v                                   # the unpadded part along this axis
        for i in range(lo):
            out[at(lo - i)] += d[at(i)]
        for i in range(hi):
            out[at(n - 2 - i)] += d[at(lo + n + i)]
        d = out
    return d


def reflection_pad3d_naive(x, pads):
    """Loop reference of :func:`reflection_pad3d_forward` (tests only): every output voxel
    read through r(k) along each axis."""
    xp = get_array_module(x)
    N, C = x.shape[:2]
    sizes = x.shape[2:]

    def r(k, n):
        return -k if k < 0 else 2 * (n - 1) - k if k > n - 1 else k

    out = [n + lo + hi for n, (lo, hi) in zip(sizes, pads)]
    y = xp.zeros((N, C) + tuple(out), x.dtype)
    for z, i, j in product(*(range(m) for m in out)):
        y[:, :, z, i, j] = x[:, :, r(z - pads[0][0], sizes[0]), r(i - pads[1][0], sizes[1]),
                             r(j - pads[2][0], sizes[2])]
    return y
