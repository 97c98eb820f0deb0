"""The U-Nets' ops between convolutions, on channels-last memory (2-D and 3-D).

cuDNN reads and writes activations channels-last: (N, *S, C) memory behind the (N, C, *S)
view. These kernels keep that layout, so the next convolution reads its input as it is
(``kernels.cudnn_fe.operand`` copies anything else). Each pixel of the output is handled
by L neighbouring threads (``lanes``), thread ``lane`` taking channels lane, lane + L, ...,
so neighbouring threads touch neighbouring addresses and the pixel's index arithmetic is
paid once per C / L channels. Indices are 32-bit where the arrays allow it. (The first
version, one thread per element with 64-bit index arithmetic, was bound by its integer
divisions: 15.7 ms to write a 96 x 4096^2 fp16 concatenation on an H200, about 15x its
memory time.) A 2-D array is a 3-D one with D = 1 (and a depth window of 1).

An input may be a channel slice of a larger channels-last buffer (the gradient of a
concatenation): its elements sit at ``flat[pixel * stride + c]`` with a pixel stride
larger than its channel count (``backend.channels_last_span``).

    maxpool forward    y[n, o, c] = max over the window of x;  am = the window index of
                       the first maximum (row-major in the window, as NumPy's argmax)
    maxpool backward   dx[n, p, c] = dy[n, o(p), c] where p is window o's argmax, else 0
    upsample+concat    y[n, o, c] = x[n, src(o), c] for c < Cx, skip[n, o, c - Cx] for
                       c < C, 0 for C <= c < Cy (zero channels for cuDNN, below);
                       src(o) = floor(o * n_in / n_out) on each axis (PyTorch's 'nearest')
    pad channels       upsample+concat with n_out = n_in and no skip: y = [x, 0]
    upsample backward  dx[n, p, c] = sum of dy[n, o, c] over the o with src(o) = p: along an
                       axis, o in [ceil(p n_out / n_in), ceil((p + 1) n_out / n_in))

Loop references: ``functional.pool`` and ``functional.upsample``; the same kernel text is
compiled as C on the CPU by tests/test_layout_kernels.py and compared with them.
"""

import numpy

from .. import backend
from ..backend import channels_last_copy, channels_last_span, empty_channels_last

_DECODE = """
    const U lane = (U)i & (U)(L - 1);
    U t = (U)i >> LS;
    const U %(w)s = t %% (U)%(W)s;
    t /= (U)%(W)s;
    const U %(h)s = t %% (U)%(H)s;
    t /= (U)%(H)s;
    const U %(d)s = t %% (U)%(D)s;
    const U n = t / (U)%(D)s;
"""
#: Thread i's lane and pixel (n, od, oh, ow) in a dense (N, OD, OH, OW, C) output, or
#: (n, d, h, w) in a (N, D, H, W, C) one. Thread i = pixel * L + lane handles the channels
#: lane, lane + L, ... of its pixel (L a power of two, LS = log2 L): the pixel's index
#: arithmetic (integer divisions, the costly part) is done once per C / L channels.
_PIXEL_OUT = _DECODE % {"w": "ow", "h": "oh", "d": "od", "W": "OW", "H": "OH", "D": "OD"}
_PIXEL_IN = _DECODE % {"w": "w", "h": "h", "d": "d", "W": "W", "H": "H", "D": "D"}
_LANES = ", int64 L, int64 LS"

#: The index type U: 32-bit arithmetic where every offset fits (integer division by a
#: runtime value costs several times more in 64 bits on the GPU), else 64-bit.
PREAMBLE = {32: "typedef unsigned int U;\n", 64: "typedef unsigned long long U;\n"}

