"""2-D convolution (cross-correlation, as in every deep-learning framework).

Shapes: x (N, C, H, W), w (F, C, KH, KW), b (F,), y (N, F, OH, OW) with

    OH = (H + 2 * P - KH) // S + 1,    OW = (W + 2 * P - KW) // S + 1

for zero padding P and stride S (cs231n's output-size formula).

Forward, written as one matrix product per block (im2col; Chellapilla et al. 2006):

    col[c, kh, kw, n, oh, ow] = xpad[n, c, oh * S + kh, ow * S + kw]      (K = C*KH*KW rows)
    y[n, f, oh, ow] = sum_k w[f, k] * col[k, n, oh, ow] + b[f]

Backward, with dy (N, F, OH, OW):

    db[f] = sum_{n, oh, ow} dy[n, f, oh, ow]
    dw[f, k] = sum_{n, oh, ow} dy[n, f, oh, ow] * col[k, n, oh, ow]            (dy @ col^T)
    dcol[k, n, oh, ow] = sum_f w[f, k] * dy[n, f, oh, ow]                      (w^T @ dy)
    dxpad[n, c, oh * S + kh, ow * S + kw] += dcol[c, kh, kw, n, oh, ow]       (col2im)

The columns are built block by block (a few output rows on the CPU, so that a block stays
in cache; whole batches on the GPU). For the backward pass they are kept when all of a
layer's columns fit in ``KEEP_COLUMNS_*`` elements (small training batches: no rebuild),
and rebuilt block by block otherwise (the cache then holds only the padded input, K times
less memory than the columns).

A fused activation (ReLU or LeakyReLU) may follow the bias, as cuDNN's fused
conv + bias + activation graph does; its backward uses the output y.

Which implementation runs is decided in two predicates at the top of
:func:`conv2d_forward`, from ``cupyden.settings``: on the CPU ``use_conv_cpu(x)`` picks the
faster NumPy sibling (``functional/conv_cpu.py``: channels-last tiles, one matrix product
per kernel tap, Winograd or FFT where they measured faster; ``SETTINGS.cpu_conv``), on a
GPU ``conv_cudnn.usable(x)`` picks the cuDNN sibling (``functional/conv_cudnn.py``;
``SETTINGS.conv``); otherwise the im2col path below runs. The caches differ, and
:func:`conv2d_backward` follows the cache; the results agree to rounding
(tests/test_conv_cpu.py, tests/test_cudnn.py).
"""

from typing import NamedTuple

import numpy

from ..backend import dense_order, get_array_module, is_gpu_array
from ..settings import PRECISIONS, SETTINGS, cudnn_problem, set_precision, using
from . import conv_cudnn
from .activation import activate_, activation_backward

__all__ = ["PRECISIONS", "set_precision", "cudnn_problem", "gpu_conv", "cpu_conv",
           "channel_sum", "conv2d_forward", "conv2d_backward", "conv2d_forward_naive", "conv2d_backward_naive"]


def gpu_conv(name):
    """Context manager: the GPU convolution path ("auto", "cudnn" or "im2col") inside the
    block (``settings.using(conv=name)``), the previous one after."""
    return using(conv=name)


def cpu_conv(name):
    """Context manager: the CPU convolution path ("taps" or "im2col") inside the block
    (``settings.using(cpu_conv=name)``), the previous one after."""
    return using(cpu_conv=name)


def use_conv_cpu(x):
    """True when a convolution of ``x`` runs :mod:`conv_cpu` (NumPy arrays, unless the
    im2col path was chosen: ``SETTINGS.cpu_conv``)."""
    return not is_gpu_array(x) and SETTINGS.cpu_conv == "taps"


