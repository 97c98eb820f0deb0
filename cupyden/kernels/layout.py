"""The U-Nets' ops between convolutions, on channels-last memory (2-D and 3-D).

cuDNN reads and writes activations channels-last: (N, *S, C) memory behind the (N, C, *S)
view. These kernels keep that layout, so the next convolution reads its input as it is
(``kernels.cudnn_fe.operand`` copies anything else). Each thread handles one element of
its output, indexed in memory order (channel fastest), so neighbouring threads touch
neighbouring addresses. A 2-D array is a 3-D one with D = 1 (and a depth window of 1).

An input may be a channel slice of a larger channels-last buffer (the gradient of a
concatenation): its elements sit at ``flat[pixel * stride + c]`` with a pixel stride
larger than its channel count (``backend.channels_last_span``).

    maxpool forward    y[n, o, c] = max over the window of x;  am = the window index of
                       the first maximum (row-major in the window, as NumPy's argmax)
    maxpool backward   dx[n, p, c] = dy[n, o(p), c] where p is window o's argmax, else 0
    upsample+concat    y[n, o, c] = x[n, src(o), c] for c < Cx, skip[n, o, c - Cx] after;
                       src(o) = floor(o * n_in / n_out) on each axis (PyTorch's 'nearest')
    upsample backward  dx[n, p, c] = sum of dy[n, o, c] over the o with src(o) = p: along an
                       axis, o in [ceil(p n_out / n_in), ceil((p + 1) n_out / n_in))

Loop references: ``functional.pool`` and ``functional.upsample``; the same kernel text is
compiled as C on the CPU by tests/test_layout_kernels.py and compared with them.
"""

import numpy

from .. import backend
from ..backend import channels_last_copy, channels_last_span, empty_channels_last

_DECODE = """
    const long long c = i %% C;
    long long t = i / C;
    const long long %(w)s = t %% %(W)s;
    t /= %(W)s;
    const long long %(h)s = t %% %(H)s;
    t /= %(H)s;
    const long long %(d)s = t %% %(D)s;
    const long long n = t / %(D)s;
"""
#: Thread i's channel c and pixel (n, od, oh, ow) in a dense (N, OD, OH, OW, C) output, or
#: (n, d, h, w) in a (N, D, H, W, C) one
_PIXEL_OUT = _DECODE % {"w": "ow", "h": "oh", "d": "od", "W": "OW", "H": "OH", "D": "OD"}
_PIXEL_IN = _DECODE % {"w": "w", "h": "h", "d": "d", "W": "W", "H": "H", "D": "D"}

#: (inputs, outputs, body) of each kernel, as ``cupy.ElementwiseKernel`` takes them; every
#: array is raw (indexed by the body), the loop index is ``i``.
SOURCES = {
    "maxpool_forward": (
        "raw T x, int64 xs, int64 C, int64 D, int64 H, int64 W, int64 KD, int64 K, "
        "int64 OD, int64 OH, int64 OW",
        "raw T y, raw uint8 am",
        _PIXEL_OUT + """
    const long long p0 = ((n * D + od * KD) * H + oh * K) * W + ow * K;   // window corner
    T best = x[p0 * xs + c];
    int arg = 0;
    for (int k = 1; k < KD * K * K; ++k) {
        const long long a = k / (K * K), b = (k / K) % K, e = k % K;
        const T v = x[(p0 + (a * H + b) * W + e) * xs + c];
        if (v > best) {
            best = v;
            arg = k;
        }
    }
    y[i] = best;
    am[i] = (unsigned char)arg;
"""),
    "maxpool_backward": (
        "raw T dy, int64 dys, raw uint8 am, int64 C, int64 D, int64 H, int64 W, int64 KD, "
        "int64 K, int64 OD, int64 OH, int64 OW",
        "raw T dx",
        _PIXEL_IN + """
    const long long od = d / KD, oh = h / K, ow = w / K;
    T g = (T)0;
    if (od < OD && oh < OH && ow < OW) {
        const long long o = ((n * OD + od) * OH + oh) * OW + ow;
        const long long k = ((d - od * KD) * K + (h - oh * K)) * K + (w - ow * K);
        if ((long long)am[o * C + c] == k) {
            g = dy[o * dys + c];
        }
    }
    dx[i] = g;
"""),
    "upsample_concat": (
        "raw T x, int64 xs, raw T s, int64 ss, int64 Cx, int64 C, int64 D, int64 H, "
        "int64 W, int64 OD, int64 OH, int64 OW",
        "raw T y",
        _PIXEL_OUT + """
    if (c < Cx) {
        const long long p = ((n * D + od * D / OD) * H + oh * H / OH) * W + ow * W / OW;
        y[i] = x[p * xs + c];
    } else {
        y[i] = s[(((n * OD + od) * OH + oh) * OW + ow) * ss + c - Cx];
    }
"""),
    "upsample_backward": (
        "raw T dy, int64 dys, int64 C, int64 D, int64 H, int64 W, int64 OD, int64 OH, "
        "int64 OW",
        "raw T dx",
        _PIXEL_IN + """
    const long long d0 = (d * OD + D - 1) / D, d1 = ((d + 1) * OD + D - 1) / D;
    const long long h0 = (h * OH + H - 1) / H, h1 = ((h + 1) * OH + H - 1) / H;
    const long long w0 = (w * OW + W - 1) / W, w1 = ((w + 1) * OW + W - 1) / W;
    double acc = 0.0;
    for (long long od = d0; od < d1; ++od) {
        for (long long oh = h0; oh < h1; ++oh) {
            for (long long ow = w0; ow < w1; ++ow) {
                acc += (double)dy[(((n * OD + od) * OH + oh) * OW + ow) * dys + c];
            }
        }
    }
    dx[i] = (T)acc;
"""),
}