#: (inputs, outputs, body) of each kernel, as ``cupy.ElementwiseKernel`` takes them; every
#: array is raw (indexed by the body), the loop index is ``i``.
SOURCES = {
    "maxpool_forward": (
        "raw T x, int64 xs, int64 C, int64 D, int64 H, int64 W, int64 KD, int64 K, "
        "int64 OD, int64 OH, int64 OW" + _LANES,
        "raw T y, raw uint8 am",
        _PIXEL_OUT + """
    const U p0 = ((n * (U)D + od * (U)KD) * (U)H + oh * (U)K) * (U)W + ow * (U)K;
    const U o = ((n * (U)OD + od) * (U)OH + oh) * (U)OW + ow;
    for (U c = lane; c < (U)C; c += (U)L) {
        T best = x[p0 * (U)xs + c];
        int arg = 0, k = 0;
        for (U a = 0; a < (U)KD; ++a) {
            for (U b = 0; b < (U)K; ++b) {
                for (U e = 0; e < (U)K; ++e, ++k) {
                    const T v = x[(p0 + (a * (U)H + b) * (U)W + e) * (U)xs + c];
                    if (v > best) {
                        best = v;
                        arg = k;
                    }
                }
            }
        }
        y[o * (U)C + c] = best;
        am[o * (U)C + c] = (unsigned char)arg;
    }
"""),
    "maxpool_backward": (
        "raw T dy, int64 dys, raw uint8 am, int64 C, int64 D, int64 H, int64 W, int64 KD, "
        "int64 K, int64 OD, int64 OH, int64 OW" + _LANES,
        "raw T dx",
        _PIXEL_IN + """
    const U od = d / (U)KD, oh = h / (U)K, ow = w / (U)K;
    const U p = ((n * (U)D + d) * (U)H + h) * (U)W + w;
    const int inside = od < (U)OD && oh < (U)OH && ow < (U)OW;
    const U o = ((n * (U)OD + od) * (U)OH + oh) * (U)OW + ow;
    const int k = (int)(((d - od * (U)KD) * (U)K + (h - oh * (U)K)) * (U)K + (w - ow * (U)K));
    for (U c = lane; c < (U)C; c += (U)L) {
        T g = (T)0;
        if (inside && (int)am[o * (U)C + c] == k) {
            g = dy[o * (U)dys + c];
        }
        dx[p * (U)C + c] = g;
    }
"""),
    "upsample_concat": (
        "raw T x, int64 xs, raw T s, int64 ss, int64 Cx, int64 C, int64 Cy, int64 D, "
        "int64 H, int64 W, int64 OD, int64 OH, int64 OW" + _LANES,
        "raw T y",
        _PIXEL_OUT + """
    const U p = ((n * (U)D + od * (U)D / (U)OD) * (U)H + oh * (U)H / (U)OH) * (U)W
                + ow * (U)W / (U)OW;
    const U o = ((n * (U)OD + od) * (U)OH + oh) * (U)OW + ow;
    for (U c = lane; c < (U)Cy; c += (U)L) {
        y[o * (U)Cy + c] = c < (U)Cx ? x[p * (U)xs + c]
                           : c < (U)C ? s[o * (U)ss + c - (U)Cx] : (T)0;
    }
"""),
    "upsample_backward": (
        "raw T dy, int64 dys, int64 C, int64 D, int64 H, int64 W, int64 OD, int64 OH, "
        "int64 OW" + _LANES,
        "raw T dx",
        _PIXEL_IN + """
    const U d0 = (d * (U)OD + (U)D - 1) / (U)D, d1 = ((d + 1) * (U)OD + (U)D - 1) / (U)D;
    const U h0 = (h * (U)OH + (U)H - 1) / (U)H, h1 = ((h + 1) * (U)OH + (U)H - 1) / (U)H;
    const U w0 = (w * (U)OW + (U)W - 1) / (U)W, w1 = ((w + 1) * (U)OW + (U)W - 1) / (U)W;
    const U p = ((n * (U)D + d) * (U)H + h) * (U)W + w;
    for (U c = lane; c < (U)C; c += (U)L) {
        double acc = 0.0;
        for (U od = d0; od < d1; ++od) {
            for (U oh = h0; oh < h1; ++oh) {
                for (U ow = w0; ow < w1; ++ow) {
                    acc += (double)dy[(((n * (U)OD + od) * (U)OH + oh) * (U)OW + ow) * (U)dys + c];
                }
            }
        }
        dx[p * (U)C + c] = (T)acc;
    }
"""),
}


#: Channels per thread each kernel aims at: more lanes per pixel read and write wider
#: contiguous runs of channels, fewer repeat the pixel's integer divisions (3 in the max
#: pooling's forward pass, 6 in the other kernels).
PER_THREAD = {"maxpool_forward": 1, "maxpool_backward": 4, "upsample_concat": 8,
              "upsample_backward": 8}


def lanes(C, per_thread):
    """(L, log2 L): threads per pixel for C channels, the largest power of two <= 32 with
    ``per_thread * L <= C`` (at least 1)."""
    L = 1
    while L < 32 and per_thread * 2 * L <= C:
        L *= 2
    return L, L.bit_length() - 1


_KERNELS = {(name, bits): backend.elementwise_kernel(*src, "cupyden_%s_%d" % (name, bits),
                                                     preamble=PREAMBLE[bits])
            for name, src in SOURCES.items() for bits in PREAMBLE} \
    if backend.gpu_module() is not None else {}


def _i64(*values):
    return [numpy.int64(v) for v in values]


def _dhw(shape):
    """(D, H, W) of the spatial axes (D = 1 for 2-D)."""
    return (1,) + tuple(shape[2:]) if len(shape) == 4 else tuple(shape[2:])


