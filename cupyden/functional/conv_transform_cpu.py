"""2-D convolution (stride 1) on the CPU in a transform domain, tile by tile: FFTs for
large kernels, Winograd's minimal filtering for 3 x 3 kernels with many channels.

The same pair as :mod:`cupyden.functional.conv_cpu`, which chooses per layer
(``conv_cpu.transform_for``), on channels-last memory.

Both transforms turn a tile's correlation with the kernel into a product per transform
point, and the sum over input channels into one matrix product per point (Mathieu, Henaff
& LeCun 2014, "Fast training of convolutional networks through FFTs", ICLR; Lavin & Gray
2016, "Fast algorithms for convolutional neural networks", CVPR):

    Y[p] (T, F) = X[p] (T, C) @ U[p] (C, F)               for each point p, over T tiles

The zero-padded input is cut into s x s tiles at a step of V = s - K + 1 pixels (overlap-
save); each tile gives V x V outputs:

- FFT (any K; s = 16 for K <= 5, else 32): X = FFT2(tile), U = conj(FFT2(kernel padded to
  s x s)), outputs = the first V x V of IFFT2(Y) (the circular correlation equals the
  linear one there), the bias added to the zero frequency (b * s^2). Points: s (s/2 + 1),
  complex.
- Winograd F(4 x 4, 3 x 3) (K = 3, s = 6, V = 4, 36 real points): X = B^T d B, U = G g G^T,
  outputs = A^T Y A, with Lavin & Gray's B, G, A. Each transform is one small matrix
  product on point-major data: vec(B^T d B) = (B^T kron B^T) vec(d), and so on. F(4 x 4)
  was 1.3-1.6x faster than F(2 x 2) in every stage of every 3 x 3 layer of the shipped
  networks (one core, 2026-11-30); its float32 results differ from float64 by 1.5-4e-6
  (relative norm, 32 -> 32 to 384 -> 128) against 2-6e-7 for F(2 x 2).

Per output pixel and (C, F) pair, points / V^2 multiply-adds instead of K^2: Winograd
2.25 (4 for F(2 x 2)) against 9; FFT (s = 16) 0.74 complex against 9 (K = 3), 1.0 against
25 (K = 5). The transforms' copies cost per channel, so the gain is in layers with many channels
(measured per layer in benchmarks/RESULTS.md, issue 21).

Backward, with dz = dy * act'(y):

    dx = the same tiled correlation of dz, padded by K - 1 - P, with the kernel flipped and
         transposed (the gradient of a convolution is a convolution; Dumoulin & Visin 2016,
         arXiv:1603.07285, sec. 4)
    dW = the transposed map of the forward formula, summed over tiles:
         FFT:      dW[k] = IFFT2(sum_tiles X^T conj(FFT2(dz tile zero-padded)))[k], k < K
                   (dz is zero beyond V x V: no wrap-around)
         Winograd: dW = G^T (sum_tiles X^T (A dz A^T)) G      (the adjoint of U = G g G^T)

conv_cpu.conv2d_backward computes dz and db, and calls :func:`weight_gradient` and
:func:`correlate` (dx) for the stages that the transforms do faster.

Tasks are rows of tiles of one image (:func:`cupyden.backend.cpu_map`); SciPy's FFTs,
NumPy's matmul and copies release the GIL. float32 stays float32 (complex64 spectra).
"""

import numpy
import scipy.fft
from numpy.lib.stride_tricks import as_strided

from ..backend import (SUM_CHUNKS, cpu_empty, cpu_map, cpu_map_sum, get_cpu_threads,
                       one_blas_thread)
from .conv_cpu import _activate_into, _fill, _scratch

#: Transform-domain elements (points x tiles x channels) of one task: 16 MiB of complex64.
TASK_ELEMENTS = 2 * 1024 * 1024

