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

On a GPU the same functions run cuDNN's graphs (``kernels.cudnn_fe``) when cuDNN passes
its probe, and the im2col path above otherwise; :func:`gpu_conv` chooses ("auto", "cudnn",
"im2col"). The caches differ (:class:`CudnnConvCache` keeps the unpadded input), the
results agree to rounding (tests/test_cudnn.py).
"""

import contextlib
import sys
from typing import NamedTuple

import numpy

from ..backend import dense_order, get_array_module, is_gpu_array
from .activation import activate_, activation_backward, copy_like

#: The GPU convolution: "auto" (cuDNN when usable, else im2col), "cudnn" or "im2col".
_GPU_CONV = ["auto"]
#: Convolutions cuDNN had no plan for, which ran through im2col instead (said once each).
IM2COL_FALLBACKS = []


def _fell_back(exc):
    if str(exc) not in IM2COL_FALLBACKS:
        IM2COL_FALLBACKS.append(str(exc))
        print("cupyden: %s; using im2col for it" % exc, file=sys.stderr)


def set_gpu_conv(name):
    """Choose the GPU convolution: "auto", "cudnn" (an error when unusable) or "im2col"."""
    if name not in ("auto", "cudnn", "im2col"):
        raise ValueError("GPU convolution must be auto, cudnn or im2col, got %r" % name)
    _GPU_CONV[0] = name


@contextlib.contextmanager
def gpu_conv(name):
    """Context manager: :func:`set_gpu_conv` inside, the previous choice restored after."""
    old = _GPU_CONV[0]
    set_gpu_conv(name)
    try:
        yield
    finally:
        _GPU_CONV[0] = old


def use_cudnn(x):
    """True when a convolution of ``x`` runs through cuDNN.

    Raises
    ------
    RuntimeError
        When "cudnn" was chosen and cuDNN cannot be used (with the reason).
    """
    if not is_gpu_array(x) or _GPU_CONV[0] == "im2col":
        return False
    from ..kernels import cudnn_fe
    why = cudnn_fe.problem()
    if why is not None and _GPU_CONV[0] == "cudnn":
        raise RuntimeError("cuDNN was asked for but cannot be used: " + why)
    return why is None


#: The CPU convolution: "taps" (conv_cpu: channels-last bands, one GEMM per kernel tap) or
#: "im2col" (this file's readable path).
_CPU_CONV = ["taps"]


@contextlib.contextmanager
def cpu_conv(name):
    """Context manager: the CPU convolution ("taps" or "im2col") inside, the previous after."""
    if name not in ("taps", "im2col"):
        raise ValueError("CPU convolution must be taps or im2col, got %r" % name)
    old, _CPU_CONV[0] = _CPU_CONV[0], name
    try:
        yield
    finally:
        _CPU_CONV[0] = old


def use_conv_cpu(x):
    """True when a convolution of ``x`` runs :mod:`conv_cpu` (NumPy arrays, unless the
    im2col path was chosen with :func:`cpu_conv`)."""
    return not is_gpu_array(x) and _CPU_CONV[0] == "taps"


#: Numerical precisions of the convolutions (``--precision``).
PRECISIONS = ("fp32", "tf32", "fp16")


def set_precision(precision, xp):
    """Set up the convolutions for a precision and return the model's dtype.

    fp32: float32 everywhere, strict (no TF32). tf32: float32 data, cuDNN may round the
    convolutions' inputs to TF32 (10-bit mantissa, float32 accumulation). fp16: float16
    weights and activations in the model (float32 master weights, gradients and loss are
    the optimizer's and the loss's business). tf32 and fp16 need cuDNN on a GPU.

    Parameters
    ----------
    precision : str
        One of :data:`PRECISIONS`.
    xp : module
        numpy or cupy.

    Returns
    -------
    numpy.dtype
        float16 for fp16, else float32.

    Raises
    ------
    InputError
        For an unknown precision, or tf32/fp16 without a usable cuDNN (with the reason).
    """
    from ..errors import InputError
    if precision not in PRECISIONS:
        raise InputError("precision must be one of %s, got %r" % (", ".join(PRECISIONS),
                                                                 precision))
    if xp is numpy:
        if precision != "fp32":
            raise InputError("--precision %s needs a GPU with cuDNN; the CPU runs fp32"
                             % precision)
        return numpy.dtype(numpy.float32)
    from ..kernels import cudnn_fe
    if precision != "fp32":
        why = cudnn_fe.problem() if _GPU_CONV[0] != "im2col" else "im2col was chosen"
        if why is not None:
            raise InputError("--precision %s needs cuDNN, which cannot be used: %s"
                             % (precision, why))
    cudnn_fe.set_tf32(precision == "tf32")
    return numpy.dtype(numpy.float16 if precision == "fp16" else numpy.float32)


class CudnnConvCache(NamedTuple):
    """What the cuDNN backward needs (2-D and 3-D): the input x (unpadded), w, the output y
    when an activation is fused (else None), its slope, stride, padding, and whether a bias
    was given."""
    x: object
    w: object
    y: object
    slope: object
    stride: int
    padding: int
    bias: bool


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


#: Threads of the fused activation-backward + bias-sum kernel (rounded down to a multiple of
#: the channel count): about four times the resident threads of an H100/H200, so that enough
#: loads are in flight to keep memory busy; 2^20 float32 partial sums (4 MB) to add.
SUM_THREADS = 1 << 20


_ONES = {}


def _ones(xp, n, dtype):
    """A cached device vector of n ones (the GEMV that adds partial sums)."""
    key = (n, numpy.dtype(dtype).str, xp.cuda.Device().id)
    if key not in _ONES:
        _ONES[key] = xp.ones(n, dtype)
    return _ONES[key]


def activation_bias_backward(dy, y, slope, bias):
    """Gradient through a fused activation and a bias: (dz, db).

    dz = dy * act'(y) (``functional.activation.activation_backward``), db = the sum of dz
    over N and space (``channel_sum``), or None when ``bias`` is False. On the GPU, for a
    channels-last ``y`` (the cuDNN path's outputs), both in one pass over memory
    (``kernels.activation``); measured on an H200 in benchmarks/RESULTS.md.

    Parameters
    ----------
    dy, y : arrays (N, F, *S), same shape and dtype
    slope : float or None
        The activation's negative slope (0 for ReLU); None: no activation (dz = dy).
    bias : bool

    Returns
    -------
    dz : array (N, F, *S), ``y``'s memory layout when it was computed here
    db : array (F,), float32 for float16 data, else dz's dtype; or None
    """
    F = dy.shape[1]
    order = dense_order(y) if bias and slope is not None and is_gpu_array(dy) else None
    if order and y.ndim > 2 and F > 1 and order[-1] == 1:
        from ..kernels.activation import activation_backward_sum_kernel
        xp = get_array_module(dy)
        if dy.strides != y.strides:
            dy = copy_like(dy, y)
        flat = [a.transpose(order) for a in (dy, y)]
        if all(a.flags.c_contiguous for a in flat):
            dy1, y1 = (a.reshape(-1) for a in flat)
            dz1 = xp.empty_like(y1)
            n = y1.size
            G = max(F, min(SUM_THREADS, -(-n // F) * F) // F * F)
            acc = numpy.float32 if dy.dtype == numpy.float16 else dy.dtype
            part = xp.empty(G, acc)
            activation_backward_sum_kernel(dy1, y1, numpy.float64(slope), numpy.int64(n),
                                           numpy.int64(G), dz1, part)
            dz = dz1.reshape(flat[1].shape).transpose(numpy.argsort(order))
            return dz, _ones(xp, G // F, acc) @ part.reshape(G // F, F)
    dz = activation_backward(dy, y, slope)
    return dz, (channel_sum(dz) if bias else None)


def cudnn_forward(x, w, b, stride, padding, slope, keep_cache):
    """Convolution forward through cuDNN: (y, CudnnConvCache or None), or None when cuDNN
    has no plan for this shape (the caller then takes the im2col path)."""
    from ..kernels import cudnn_fe
    try:
        y = cudnn_fe.conv_forward(x, w, b, stride, padding, slope)
    except cudnn_fe.Unsupported as exc:
        _fell_back(exc)
        return None
    cache = CudnnConvCache(x, w, y if slope is not None else None, slope, stride, padding,
                           b is not None) if keep_cache else None
    return y, cache


def cudnn_backward(dy, cache):
    """Convolution backward through cuDNN: (dx, dw, db); db is None without a bias.

    dz = dy * act'(y) (one pass), db = sum of dz over N and space (float32 for float16
    data), dw by cuDNN's wgrad, dx by its dgrad. None when cuDNN has no plan.
    """
    from ..kernels import cudnn_fe
    dz, db = activation_bias_backward(dy, cache.y, cache.slope, cache.bias)
    try:
        dw = cudnn_fe.conv_wgrad(cache.x, dz, cache.w.shape, cache.stride, cache.padding)
        dx = cudnn_fe.conv_dgrad(dz, cache.w, cache.x.shape, cache.stride, cache.padding)
    except cudnn_fe.Unsupported as exc:
        _fell_back(exc)
        return None
    return dx, dw, db

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
    if use_cudnn(x):
        out = cudnn_forward(x, w, b, stride, padding, slope, keep_cache)
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


def conv2d_backward(dy, cache):
    """Convolution backward.

    Parameters
    ----------
    dy : array (N, F, OH, OW)
    cache : Conv2dCache

    Returns
    -------
    dx : array (N, C, H, W)
    dw : array (F, C, KH, KW)
    db : array (F,)
    """
    from . import conv_cpu
    if isinstance(cache, conv_cpu.Conv2dCpuCache):
        return conv_cpu.conv2d_backward(dy, cache)
    if isinstance(cache, CudnnConvCache):
        out = cudnn_backward(dy, cache._replace(bias=True))
        if out is not None:
            return out
        cache = Conv2dCache(pad_zeros(cache.x, cache.padding), cache.w, cache.stride,
                            cache.padding, cache.x.shape, cache.y, cache.slope, None)
    xp = get_array_module(dy)
    xpad, w, S, P = cache.xpad, cache.w, cache.stride, cache.padding
    N, C, H, W = cache.x_shape
    F, _, KH, KW = w.shape
    OH, OW = dy.shape[2:]
    dy, db = activation_bias_backward(dy, cache.y, cache.slope, True)
    wm = w.reshape(F, C * KH * KW)
    dwm = xp.zeros_like(wm)                             # (F, K)
    dxpad = xp.zeros_like(xpad)
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
        dcol = wm.T @ dyb                               # (K, nb * R * OW)
        col2im_add(dcol, dxpad, KH, KW, S, n0, n1, r0, r1, OW)
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
