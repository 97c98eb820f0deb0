"""Nearest upsampling x2, concatenation of a skip, and a KxK convolution, computed as one
convolution at the coarse resolution (the "phase convolution" of a U-Net's top decoder).

Shapes: h (N, Ch, H, W) the coarse features, skip (N, Cs, 2H, 2W), w (F, Ch + Cs, K, K),
b (F,), K odd, zero padding r = K // 2 (a "same" convolution), y (N, F, 2H, 2W):

    u = [upsample_x2(h), skip]                      (N, Ch + Cs, 2H, 2W)
    y = act(conv_K(u, w) + b)

Output pixel 2i + p (p in {0, 1}, one axis shown; the other is alike) reads u at
2i + p + d - r, d in [0, K). The upsampled channels there hold h[i + floor((p + d - r) / 2)]
and the skip holds its phase q = (p + d - r) mod 2 at coarse index
i + floor((p + d - r) / 2). So each of the four output phases (py, px) is a convolution at
the coarse resolution of

    z = [h, space_to_depth(skip)]                   (N, Ch + 4 Cs, H, W)

with taps t in [0, KP), KP = 2 ceil(r / 2) + 1, R = (KP - 1) / 2, and

    P[p, t, q, d] = 1  iff  d - r = 2 (t - R) + q - p          (0/1, shape (2, KP, 2, K))
    v[(py, px, f), c, ty, tx]
        = sum_{qy, qx, dy, dx} P[py, ty, qy, dy] P[px, tx, qx, dx] w[f, c, dy, dx]
    v[(py, px, f), Ch + (qy, qx, c), ty, tx]
        = sum_{dy, dx} P[py, ty, qy, dy] P[px, tx, qx, dx] w[f, Ch + c, dy, dx]
    y = depth_to_space(act(conv_KP(z, v) + [b, b, b, b]))     (zero padding R)

(for the upsampled channels the input phase q does not matter and is summed). This is
exact, borders included: u's row m lies outside [0, 2H) iff floor(m / 2) lies outside
[0, H), so the fine zero padding is the coarse one. The activation commutes with
depth_to_space, a permutation. The equivalence of a resize-convolution with a
convolution at the low resolution followed by a periodic shuffle is the sub-pixel
convolution of Shi et al. 2016 ("Real-Time Single Image and Video Super-Resolution Using
an Efficient Sub-Pixel Convolutional Neural Network", CVPR, sec. 2.2) read backwards, and
Odena, Dumoulin & Olah 2016 ("Deconvolution and Checkerboard Artifacts", Distill) on
resize-convolution. For Topaz's top decoder (K = 5, Ch = 96, Cs = 1, F = 64): KP = 3, and
per coarse pixel 9 x 100 x 256 multiply-adds instead of 4 x 25 x 97 x 64 (0.37x), and the
(N, 97, 2H, 2W) concatenation is never written.

v is linear in w: per (f, c) pair, vec(v) = M vec(w) with the 0/1 matrices of
:func:`phase_matrices`; the weights' gradient is the adjoint dw = M^T dv.

Channel order of the phases, in :func:`space_to_depth` and :func:`depth_to_space` alike
(TensorFlow's ``depth_to_space`` convention): channel (qy * 2 + qx) * C + c of the coarse
array is channel c, phase (qy, qx) of the fine one. Both are permutations, each the other's
inverse and adjoint. Their outputs are channels-last in memory, (N, H, W, C) handed around
as (N, C, H, W) views, the layout of every activation on the cuDNN and CPU paths.

When skip is not exactly twice h's size (Topaz's ``pad=False`` on sides that are not
multiples of 2^depth: the upsampling then maps row i to floor(i H / OH)), the op runs
:func:`functional.upsample.upsample_concat_forward` and :func:`functional.conv.conv2d_forward`
one after the other, as before.
"""

import functools
from typing import NamedTuple

import numpy

from ..backend import empty_channels_last, empty_like_memory, get_array_module, in_memory_order
from .activation import activate_, activation_backward
from .conv import conv2d_backward, conv2d_backward_naive, conv2d_forward, conv2d_forward_naive
from .upsample import (upsample_concat_backward, upsample_concat_backward_naive,
                       upsample_concat_forward, upsample_concat_naive)


def _copy_into(dst, src):
    """dst[...] = src, walking dst's memory order (coalesced on a channels-last dst)."""
    (d, s), _ = in_memory_order(dst, src)
    d[...] = s