def channel_sum(dz):
    """Sum of dz (N, F, *S) over N and space: the bias gradient, shape (F,).

    In two stages, the axis with the smallest stride first (W for NCHW memory, C's
    neighbour W for channels-last): one pass over all F outputs at once reduced 1M pixels
    per output in F = 32 thread blocks (measured: most of a DnCNN training step's time on an
    H200). Accumulates in float32 for float16 data.
    """
    acc = numpy.float32 if dz.dtype == numpy.float16 else dz.dtype
    F = dz.shape[1]
    if dz.ndim > 2 and dense_order(dz)[-1] == 1 and dz.shape[-1] > 1:   # channels-last
        m = dz.transpose(dense_order(dz))                        # (N, *S, F), contiguous
        rows = m.size // F
        R = max(r for r in (256, 128, 64, 32, 16, 8, 4, 2, 1) if rows % r == 0)
        part = m.reshape(rows // R, R, F).sum(axis=1, dtype=acc)   # coalesced over F
        xp = get_array_module(dz)
        return xp.ones(rows // R, acc) @ part                 # F outputs: one GEMV
    part = dz.sum(axis=dz.ndim - 1, dtype=acc)              # (N, F, *S[:-1])
    return part.sum(axis=(0,) + tuple(range(2, part.ndim)))


#: Elements per column block: ~8 MB of float32 on the CPU (measured fastest on 2 cores at
#: 4-8 rows of a 1024-px-wide image), 2^28 on the GPU (1 GiB of float32).
BLOCK_ELEMENTS_CPU = 2 * 1024 * 1024
BLOCK_ELEMENTS_GPU = 1 << 28
#: A layer's columns are kept for the backward pass up to this many elements (256 MB of
#: float32 on the CPU, 2 GiB on the GPU), and rebuilt there beyond.
KEEP_COLUMNS_CPU = 64 * 1024 * 1024
KEEP_COLUMNS_GPU = 1 << 29


class Conv2dCache(NamedTuple):
    """What conv2d_backward needs.

    xpad : array (N, C, H + 2P, W + 2P)
        The zero-padded input (the input itself when P == 0).
    w : array (F, C, KH, KW)
    stride, padding : int
    x_shape : tuple (N, C, H, W)
    y : array (N, F, OH, OW) or None
        The output, kept only when an activation is fused.
    slope : float or None
        The fused activation's negative slope (0 for ReLU), or None.
    cols : list of arrays (K, nb * R * OW) or None
        Each block's columns, when kept (see ``KEEP_COLUMNS_*``).
    """
    xpad: object
    w: object
    stride: int
    padding: int
    x_shape: tuple
    y: object
    slope: object
    cols: object


def output_size(size, kernel, stride, padding):
    """Output length along one axis: (size + 2 * padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def pad_zeros(x, padding):
    """Zero-pad the last two axes of ``x`` by ``padding`` pixels on each side.

    Written as zeros + one slice assignment: ``cupy.pad`` cost 0.8 ms of host time per call
    on an H200 machine (about 10 ms of a DnCNN training step).
    """
    if padding == 0:
        return x
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out = xp.zeros((N, C, H + 2 * padding, W + 2 * padding), x.dtype)
    out[:, :, padding:padding + H, padding:padding + W] = x
    return out


def _blocks(N, OH, OW, K, xp):
    """Yield (n0, n1, r0, r1): images [n0, n1) and output rows [r0, r1) of one block.

    A block's columns (K, nb * R * OW) stay under the device's element budget: whole
    images when one fits, else a band of rows of one image.
    """
    budget = BLOCK_ELEMENTS_CPU if xp is numpy else BLOCK_ELEMENTS_GPU
    per_row = K * OW
    rows = max(1, budget // per_row)
    if rows >= OH:
        nb = max(1, budget // (per_row * OH))
        for n0 in range(0, N, nb):
            yield n0, min(N, n0 + nb), 0, OH
    else:
        for n0 in range(N):
            for r0 in range(0, OH, rows):
                yield n0, n0 + 1, r0, min(OH, r0 + rows)


def im2col(xpad, KH, KW, stride, n0, n1, r0, r1, OW, out=None):
    """Columns of one block: images [n0, n1), output rows [r0, r1).

    Parameters
    ----------
    xpad : array (N, C, Hp, Wp)
        Padded input.
    KH, KW, stride : int
    n0, n1, r0, r1 : int
        The block.
    OW : int
        Output width.
    out : array or None
        Buffer of at least C*KH*KW*(n1-n0)*(r1-r0)*OW elements, reused across blocks.

    Returns
    -------
    col : array (C * KH * KW, (n1 - n0) * (r1 - r0) * OW), dtype of xpad
        Row index k = (c * KH + kh) * KW + kw; column index (n * R + r) * OW + ow.
    """
    xp = get_array_module(xpad)
    C = xpad.shape[1]
    nb, R, S = n1 - n0, r1 - r0, stride
    size = C * KH * KW * nb * R * OW
    col = xp.empty(size, xpad.dtype) if out is None else out[:size]
    if xp is not numpy:
        from ..kernels.im2col import im2col_kernel
        Hp, Wp = xpad.shape[2:]
        im2col_kernel(xpad, C, Hp, Wp, KH, KW, S, nb, R, OW, n0, r0, col)
        return col.reshape(C * KH * KW, nb * R * OW)
    col6 = col.reshape(C, KH, KW, nb, R, OW)
    for kh in range(KH):
        for kw in range(KW):
            # (nb, C, R, OW) strided window -> (C, nb, R, OW)
            src = xpad[n0:n1, :, r0 * S + kh:(r1 - 1) * S + kh + 1:S, kw:(OW - 1) * S + kw + 1:S]
            col6[:, kh, kw] = src.transpose(1, 0, 2, 3)
    return col.reshape(C * KH * KW, nb * R * OW)


def col2im_add(dcol, dxpad, KH, KW, stride, n0, n1, r0, r1, OW):
    """Add one block's column gradients back into the padded input gradient (in place).

    Parameters
    ----------
    dcol : array (C * KH * KW, (n1 - n0) * (r1 - r0) * OW)
    dxpad : array (N, C, Hp, Wp), modified in place
    KH, KW, stride, n0, n1, r0, r1, OW : int
        As in :func:`im2col`.
    """
    xp = get_array_module(dxpad)
    C = dxpad.shape[1]
    nb, R, S = n1 - n0, r1 - r0, stride
    if xp is not numpy:
        from ..kernels.im2col import col2im_add_kernel
        Hp, Wp = dxpad.shape[2:]
        h0, h1 = r0 * S, min(Hp, (r1 - 1) * S + KH)   # padded rows this block touches
        size = nb * C * (h1 - h0) * Wp
        col2im_add_kernel(dcol, C, Hp, Wp, KH, KW, S, nb, R, OW, n0, r0, h0, h1 - h0, dxpad,
                          size=size)
        return
    dcol6 = dcol.reshape(C, KH, KW, nb, R, OW)
    for kh in range(KH):
        for kw in range(KW):
            dst = dxpad[n0:n1, :, r0 * S + kh:(r1 - 1) * S + kh + 1:S, kw:(OW - 1) * S + kw + 1:S]
            dst += dcol6[:, kh, kw].transpose(1, 0, 2, 3)   # (C, nb, R, OW) -> (nb, C, R, OW)


def conv2d_forward(x, w, b, stride=1, padding=0, slope=None, keep_cache=True):
    """Convolution forward, optionally fused with bias and a (Leaky)ReLU.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64
    w : array (F, C, KH, KW), dtype of x
    b : array (F,) or None
    stride : int
        1 or 2 (any positive integer works).
    padding : int
        Zero padding on each side, in pixels.
    slope : float or None
        None: no activation; 0.0: ReLU; > 0: LeakyReLU with this negative slope.
    keep_cache : bool
        False for inference: no cache is kept (returns None for it).

    Returns
    -------
    y : array (N, F, OH, OW), dtype of x
    cache : Conv2dCache or None
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    F, Cw, KH, KW = w.shape
    if Cw != C:
        raise ValueError("conv2d: input has %d channels, filters expect %d" % (C, Cw))
    if use_conv_cpu(x):
        from . import conv_cpu
        return conv_cpu.conv2d_forward(x, w, b, stride, padding, slope, keep_cache)
    if conv_cudnn.usable(x):
        out = conv_cudnn.conv_forward(x, w, b, stride, padding, slope, keep_cache)
        if out is not None:
            return out
    OH, OW = output_size(H, KH, stride, padding), output_size(W, KW, stride, padding)
    xpad = xp.ascontiguousarray(pad_zeros(x, padding))
    wm = w.reshape(F, C * KH * KW)                      # (F, K)
    y = xp.empty((N, F, OH, OW), x.dtype)
    limit = KEEP_COLUMNS_CPU if xp is numpy else KEEP_COLUMNS_GPU
    cols = [] if keep_cache and C * KH * KW * N * OH * OW <= limit else None
    buf = None
    for n0, n1, r0, r1 in _blocks(N, OH, OW, C * KH * KW, xp):
        nb, R = n1 - n0, r1 - r0
        if buf is None and cols is None:              # one buffer reused by every block
            buf = xp.empty(C * KH * KW * nb * R * OW, x.dtype)
        col = im2col(xpad, KH, KW, stride, n0, n1, r0, r1, OW, out=buf)
        if cols is not None:
            cols.append(col)
        yb = wm @ col                                   # (F, nb * R * OW)
        if b is not None:
            yb += b[:, None]
        activate_(yb, slope)
        y[n0:n1, :, r0:r1] = yb.reshape(F, nb, R, OW).transpose(1, 0, 2, 3)
    cache = Conv2dCache(xpad, w, stride, padding, x.shape, y if slope is not None else None,
                        slope, cols) if keep_cache else None
    return y, cache


def conv2d_backward(dy, cache, input_grad=True):
    """Convolution backward.

    Parameters
    ----------
    dy : array (N, F, OH, OW)
    cache : Conv2dCache
    input_grad : bool
        False: dx is not needed (the network's input) and None is returned for it; every
        path then skips its computation.

    Returns
    -------
    dx : array (N, C, H, W), or None without ``input_grad``
    dw : array (F, C, KH, KW)
    db : array (F,)
    """
    from . import conv_cpu
    if isinstance(cache, conv_cpu.Conv2dCpuCache):
        return conv_cpu.conv2d_backward(dy, cache, input_grad)
    if isinstance(cache, conv_cudnn.CudnnConvCache):
        out = conv_cudnn.conv_backward(dy, cache._replace(bias=True), input_grad)
        if out is not None:
            return out
        cache = Conv2dCache(pad_zeros(cache.x, cache.padding), cache.w, cache.stride,
                            cache.padding, cache.x.shape, cache.y, cache.slope, None)
    xp = get_array_module(dy)
    xpad, w, S, P = cache.xpad, cache.w, cache.stride, cache.padding
    N, C, H, W = cache.x_shape
    F, _, KH, KW = w.shape
    OH, OW = dy.shape[2:]
    dy = activation_backward(dy, cache.y, cache.slope)     # dz = dy * act'(y)
    db = channel_sum(dy)
    wm = w.reshape(F, C * KH * KW)
    dwm = xp.zeros_like(wm)                             # (F, K)
    dxpad = xp.zeros_like(xpad) if input_grad else None
    buf = None
    for i, (n0, n1, r0, r1) in enumerate(_blocks(N, OH, OW, C * KH * KW, xp)):
        nb, R = n1 - n0, r1 - r0
        if cache.cols is not None:
            col = cache.cols[i]
        else:
            if buf is None:
                buf = xp.empty(C * KH * KW * nb * R * OW, xpad.dtype)
            col = im2col(xpad, KH, KW, S, n0, n1, r0, r1, OW, out=buf)
        dyb = dy[n0:n1, :, r0:r1].transpose(1, 0, 2, 3).reshape(F, nb * R * OW)
        dwm += dyb @ col.T                              # (F, K)
        if input_grad:
            dcol = wm.T @ dyb                           # (K, nb * R * OW)
            col2im_add(dcol, dxpad, KH, KW, S, n0, n1, r0, r1, OW)
    if not input_grad:
        return None, dwm.reshape(w.shape), db
    dx = dxpad[:, :, P:P + H, P:P + W] if P else dxpad
    return xp.ascontiguousarray(dx), dwm.reshape(w.shape), db


def conv2d_forward_naive(x, w, b, stride=1, padding=0):
    """Loop reference for :func:`conv2d_forward` (NumPy, small inputs only).

    Same parameters and output as :func:`conv2d_forward` without activation; the cache
    is ``(x, w, stride, padding)``.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = output_size(H, KH, stride, padding), output_size(W, KW, stride, padding)
    xpad = numpy.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = numpy.zeros((N, F, OH, OW), x.dtype)
    for n in range(N):
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    window = xpad[n, :, i * stride:i * stride + KH, j * stride:j * stride + KW]
                    y[n, f, i, j] = numpy.sum(window * w[f]) + (b[f] if b is not None else 0)
    return y, (x, w, stride, padding)


def conv2d_backward_naive(dy, cache):
    """Loop reference for :func:`conv2d_backward`: returns (dx, dw, db)."""
    x, w, stride, padding = cache
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = dy.shape[2:]
    xpad = numpy.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxpad = numpy.zeros_like(xpad)
    dw = numpy.zeros_like(w)
    for n in range(N):
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    g = dy[n, f, i, j]
                    window = xpad[n, :, i * stride:i * stride + KH, j * stride:j * stride + KW]
                    dw[f] += g * window
                    dxpad[n, :, i * stride:i * stride + KH, j * stride:j * stride + KW] += g * w[f]
    dx = dxpad[:, :, padding:padding + H, padding:padding + W]
    return dx, dw, dy.sum(axis=(0, 2, 3))