# Winograd F(4, 3) (Lavin & Gray 2016, sec. 4.2, eq. 9; interpolation points 0, 1, -1,
# 2, -2, infinity): y = A^T [(G g) * (B^T d)] for a 1-D correlation
# y[i] = sum_k d[i + k] g[k], i < 4, k < 3; in 2-D, A^T [(G g G^T) * (B^T d B)] A.
_BT = numpy.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                  numpy.float64)
_G = numpy.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
_AT = numpy.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], numpy.float64)


class Fft:
    """Tiles of s x s by real 2-D FFTs, for a KH x KW kernel."""

    name = "fft"

    def __init__(self, KH, KW, dtype):
        s = self.s = 16 if max(KH, KW) <= 5 else 32
        self.KH, self.KW, self.Vh, self.Vw = KH, KW, s - KH + 1, s - KW + 1
        self.points = s * (s // 2 + 1)
        self.dtype = numpy.dtype(dtype)
        self.pdtype = numpy.result_type(dtype, numpy.complex64)

    def kernel(self, w):
        """w (F, C, KH, KW) -> U (points, C, F): conj(FFT2(w)) (a correlation)."""
        F, C = w.shape[:2]
        wpad = numpy.zeros((C, F, self.s, self.s), self.dtype)
        wpad[:, :, :self.KH, :self.KW] = w.transpose(1, 0, 2, 3)
        u = numpy.conj(scipy.fft.rfft2(wpad))                  # (C, F, s, s//2 + 1)
        return numpy.ascontiguousarray(u.reshape(C, F, -1).transpose(2, 0, 1))

    def tiles(self, d, slot):
        """d (t, tw, s, s, C) tiles -> X, a (points, T, C) view."""
        t, tw, _, _, C = d.shape
        x = scipy.fft.rfft2(d, axes=(2, 3))                    # (t, tw, s, s//2 + 1, C)
        return x.reshape(t * tw, self.points, C).transpose(1, 0, 2)

    def product(self, T, F, slot):
        """A (points, T, F) view of a scratch buffer for Y."""
        return _scratch(slot, "tr.y", (T, self.points, F), self.pdtype).transpose(1, 0, 2)

    def outputs(self, y, b, t, tw):
        """Y (points, T, F) -> the outputs (t, tw, Vh, Vw, F) (+ b), a view."""
        F = y.shape[2]
        if b is not None:
            y[0] += b * (self.s * self.s)                      # the zero frequency: + b
        s = self.s
        phys = y.transpose(1, 0, 2).reshape(t, tw, s, s // 2 + 1, F)
        out = scipy.fft.irfft2(phys, s=(s, s), axes=(2, 3))
        return out[:, :, :self.Vh, :self.Vw]

    def gradient_tiles(self, dz, slot):
        """dz tiles (t, tw, Vh, Vw, F) -> conj(FFT2(dz zero-padded to s x s)), (points, T, F)."""
        t, tw, _, _, F = dz.shape
        z = _scratch(slot, "tr.z", (t, tw, self.s, self.s, F), self.dtype)
        z[:, :, self.Vh:] = 0
        z[:, :, :self.Vh, self.Vw:] = 0
        z[:, :, :self.Vh, :self.Vw] = dz
        zf = scipy.fft.rfft2(z, axes=(2, 3))
        numpy.conjugate(zf, out=zf)
        return zf.reshape(t * tw, self.points, F).transpose(1, 0, 2)

    def kernel_gradient(self, g):
        """sum of X^T Z per point (points, C, F) -> dW (F, C, KH, KW)."""
        s = self.s
        C, F = g.shape[1:]
        k = scipy.fft.irfft2(g.reshape(s, s // 2 + 1, C, F), s=(s, s), axes=(0, 1))
        return k[:self.KH, :self.KW].transpose(3, 2, 0, 1)


class Winograd:
    """Winograd F(4 x 4, 3 x 3): tiles of s = 6 pixels a side, m x m = 4 x 4 outputs,
    s^2 = 36 real points."""

    name = "winograd"
    s, KH, KW, Vh, Vw, points = 6, 3, 3, 4, 4, 36

    def __init__(self, KH, KW, dtype):
        self.dtype = self.pdtype = numpy.dtype(dtype)
        cast = [m.astype(dtype) for m in (numpy.kron(_BT, _BT), numpy.kron(_G, _G),
                                          numpy.kron(_AT, _AT), numpy.kron(_AT.T, _AT.T),
                                          numpy.kron(_G.T, _G.T))]
        self.bt2, self.g2, self.at2, self.a2, self.gt2 = cast   # (s^2, s^2) (s^2, 9) ...

    def kernel(self, w):
        """w (F, C, 3, 3) -> U (s^2, C, F) = (G kron G) vec(g)."""
        F, C = w.shape[:2]
        return (self.g2 @ w.transpose(2, 3, 1, 0).reshape(9, C * F)).reshape(-1, C, F)

    def tiles(self, d, slot):
        """d (t, tw, s, s, C) tiles -> X (s^2, T, C) = (B^T kron B^T) vec(d)."""
        t, tw, s, _, C = d.shape
        g = _scratch(slot, "tr.d", (s, s, t, tw, C), self.dtype)
        g[...] = d.transpose(2, 3, 0, 1, 4)                     # point-major gather
        x = _scratch(slot, "tr.x", (s * s, t * tw, C), self.dtype)
        numpy.matmul(self.bt2, g.reshape(s * s, -1), out=x.reshape(s * s, -1))
        return x

    def product(self, T, F, slot):
        return _scratch(slot, "tr.y", (self.points, T, F), self.dtype)

    def outputs(self, y, b, t, tw):
        """Y (s^2, T, F) -> A^T Y A, the outputs (t, tw, m, m, F) (+ b), a view."""
        F, m = y.shape[2], self.Vh
        out = self.at2 @ y.reshape(self.points, -1)            # (m^2, T * F)
        if b is not None:
            out.reshape(m * m, -1, F)[...] += b
        return out.reshape(m, m, t, tw, F).transpose(2, 3, 0, 1, 4)

    def gradient_tiles(self, dz, slot):
        """dz tiles (t, tw, m, m, F) -> Z (s^2, T, F) = (A kron A) vec(dz)."""
        t, tw, m, _, F = dz.shape
        g = _scratch(slot, "tr.dz", (m, m, t, tw, F), self.dtype)
        g[...] = dz.transpose(2, 3, 0, 1, 4)
        return (self.a2 @ g.reshape(m * m, -1)).reshape(self.points, t * tw, F)

    def kernel_gradient(self, g):
        """sum of X^T Z per point (s^2, C, F) -> dW (F, C, 3, 3) = (G^T kron G^T) vec(.)."""
        C, F = g.shape[1:]
        return (self.gt2 @ g.reshape(self.points, C * F)).reshape(3, 3, C, F).transpose(3, 2, 0, 1)


TRANSFORMS = {"fft": Fft, "winograd": Winograd}


def _input_tiles(tr, xs, n, r0, r1, tw, padding, slot):
    """Tile rows [r0, r1) of image n of the zero-padded input, transformed: X, a
    (points, T, C) array or view.

    The rows they read are copied into a slab, whose (t, tw, s, s, C) overlapping tiles (at
    steps Vh, Vw) are a strided view of it.
    """
    t, C = r1 - r0, xs.shape[3]
    shape = (t * tr.Vh + tr.KH - 1, tw * tr.Vw + tr.KW - 1, C)
    slab = _scratch(slot, "tr.slab", shape, xs.dtype)
    _fill(slab, xs, n, r0 * tr.Vh - padding, -padding, 1)
    r, c, ch = slab.strides
    tiles = as_strided(slab, (t, tw, tr.s, tr.s, C), (r * tr.Vh, c * tr.Vw, r, c, ch),
                       writeable=False)
    return tr.tiles(tiles, slot)


def _tasks(N, th, tw, points, channels, spread):
    """(n, r0, r1): rows of tiles of one image, about TASK_ELEMENTS transform elements each
    (and, with ``spread``, at least four tasks per thread when the images allow)."""
    rows = max(1, min(th, TASK_ELEMENTS // (tw * points * channels)))
    if spread:
        while rows > 1 and N * -(-th // rows) < 4 * get_cpu_threads():
            rows = -(-rows // 2)
    return [(n, r0, min(th, r0 + rows)) for n in range(N) for r0 in range(0, th, rows)]


def correlate(xs, w, b, padding, slope, method):
    """y = act(x correlated with w + b), stride 1, tile by tile in a transform domain.

    Parameters
    ----------
    xs : numpy.ndarray (N, H, W, C), any strides
    w : numpy.ndarray (F, C, KH, KW)
    b : numpy.ndarray (F,) or None
    padding : int
    slope : float or None
    method : str
        "fft" or "winograd" (3 x 3 only).

    Returns
    -------
    ys : numpy.ndarray (N, OH, OW, F), a view into rows padded to whole tiles
    """
    N, H, W, C = xs.shape
    F, _, KH, KW = w.shape
    dtype = xs.dtype
    tr = TRANSFORMS[method](KH, KW, dtype)
    Vh, Vw = tr.Vh, tr.Vw
    OH, OW = H + 2 * padding - KH + 1, W + 2 * padding - KW + 1
    th, tw = -(-OH // Vh), -(-OW // Vw)
    with one_blas_thread():
        u = tr.kernel(w)                                       # (points, C, F)
    ys = cpu_empty((N, th * Vh, tw * Vw, F), dtype)
    tasks = _tasks(N, th, tw, tr.points, max(C, F), True)

    def task(i, slot):
        n, r0, r1 = tasks[i]
        t = r1 - r0
        x = _input_tiles(tr, xs, n, r0, r1, tw, padding, slot)         # (points, T, C)
        y = tr.product(t * tw, F, slot)
        numpy.matmul(x, u, out=y)                                       # per point
        out = tr.outputs(y, b, t, tw)                                   # (t, tw, Vh, Vw, F)
        dst = ys[n, r0 * Vh:r1 * Vh].reshape(t, Vh, tw, Vw, F)
        _activate_into(dst, out.transpose(0, 2, 1, 3, 4), slope, slot)

    cpu_map(task, len(tasks))
    return ys[:, :OH, :OW]


def weight_gradient(xs, dz, KH, KW, padding, method):
    """dW (F, C, KH, KW) = sum_{n, i, j} xpad[n, i + kh, j + kw, c] dz[n, i, j, f], tile
    by tile in the transform domain.

    Parameters
    ----------
    xs : numpy.ndarray (N, H, W, C), any strides
    dz : numpy.ndarray (N, th * Vh, tw * Vw, F), zero beyond the OH x OW outputs
    KH, KW, padding : int
    method : str
    """
    N, H, W, C = xs.shape
    F = dz.shape[3]
    dtype = xs.dtype
    tr = TRANSFORMS[method](KH, KW, dtype)
    Vh, Vw = tr.Vh, tr.Vw
    th, tw = dz.shape[1] // Vh, dz.shape[2] // Vw
    acc = numpy.zeros((SUM_CHUNKS, tr.points, C, F), tr.pdtype)
    tasks = _tasks(N, th, tw, tr.points, max(C, F), False)

    def task(i, slot, part):
        n, r0, r1 = tasks[i]
        t = r1 - r0
        x = _input_tiles(tr, xs, n, r0, r1, tw, padding, slot)         # (points, T, C)
        z = tr.gradient_tiles(dz[n, r0 * Vh:r1 * Vh].reshape(t, Vh, tw, Vw, F)
                              .transpose(0, 2, 1, 3, 4), slot)          # (points, T, F)
        part += numpy.matmul(x.transpose(0, 2, 1), z)                  # (points, C, F)

    total = cpu_map_sum(task, len(tasks), acc)                          # same bits every run
    with one_blas_thread():
        dw = tr.kernel_gradient(total)
    return numpy.ascontiguousarray(dw).astype(dtype, copy=False)