def space_to_depth(x, out=None):
    """The 2x2 phases of x as channels: out[n, (qy * 2 + qx) * C + c, i, j] =
    x[n, c, 2 i + qy, 2 j + qx].

    Parameters
    ----------
    x : array (N, C, 2H, 2W)
    out : array (N, 4C, H, W) or None
        Written in place when given (e.g. a channel slice of a larger array); else a new
        channels-last array.

    Returns
    -------
    array (N, 4C, H, W), x's dtype
    """
    xp = get_array_module(x)
    N, C, H2, W2 = x.shape
    H, W = H2 // 2, W2 // 2
    if out is None:
        out = empty_channels_last(xp, (N, 4 * C, H, W), x.dtype)
    # one copy per phase: both sides are basic slices, so views whatever out's strides
    # (a reshape of a strided ``out`` may return a copy, and the writes would be lost)
    for qy in range(2):
        for qx in range(2):
            j = qy * 2 + qx
            _copy_into(out[:, j * C:(j + 1) * C], x[:, :, qy::2, qx::2])   # (N, C, H, W)
    return out


def depth_to_space(z):
    """The inverse of :func:`space_to_depth`: y[n, f, 2 i + py, 2 j + px] =
    z[n, (py * 2 + px) * F + f, i, j].

    Parameters
    ----------
    z : array (N, 4F, H, W)

    Returns
    -------
    y : array (N, F, 2H, 2W), z's dtype, channels-last in memory
    """
    xp = get_array_module(z)
    N, F4, H, W = z.shape
    F = F4 // 4
    phys = xp.empty((N, H, 2, W, 2, F), z.dtype)           # memory (N, 2H, 2W, F)
    src = z.reshape(N, 2, 2, F, H, W).transpose(0, 4, 1, 5, 2, 3)   # (N, H, py, W, px, F)
    _copy_into(phys, src)
    return xp.moveaxis(phys.reshape(N, 2 * H, 2 * W, F), 3, 1)


def phase_concat(h, skip):
    """z = [h, space_to_depth(skip)]: the coarse convolution's input, in one new
    channels-last array.

    Parameters
    ----------
    h : array (N, Ch, H, W)
    skip : array (N, Cs, 2H, 2W), h's dtype

    Returns
    -------
    z : array (N, Ch + 4 Cs, H, W)
    """
    N, Ch, H, W = h.shape
    z = empty_channels_last(get_array_module(h), (N, Ch + 4 * skip.shape[1], H, W), h.dtype)
    _copy_into(z[:, :Ch], h)
    space_to_depth(skip, out=z[:, Ch:])
    return z


