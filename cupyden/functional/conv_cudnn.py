"""Convolution through cuDNN: the GPU sibling of ``functional/conv.py`` (2-D and 3-D).

The same math as conv.py's docstring, run as cuDNN Frontend graphs (``kernels.cudnn_fe``):

    forward   y = act(conv(x, w) + b)                  one fused graph (fprop + bias + act),
                                                       or fprop, then bias + act in one pass
    backward  dz = dy * act'(y),  db = sum of dz over N and space     one pass (below)
              dw = wgrad(x, dz),  dx = dgrad(dz, w)                   two graphs

Activations live channels-last (NHWC / NDHWC memory behind NCHW / NCDHW views): cuDNN's
tensor-core kernels read that layout, and the U-Nets' other ops (``functional.pool``,
``functional.upsample``, ``functional.shape``) keep it, so nothing is copied between
convolutions. The cache keeps the input exactly as cuDNN read it, so wgrad reads it again
without a copy.

The dispatcher is one predicate, :func:`usable` (as Chainer v1 decides in one place);
``functional.conv.conv2d_forward`` asks it first. When cuDNN has no plan for a shape the
convolution runs through im2col instead (said once per shape on stderr).
"""

import sys
from typing import NamedTuple

import numpy

from ..backend import (channels_last_span, copy_like, empty_like_memory, get_array_module,
                       is_gpu_array)
from ..settings import SETTINGS
from .activation import activation_backward

#: Convolutions cuDNN had no plan for, which ran through im2col instead (said once each).
IM2COL_FALLBACKS = []


def _fell_back(exc):
    if str(exc) not in IM2COL_FALLBACKS:
        IM2COL_FALLBACKS.append(str(exc))
        print("cupyden: %s; using im2col for it" % exc, file=sys.stderr)


def usable(x):
    """True when a convolution of ``x`` runs through cuDNN: a GPU array, ``SETTINGS.conv``
    not "im2col", and cuDNN passed its probe.

    Raises
    ------
    RuntimeError
        When "cudnn" was chosen and cuDNN cannot be used (with the reason).
    """
    if not is_gpu_array(x) or SETTINGS.conv == "im2col":
        return False
    from ..kernels import cudnn_fe
    why = cudnn_fe.problem()
    if why is not None and SETTINGS.conv == "cudnn":
        raise RuntimeError("cuDNN was asked for but cannot be used: " + why)
    return why is None


class CudnnConvCache(NamedTuple):
    """What the cuDNN backward needs (2-D and 3-D).

    x : array (N, C, *S)
        The input as cuDNN read it (channels-last; unpadded).
    w : array (F, C, *K)
    y : array (N, F, *S') or None
        The output, kept when an activation is fused.
    slope : float or None
        The activation's negative slope (0 for ReLU), None without one.
    stride, padding : int
    bias : bool
        Whether a bias was given (then db is computed).
    """
    x: object
    w: object
    y: object
    slope: object
    stride: int
    padding: int
    bias: bool


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
    over N and space, or None when ``bias`` is False. For a dense channels-last ``y`` with
    more than one channel (every cuDNN output), both in one pass over memory
    (``kernels.activation``; measured on an H200 in benchmarks/RESULTS.md); otherwise in
    two (``functional.conv.channel_sum``).

    Parameters
    ----------
    dy, y : arrays (N, F, *S), same shape and dtype
    slope : float or None
        The activation's negative slope (0 for ReLU); None: no activation (dz = dy).
    bias : bool

    Returns
    -------
    dz : array (N, F, *S), ``y``'s memory layout when computed here
    db : array (F,), float32 for float16 data, else dz's dtype; or None
    """
    from .conv import channel_sum
    F = dy.shape[1]
    span = channels_last_span(y) if slope is not None and F > 1 and is_gpu_array(y) else None
    if span is not None and span[1] == F:
        from ..kernels.activation import activation_backward_sum_kernel
        xp = get_array_module(y)
        if channels_last_span(dy) is None or dy.strides != y.strides:
            dy = copy_like(dy, y)
        dy1, y1 = channels_last_span(dy)[0], span[0]
        dz = empty_like_memory(y)
        n = y1.size
        G = max(F, min(SUM_THREADS, -(-n // F) * F) // F * F)
        acc = numpy.float32 if dy.dtype == numpy.float16 else dy.dtype
        part = xp.empty(G, acc)
        activation_backward_sum_kernel(dy1, y1, numpy.float64(slope), numpy.int64(n),
                                       numpy.int64(G), channels_last_span(dz)[0], part)
        return dz, (_ones(xp, G // F, acc) @ part.reshape(G // F, F) if bias else None)
    dz = activation_backward(dy, y, slope)
    return dz, (channel_sum(dz) if bias else None)


def conv_forward(x, w, b, stride, padding, slope, keep_cache):
    """Convolution forward through cuDNN: (y, CudnnConvCache or None), or None when cuDNN
    has no plan for this shape (the caller then takes the im2col path).

    Parameters and result as ``functional.conv.conv2d_forward`` (x, w also 3-D); y is
    channels-last. Bias and activation are fused into cuDNN's graph or follow it in one
    pass, whichever ran faster for this shape (``kernels.cudnn_fe.conv_forward``).
    """
    from ..kernels import cudnn_fe
    x = cudnn_fe.operand(x)
    try:
        y = cudnn_fe.conv_forward(x, w, b, stride, padding, slope)
    except cudnn_fe.Unsupported as exc:
        _fell_back(exc)
        return None
    cache = CudnnConvCache(x, w, y if slope is not None else None, slope, stride, padding,
                           b is not None) if keep_cache else None
    return y, cache


def conv_backward(dy, cache, input_grad=True):
    """Convolution backward through cuDNN: (dx, dw, db); db is None without a bias, dx
    None without ``input_grad`` (its dgrad graph is not run: for Topaz's 11 x 11 first
    layer that graph is 3.8 ms of a 12 x 384^2 float16 training step on an H200), and the
    whole result None when cuDNN has no plan (the caller falls back to im2col)."""
    from ..kernels import cudnn_fe
    dz, db = activation_bias_backward(dy, cache.y, cache.slope, cache.bias)
    try:
        dw = cudnn_fe.conv_wgrad(cache.x, dz, cache.w.shape, cache.stride, cache.padding)
        dx = cudnn_fe.conv_dgrad(dz, cache.w, cache.x.shape, cache.stride,
                                 cache.padding) if input_grad else None
    except cudnn_fe.Unsupported as exc:
        _fell_back(exc)
        return None
    return dx, dw, db
