"""2-D convolution (stride 1) on the CPU through FFTs of small tiles: the layers with many
channels or large kernels.

The same pair as :mod:`cupyden.functional.conv_cpu` (which chooses between the two,
``conv_cpu.fft_preferred``), on channels-last memory.

In the Fourier domain a correlation is a product per frequency, and the sum over input
channels becomes one matrix product per frequency (Mathieu, Henaff & LeCun 2014, "Fast
training of convolutional networks through FFTs", ICLR):

    Y^[phi] (T, F) = X^[phi] (T, C) @ conj(W^[phi]) (C, F)        for each frequency phi

over T tiles at once. Tiles (overlap-save; Oppenheim & Schafer, "Discrete-Time Signal
Processing", sec. 8.7.3): the zero-padded input is cut into s x s tiles at a step of
V = s - K + 1 pixels; a tile's circular correlation with the kernel (zero-padded to s x s)
equals the linear one on its first V x V outputs, which are kept:

    y[tV + i, t'V + j] = IFFT(X^_tt' * conj(W^))[i, j] + b,      i, j < V

(the bias is added to the zero frequency, b * s^2). Per output pixel and (C, F) pair:
s (s/2 + 1) / V^2 complex multiply-adds instead of KH * KW real ones (s = 16: 0.74 for
K = 3, 1.0 for K = 5; s = 32, K = 11: 1.1 against 121), plus the FFTs of C input and F
output channels. Cheaper than ``conv_cpu``'s GEMM per tap when C * F * KH * KW is large
(measured in benchmarks/RESULTS.md, "CPU profile").

Backward, with dz = dy * act'(y):

    dW[:, :, kh, kw]^T (C, F) = IFFT(sum_tiles X^^T conj(DZ^))[kh, kw]   (dz tiles zero beyond
                                                                       V x V: no wrap-around)
    dx = the same tiled correlation of dz, padded by K - 1 - P, with the kernel flipped and
         transposed (the gradient of a convolution is a convolution; Dumoulin & Visin 2016,
         arXiv:1603.07285, sec. 4)

Tasks are rows of tiles of one image (:func:`cupyden.backend.cpu_map`); SciPy's FFTs,
NumPy's matmul and copies release the GIL. float32 stays float32 (complex64 spectra).
"""

import numpy
import scipy.fft
from numpy.lib.stride_tricks import as_strided

from ..backend import cpu_empty, cpu_map, cpu_map_rows, get_cpu_threads
from .conv_cpu import _activate_into, _fill, _scratch

#: Spectra elements (complex) of one task's tiles: 16 MiB of complex64.
TASK_ELEMENTS = 2 * 1024 * 1024


def tile_size(KH, KW):
    """The FFT tile side s: 16 for kernels up to 5, 32 above (s - K + 1 outputs kept)."""
    return 16 if max(KH, KW) <= 5 else 32


def _weight_spectra(w, s):
    """conj(FFT(w)) per frequency: w (F, C, KH, KW) -> (s * (s//2 + 1), C, F) complex."""
    F, C, KH, KW = w.shape
    wpad = numpy.zeros((C, F, s, s), w.dtype)
    wpad[:, :, :KH, :KW] = w.transpose(1, 0, 2, 3)
    spec = numpy.conj(scipy.fft.rfft2(wpad))                  # (C, F, s, s//2 + 1)
    return numpy.ascontiguousarray(spec.reshape(C, F, -1).transpose(2, 0, 1))


def _tiles_of(slab, t, tw, s, Vh, Vw):
    """The (t, tw, s, s, C) overlapping tiles of a slab (rows, cols, C), steps Vh, Vw."""
    r, c, ch = slab.strides
    return as_strided(slab, (t, tw, s, s, slab.shape[2]), (r * Vh, c * Vw, r, c, ch),
                      writeable=False)