_KERNELS = {name: backend.elementwise_kernel(*src, "cupyden_" + name)
            for name, src in SOURCES.items()} if backend.gpu_module() is not None else {}


def _i64(*values):
    return [numpy.int64(v) for v in values]


def _dhw(shape):
    """(D, H, W) of the spatial axes (D = 1 for 2-D)."""
    return (1,) + tuple(shape[2:]) if len(shape) == 4 else tuple(shape[2:])


def _span(a):
    """(flat, pixel stride) of ``a``, copied into dense channels-last first if needed."""
    span = channels_last_span(a)
    return span if span is not None else channels_last_span(channels_last_copy(a))


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
    _KERNELS["maxpool_forward"](xf, *_i64(xs, C, D, H, W, KD, K, OD, OH, OW),
                                channels_last_span(y)[0], channels_last_span(am)[0],
                                size=y.size)
    return y, am


def maxpool_backward(dy, am, x_shape, K):
    """dx (x_shape, dense channels-last): dy routed to each window's argmax ``am``."""
    xp = backend.get_array_module(dy)
    dyf, dys = _span(dy)
    N, C = x_shape[:2]
    D, H, W = _dhw(x_shape)
    KD = K if len(x_shape) == 5 else 1
    dx = empty_channels_last(xp, x_shape, dy.dtype)
    _KERNELS["maxpool_backward"](dyf, numpy.int64(dys), channels_last_span(am)[0],
                                 *_i64(C, D, H, W, KD, K, D // KD, H // K, W // K),
                                 channels_last_span(dx)[0], size=dx.size)
    return dx


def upsample_concat(x, skip, size=None):
    """[nearest upsampling of x to the spatial size of ``skip`` (or ``size``), skip] along
    channels, in one dense channels-last array (N, Cx + Cs, *size); skip may be None."""
    xp = backend.get_array_module(x)
    size = tuple(skip.shape[2:]) if skip is not None else tuple(size)
    N, Cx = x.shape[:2]
    xf, xs = _span(x)
    sf, ss = _span(skip) if skip is not None else (xf, 0)
    C = Cx + (skip.shape[1] if skip is not None else 0)
    y = empty_channels_last(xp, (N, C) + size, x.dtype)
    D, H, W = _dhw(x.shape)
    OD, OH, OW = _dhw((N, C) + size)
    _KERNELS["upsample_concat"](xf, numpy.int64(xs), sf, *_i64(ss, Cx, C, D, H, W, OD, OH, OW),
                                channels_last_span(y)[0], size=y.size)
    return y


def upsample_backward(dy, x_shape):
    """dx (x_shape, dense channels-last): the sum of dy over the outputs copied from each
    input pixel; dy (N, Cx, *size) may be a channel slice of a concatenation's gradient."""
    xp = backend.get_array_module(dy)
    dyf, dys = _span(dy)
    N, C = x_shape[:2]
    D, H, W = _dhw(x_shape)
    OD, OH, OW = _dhw(dy.shape)
    dx = empty_channels_last(xp, x_shape, dy.dtype)
    _KERNELS["upsample_backward"](dyf, *_i64(dys, C, D, H, W, OD, OH, OW),
                                  channels_last_span(dx)[0], size=dx.size)
    return dx