def phase_kernel_size(K):
    """Taps KP = 2 ceil(r / 2) + 1 of the coarse convolution for a fine K x K one, r = K // 2."""
    r = K // 2
    return 2 * (-(-r // 2)) + 1


@functools.lru_cache(maxsize=None)
def phase_matrices(K):
    """The 0/1 matrices that map a K x K filter to its phase filters (module docstring).

    Parameters
    ----------
    K : int
        Odd kernel size.

    Returns
    -------
    mh : numpy float64 array (4 KP^2, K^2)
        Rows (py, px, ty, tx), columns (dy, dx): the upsampled channels, input phases summed.
    ms : numpy float64 array (16 KP^2, K^2)
        Rows (py, px, qy, qx, ty, tx): the skip's channels, one row block per input phase.
    """
    r, KP = K // 2, phase_kernel_size(K)
    R = (KP - 1) // 2
    p, t, q, d = numpy.ix_(range(2), range(KP), range(2), range(K))
    P = (d - r == 2 * (t - R) + q - p).astype(numpy.float64)        # (2, KP, 2, K)
    A = P.sum(axis=2)                                                # (2, KP, K), q summed
    mh = numpy.einsum("ayd,bxe->abyxde", A, A).reshape(4 * KP * KP, K * K)
    ms = numpy.einsum("aycd,bxge->abcgyxde", P, P).reshape(16 * KP * KP, K * K)
    return mh, ms


_DEVICE_MATRICES = {}


def _device_matrices(K, xp, dtype):
    """:func:`phase_matrices` in ``dtype`` on the current device, copied there once (every
    forward and backward pass needs them)."""
    key = (K, numpy.dtype(dtype).str, None if xp is numpy else xp.cuda.Device().id)
    if key not in _DEVICE_MATRICES:
        _DEVICE_MATRICES[key] = tuple(xp.asarray(m, dtype) for m in phase_matrices(K))
    return _DEVICE_MATRICES[key]


def phase_weights(w, Ch):
    """The coarse filters v of the phase convolution (module docstring).

    Parameters
    ----------
    w : array (F, Ch + Cs, K, K)
        The fine filters; channels [0, Ch) read the upsampled input, [Ch, Ch + Cs) the skip.
    Ch : int

    Returns
    -------
    v : array (4F, Ch + 4 Cs, KP, KP), w's dtype
        Output channel (py * 2 + px) * F + f; input channels: Ch upsampled, then the skip's
        (qy * 2 + qx) * Cs + c.
    """
    xp = get_array_module(w)
    F, C, K, _ = w.shape
    Cs, KP = C - Ch, phase_kernel_size(K)
    mh, ms = _device_matrices(K, xp, w.dtype)
    vh = w[:, :Ch].reshape(F * Ch, K * K) @ mh.T                   # (F Ch, (py, px, ty, tx))
    vh = vh.reshape(F, Ch, 2, 2, KP, KP).transpose(2, 3, 0, 1, 4, 5)   # (py, px, F, Ch, ty, tx)
    vs = w[:, Ch:].reshape(F * Cs, K * K) @ ms.T             # (F Cs, (py, px, qy, qx, ty, tx))
    vs = vs.reshape(F, Cs, 2, 2, 2, 2, KP, KP).transpose(2, 3, 0, 4, 5, 1, 6, 7)
    return xp.concatenate([vh.reshape(4 * F, Ch, KP, KP),           # (py, px, F, qy, qx, Cs, ..)
                           vs.reshape(4 * F, 4 * Cs, KP, KP)], axis=1)


def phase_weights_backward(dv, w_shape, Ch):
    """The adjoint of :func:`phase_weights`: dw = M^T dv.

    Parameters
    ----------
    dv : array (4F, Ch + 4 Cs, KP, KP)
    w_shape : tuple (F, Ch + Cs, K, K)
    Ch : int

    Returns
    -------
    dw : array (F, Ch + Cs, K, K), dv's dtype
    """
    xp = get_array_module(dv)
    F, C, K, _ = w_shape
    Cs, KP = C - Ch, phase_kernel_size(K)
    mh, ms = _device_matrices(K, xp, dv.dtype)
    dvh = dv[:, :Ch].reshape(2, 2, F, Ch, KP, KP).transpose(2, 3, 0, 1, 4, 5)
    dwh = dvh.reshape(F * Ch, 4 * KP * KP) @ mh                     # (F Ch, K^2)
    dvs = dv[:, Ch:].reshape(2, 2, F, 2, 2, Cs, KP, KP).transpose(2, 5, 0, 1, 3, 4, 6, 7)
    dws = dvs.reshape(F * Cs, 16 * KP * KP) @ ms                    # (F Cs, K^2)
    return xp.concatenate([dwh.reshape(F, Ch, K, K), dws.reshape(F, Cs, K, K)], axis=1)


class UpsampleConcatConv2dCache(NamedTuple):
    """What :func:`upsample_concat_conv2d_backward` needs.

    up : UpsampleConcatCache or None
        The upsampling's cache on the general path (skip not twice h's size); None on the
        phase path.
    conv : cache of ``conv2d_forward``
        Of the coarse phase convolution (input z (N, Ch + 4 Cs, H, W), filters v), or of
        the fine one on the general path.
    w_shape : tuple (F, Ch + Cs, K, K)
    Ch : int
    """
    up: object
    conv: object
    w_shape: tuple
    Ch: int


def upsample_concat_conv2d_forward(h, skip, w, b, slope=None, keep_cache=True):
    """y = act(conv_K([upsample(h, skip's size), skip], w) + b), zero padding K // 2.

    Through the phase convolution (module docstring) when skip is exactly twice h's size,
    else through the two ops in turn.

    Parameters
    ----------
    h : array (N, Ch, H, W), float16, float32 or float64
    skip : array (N, Cs, OH, OW), h's dtype; usually OH = 2H, OW = 2W
    w : array (F, Ch + Cs, K, K), h's dtype, K odd
    b : array (F,) or None
    slope : float or None
        None: no activation; 0.0: ReLU; > 0: LeakyReLU with this negative slope.
    keep_cache : bool
        False for inference (None is returned for the cache).

    Returns
    -------
    y : array (N, F, OH, OW), channels-last in memory on the phase path
    cache : UpsampleConcatConv2dCache or None

    Raises
    ------
    ValueError
        When w's channels are not Ch + Cs.
    """
    xp = get_array_module(h)
    N, Ch, H, W = h.shape
    Cs = skip.shape[1]
    F, C, K, _ = w.shape
    if C != Ch + Cs:
        raise ValueError("upsample_concat_conv2d: inputs have %d + %d channels, filters "
                         "expect %d" % (Ch, Cs, C))
    if tuple(skip.shape[2:]) != (2 * H, 2 * W):
        u, up = upsample_concat_forward(h, skip)
        y, conv = conv2d_forward(u, w, b, 1, K // 2, slope, keep_cache)
        return y, (UpsampleConcatConv2dCache(up, conv, w.shape, Ch) if keep_cache else None)
    z = phase_concat(h, skip)                            # (N, Ch + 4 Cs, H, W)
    v = phase_weights(w, Ch)                             # (4F, Ch + 4 Cs, KP, KP)
    b4 = None if b is None else xp.tile(b, 4)            # channel (py, px, f) gets b[f]
    KP = phase_kernel_size(K)
    yz, conv = conv2d_forward(z, v, b4, 1, (KP - 1) // 2, slope, keep_cache)
    y = depth_to_space(yz)                               # (N, 4F, H, W) -> (N, F, 2H, 2W)
    return y, (UpsampleConcatConv2dCache(None, conv, w.shape, Ch) if keep_cache else None)


def upsample_concat_conv2d_backward(dy, cache, input_grad=True):
    """Gradients of :func:`upsample_concat_conv2d_forward`.

    Parameters
    ----------
    dy : array (N, F, OH, OW)
    cache : UpsampleConcatConv2dCache
    input_grad : bool
        False: the skip's gradient is not needed (the skip is the network's input) and None
        is returned for it.

    Returns
    -------
    dh : array (N, Ch, H, W), in the memory layout of the convolution's input gradient
    dskip : array (N, Cs, OH, OW), or None without ``input_grad``
    dw : array (F, Ch + Cs, K, K)
    db : array (F,) (float32 for float16 data)
    """
    if cache.up is not None:
        du, dw, db = conv2d_backward(dy, cache.conv, True)
        dh, dskip = upsample_concat_backward(du, cache.up)
        return dh, (dskip if input_grad else None), dw, db
    F = cache.w_shape[0]
    # dy's phases as channels: space_to_depth is depth_to_space's inverse and adjoint
    dz, dv, db4 = conv2d_backward(space_to_depth(dy), cache.conv, True)
    dw = phase_weights_backward(dv, cache.w_shape, cache.Ch)
    db = db4.reshape(4, F).sum(axis=0)                  # b[f] feeds the four phases
    dzh = dz[:, :cache.Ch]
    dh = empty_like_memory(dz, dzh.shape)                # dense: the next conv's operand
    _copy_into(dh, dzh)
    dskip = depth_to_space(dz[:, cache.Ch:]) if input_grad else None
    return dh, dskip, dw, db


def upsample_concat_conv2d_naive(h, skip, w, b, slope=None):
    """Loop reference for :func:`upsample_concat_conv2d_forward` (NumPy, small inputs):
    ``upsample_concat_naive`` then ``conv2d_forward_naive`` then the activation.

    Returns
    -------
    y : array (N, F, OH, OW)
    cache : tuple, for :func:`upsample_concat_conv2d_backward_naive`
    """
    u = upsample_concat_naive(h, skip)
    z, conv = conv2d_forward_naive(u, w, b, 1, w.shape[2] // 2)
    y = z.copy()
    activate_(y, slope)
    return y, (h.shape, conv, y, slope)


def upsample_concat_conv2d_backward_naive(dy, cache):
    """Loop reference for :func:`upsample_concat_conv2d_backward`: (dh, dskip, dw, db)."""
    h_shape, conv, y, slope = cache
    du, dw, db = conv2d_backward_naive(activation_backward(dy, y, slope), conv)
    dh, dskip = upsample_concat_backward_naive(du, h_shape)
    return dh, dskip, dw, db