def correlate(xs, w, b, padding, slope):
    """y = act(x * w + b) by tiled FFTs, channels-last; stride 1.

    Parameters
    ----------
    xs : numpy.ndarray (N, H, W, C), any strides
    w : numpy.ndarray (F, C, KH, KW)
    b : numpy.ndarray (F,) or None
    padding : int
    slope : float or None

    Returns
    -------
    ys : numpy.ndarray (N, OH, OW, F), a view into rows padded to whole tiles
    """
    N, H, W, C = xs.shape
    F, _, KH, KW = w.shape
    dtype = xs.dtype
    s = tile_size(KH, KW)
    Vh, Vw, sh = s - KH + 1, s - KW + 1, s // 2 + 1
    OH, OW = H + 2 * padding - KH + 1, W + 2 * padding - KW + 1
    th, tw = -(-OH // Vh), -(-OW // Vw)
    spec = _weight_spectra(w, s)                              # (nf, C, F)
    nf = spec.shape[0]
    ys = cpu_empty((N, th * Vh, tw * Vw, F), dtype)
    rows = max(1, min(th, TASK_ELEMENTS // (tw * nf * max(C, F))))
    T = 4 * get_cpu_threads()
    while rows > 1 and N * -(-th // rows) < T:
        rows = -(-rows // 2)
    tasks = [(n, r0, min(th, r0 + rows)) for n in range(N) for r0 in range(0, th, rows)]

    def task(i, slot):
        n, r0, r1 = tasks[i]
        t = r1 - r0
        slab = _scratch(slot, "fft.slab", (t * Vh + KH - 1, tw * Vw + KW - 1, C), dtype)
        _fill(slab, xs, n, r0 * Vh - padding, -padding, 1)
        xf = scipy.fft.rfft2(_tiles_of(slab, t, tw, s, Vh, Vw), axes=(2, 3))  # (t,tw,s,sh,C)
        yf = _scratch(slot, "fft.y", (t * tw, nf, F), xf.dtype)
        # per frequency: (T, C) @ (C, F), on (nf, T, .) views of the tile-major arrays
        numpy.matmul(xf.reshape(t * tw, nf, C).transpose(1, 0, 2), spec,
                     out=yf.transpose(1, 0, 2))
        if b is not None:
            yf[:, 0] += b * (s * s)                           # the zero frequency: + b
        yt = scipy.fft.irfft2(yf.reshape(t, tw, s, sh, F), s=(s, s), axes=(2, 3))
        dst = ys[n, r0 * Vh:r1 * Vh].reshape(t, Vh, tw, Vw, F)
        _activate_into(dst, yt[:, :, :Vh, :Vw].transpose(0, 2, 1, 3, 4), slope, slot)

    cpu_map(task, len(tasks))
    return ys[:, :OH, :OW]


def weight_gradient(xs, dz, KH, KW, padding):
    """dW (F, C, KH, KW) = sum_{n, i, j} xpad[n, i + kh, j + kw, c] dz[n, i, j, f], by
    tiled FFTs.

    Parameters
    ----------
    xs : numpy.ndarray (N, H, W, C), any strides
    dz : numpy.ndarray (N, th * Vh, tw * Vw, F), zero beyond the OH x OW outputs
    KH, KW, padding : int
    """
    N, H, W, C = xs.shape
    F = dz.shape[3]
    dtype = xs.dtype
    s = tile_size(KH, KW)
    Vh, Vw, sh = s - KH + 1, s - KW + 1, s // 2 + 1
    th, tw = dz.shape[1] // Vh, dz.shape[2] // Vw
    nf = s * sh
    threads = get_cpu_threads()
    cdtype = numpy.result_type(dtype, numpy.complex64)
    acc = numpy.zeros((threads, nf, C, F), cdtype)
    rows = max(1, min(th, TASK_ELEMENTS // (tw * nf * max(C, F))))
    tasks = [(n, r0, min(th, r0 + rows)) for n in range(N) for r0 in range(0, th, rows)]

    def task(i, slot):
        n, r0, r1 = tasks[i]
        t = r1 - r0
        slab = _scratch(slot, "fft.slab", (t * Vh + KH - 1, tw * Vw + KW - 1, C), dtype)
        _fill(slab, xs, n, r0 * Vh - padding, -padding, 1)
        xf = scipy.fft.rfft2(_tiles_of(slab, t, tw, s, Vh, Vw), axes=(2, 3))
        z = _scratch(slot, "fft.z", (t, tw, s, s, F), dtype)
        z[:, :, Vh:] = 0
        z[:, :, :Vh, Vw:] = 0
        z[:, :, :Vh, :Vw] = dz[n, r0 * Vh:r1 * Vh].reshape(t, Vh, tw, Vw, F).transpose(0, 2, 1, 3, 4)
        zf = scipy.fft.rfft2(z, axes=(2, 3))                  # (t, tw, s, sh, F)
        numpy.conjugate(zf, out=zf)
        # per frequency: (C, T) @ (T, F), summed over this task's tiles
        acc[slot] += numpy.matmul(xf.reshape(t * tw, nf, C).transpose(1, 2, 0),
                                  zf.reshape(t * tw, nf, F).transpose(1, 0, 2))

    cpu_map(task, len(tasks))
    g = scipy.fft.irfft2(acc.sum(axis=0).reshape(s, sh, C, F), s=(s, s), axes=(0, 1))
    return numpy.ascontiguousarray(g[:KH, :KW].transpose(3, 2, 0, 1)).astype(dtype, copy=False)


def backward(dy, x, y, w, slope, padding):
    """(dx, dw, db) of :func:`correlate`'s convolution (stride 1); see the module docstring.

    Parameters
    ----------
    dy : numpy.ndarray (N, F, OH, OW), any layout
    x : numpy.ndarray (N, C, H, W), the forward input
    y : numpy.ndarray (N, F, OH, OW) or None, the forward output (with an activation)
    w : numpy.ndarray (F, C, KH, KW)
    slope : float or None
    padding : int

    Returns
    -------
    dx : (N, C, H, W), channels-last memory; dw : (F, C, KH, KW); db : (F,)
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = dy.shape[2:]
    dtype = x.dtype
    s = tile_size(KH, KW)
    Vh, Vw = s - KH + 1, s - KW + 1
    th, tw = -(-OH // Vh), -(-OW // Vw)
    dys = dy.transpose(0, 2, 3, 1)
    ys = None if slope is None else y.transpose(0, 2, 3, 1)
    dz = cpu_empty((N, th * Vh, tw * Vw, F), dtype)         # zero beyond OH x OW
    dz[:, OH:] = 0
    dz[:, :OH, OW:] = 0
    db_acc = numpy.zeros((get_cpu_threads(), F), numpy.float64)

    def band(n, r0, r1, slot):
        g, d = dz[n, r0:r1, :OW], dys[n, r0:r1]
        if slope is None:
            g[...] = d
        else:
            positive = ys[n, r0:r1] > 0
            if slope == 0.0:
                numpy.multiply(d, positive, out=g)
            else:
                numpy.multiply(d, slope, out=g)
                numpy.copyto(g, d, where=positive)
        db_acc[slot] += g.reshape(-1, F).sum(axis=0, dtype=numpy.float64)

    cpu_map_rows(band, N, OH, 3 * OW * F)
    dw = weight_gradient(x.transpose(0, 2, 3, 1), dz, KH, KW, padding)
    w_t = numpy.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))   # (C, F, KH, KW)
    dxs = correlate(dz[:, :OH, :OW], w_t, None, KH - 1 - padding, None)
    return dxs.transpose(0, 3, 1, 2), dw, db_acc.sum(axis=0).astype(dtype)