def _span(a):
    """(flat, pixel stride) of ``a``, copied into dense channels-last first if needed."""
    span = channels_last_span(a)
    return span if span is not None else channels_last_span(channels_last_copy(a))


def _run(name, flats, args, outs, C, pixels):
    """Kernel ``name`` over ``pixels`` x L threads (``lanes``), 32-bit indices when every
    flat array's element count leaves room in 31 bits, else 64-bit."""
    L, LS = lanes(C, PER_THREAD[name])
    bits = 32 if max(int(a.size) for a in flats + outs) < 2 ** 31 - 2 ** 16 else 64
    _KERNELS[name, bits](*args, *_i64(L, LS), *outs, size=pixels * L)


def maxpool_forward(x, K):
    """Max pooling of x (N, C, *S) over K-windows with stride K (trailing pixels dropped).

    Returns
    -------
    y : (N, C, *S // K), dense channels-last, x's dtype
    am : (N, C, *S // K), uint8, dense channels-last: window index of the maximum,
        (a * K + b) * K + e for offsets (a, b, e) along (D, H, W) (a = 0 in 2-D)
    """
    xp = backend.get_array_module(x)
    xf, xs = _span(x)
    N, C = x.shape[:2]
    D, H, W = _dhw(x.shape)
    KD = K if x.ndim == 5 else 1
    OD, OH, OW = D // KD, H // K, W // K
    shape = (N, C) + ((OD,) if x.ndim == 5 else ()) + (OH, OW)
    y = empty_channels_last(xp, shape, x.dtype)
    am = empty_channels_last(xp, shape, numpy.uint8)
    outs = [channels_last_span(y)[0], channels_last_span(am)[0]]
    _run("maxpool_forward", [xf], [xf, *_i64(xs, C, D, H, W, KD, K, OD, OH, OW)], outs, C,
         N * OD * OH * OW)
    return y, am


def maxpool_backward(dy, am, x_shape, K):
    """dx (x_shape, dense channels-last): dy routed to each window's argmax ``am``."""
    xp = backend.get_array_module(dy)
    dyf, dys = _span(dy)
    N, C = x_shape[:2]
    D, H, W = _dhw(x_shape)
    KD = K if len(x_shape) == 5 else 1
    dx = empty_channels_last(xp, x_shape, dy.dtype)
    amf = channels_last_span(am)[0]
    _run("maxpool_backward", [dyf, amf],
         [dyf, numpy.int64(dys), amf, *_i64(C, D, H, W, KD, K, D // KD, H // K, W // K)],
         [channels_last_span(dx)[0]], C, N * D * H * W)
    return dx


def upsample_concat(x, skip, size=None, channels=None):
    """[nearest upsampling of x to the spatial size of ``skip`` (or ``size``), skip] along
    channels, in one dense channels-last array (N, Cx + Cs, *size); skip may be None.
    With ``channels`` > Cx + Cs, zero channels follow up to that count."""
    xp = backend.get_array_module(x)
    size = tuple(skip.shape[2:]) if skip is not None else tuple(size)
    N, Cx = x.shape[:2]
    xf, xs = _span(x)
    sf, ss = _span(skip) if skip is not None else (xf, 0)
    C = Cx + (skip.shape[1] if skip is not None else 0)
    Cy = C if channels is None else int(channels)
    y = empty_channels_last(xp, (N, Cy) + size, x.dtype)
    D, H, W = _dhw(x.shape)
    OD, OH, OW = _dhw((N, C) + size)
    _run("upsample_concat", [xf, sf],
         [xf, numpy.int64(xs), sf, *_i64(ss, Cx, C, Cy, D, H, W, OD, OH, OW)],
         [channels_last_span(y)[0]], Cy, N * OD * OH * OW)
    return y


def pad_channels(a, channels):
    """[a, zeros] along channels: (N, channels, *S) dense channels-last, a's dtype, from a
    (N, C, *S) with C <= channels (any memory layout; one pass over the output)."""
    return upsample_concat(a, None, a.shape[2:], channels)


def upsample_backward(dy, x_shape):
    """dx (x_shape, dense channels-last): the sum of dy over the outputs copied from each
    input pixel; dy (N, Cx, *size) may be a channel slice of a concatenation's gradient."""
    xp = backend.get_array_module(dy)
    dyf, dys = _span(dy)
    N, C = x_shape[:2]
    D, H, W = _dhw(x_shape)
    OD, OH, OW = _dhw(dy.shape)
    dx = empty_channels_last(xp, x_shape, dy.dtype)
    _run("upsample_backward", [dyf], [dyf, *_i64(dys, C, D, H, W, OD, OH, OW)],
         [channels_last_span(dx)[0]], C, N * D * H * W)
    return dx
