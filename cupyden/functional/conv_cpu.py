"""2-D convolution on the CPU: channels-last tiles, one GEMM per kernel tap.

The same pair as :mod:`cupyden.functional.conv` (formulas and shapes there):
``conv2d_forward(x, w, b, stride, padding, slope, keep_cache) -> (y, cache)`` and
``conv2d_backward(dy, cache) -> (dx, dw, db)``; the readable im2col path and the loop
reference stay in that file, and tests make the three agree.

Layout. Activations are channels-last in memory, (N, H, W, C), handed around as
(N, C, H, W) views (``y.shape`` is NCHW, its strides are NHWC's), as the cuDNN path does on
the GPU. Then a pixel's C channels are contiguous and a band of image rows is one
contiguous (pixels, C) matrix. Inputs of any layout are accepted (others cost a
gathering copy).

Forward, stride 1 (kn2row with accumulation: Anderson, Vasudevan & Gregg 2017, "Low-memory
GEMM-based convolution algorithms for deep neural networks", arXiv:1709.03395). A KH x KW
convolution is the sum of KH * KW 1x1 convolutions of shifted inputs:

    y[i, j, :] = b + sum_{kh, kw} xpad[i + kh, j + kw, :] @ W[kh, kw]      (C,) @ (C, F)

For a tile of R output rows and TC columns, the padded input it reads, rows
[r0, r0 + R + KH) and TC + KW - 1 columns, is copied into a slab (rows, Wq, C) with
Wq = TC + KW - 1. On the slab flattened to (rows * Wq, C) the shift (kh, kw) is the offset
kh * Wq + kw, so the shifted inputs of all R * Wq grid points are one contiguous
(R * Wq, C) matrix and each tap is one GEMM (R * Wq, C) @ (C, F) accumulated into the
tile's output (BLAS beta = 1, the bias written first). Grid columns j >= TC read across a
row's end and are dropped. No column matrix: the input is copied once instead of KH * KW
times (im2col).

Few channels (the first layer, C = 1) make a shallow GEMM (depth C); there the KW taps of a
row are folded into the depth: fold[u, v, kw, :] = slab[u, v + kw, :] (KW copies of the
slab), and KH GEMMs of depth KW * C remain (a row-wise im2col).

Stride S (polyphase decomposition; Vaidyanathan 1993, "Multirate Systems and Filter
Banks", sec. 4.3): with kh = S qh + a, kw = S qw + b and the phase images
ph_ab[u, v] = xpad[S u + a, S v + b],

    xpad[S i + kh, S j + kw] = ph_ab[i + qh, j + qw],

so a stride-S convolution is the sum over the S^2 phases of stride-1 convolutions of each
phase with its taps W[S qh + a, S qw + b]. Stride 1 is the one phase a = b = 0.

Backward, with dz = dy * act'(y) (taken from the output y, as in functional.activation):

    db = sum_{n, i, j} dz[n, i, j, :]
    dW[S qh + a, S qw + b] += slab_ab[off : off + R * Wq]^T @ dz_grid      (C, F) per tap
    dph_ab[u, v] = sum_{qh, qw} dz[u - qh, v - qw] @ W[S qh + a, S qw + b]^T,
    dx[S u + a - P, S v + b - P] = dph_ab[u, v]

with off = qh * Wq + qw and dz_grid the tile's dz on the (R, Wq) grid, zero in the dropped
columns. dph_ab is a stride-1 correlation of the zero-padded dz with the phase's taps
flipped and transposed, computed by the same slab-and-taps code as the forward pass (the
gradient of a convolution is a transposed convolution: Dumoulin & Visin 2016, "A guide to
convolution arithmetic for deep learning", arXiv:1603.07285, sec. 4).

Threads: tiles (bands of rows, split into columns when rows are wide) are tasks of
:func:`cupyden.backend.cpu_map`. Each thread has its own slab, output block and dW
accumulator (summed at the end); the GEMMs (``blas_cpu.gemm``), copies and ufuncs release
the GIL. A tile's slab and output block are sized for a core's L2 cache.

Layers with many channels or large kernels run some stages faster in a transform domain
(Winograd F(4 x 4, 3 x 3) for 3 x 3, FFT for 5 x 5 and up: :mod:`conv_transform_cpu`);
:func:`transform_for` chooses per stage (forward, dW, dx) from measurements, and the cache
is the same.
"""

from typing import NamedTuple

import numpy

from ..backend import SUM_CHUNKS, cpu_empty, cpu_map, cpu_map_rows, cpu_map_sum, get_cpu_threads
from .blas_cpu import gemm
from .conv import output_size

#: Elements of one tile's slab and output block (2 MiB of float32, a core's L2 cache on
#: this project's Xeon). Swept on 2026-11-30 (benchmarks/RESULTS.md, "CPU path against
#: PyTorch CPU"): 0.5 MiB tiles were 1.2-1.8x slower than 2 and 4 MiB ones, which were
#: within noise of each other.
TILE_ELEMENTS = 512 * 1024
#: Output rows of a tile at least (when the image has them): a tile's slab holds KH - 1
#: rows more than its output, copied twice when tiles are few rows high.
TILE_ROWS = 8
#: Fold a row's taps into the GEMM depth when the input has fewer channels than this.
FOLD_BELOW = 16
#: Stride-1 convolutions run in a transform domain (:mod:`conv_transform_cpu`) when that
#: is faster than the GEMM per tap, as measured on this project's Xeon for every layer of
#: the shipped networks (benchmarks/RESULTS.md, issue 21): FFTs for kernels of at
#: least FFT_AREA pixels with C * F >= FFT_CHANNELS (Topaz's 5 x 5 layers: 1.4-1.9x), and
#: in the backward pass also for kernels of FFT_AREA_WIDE with C * F >= FFT_CHANNELS_WIDE
#: (Topaz's 11 x 11 first layer, whose dx by taps is a GEMV per tap); Winograd's
#: F(4 x 4, 3 x 3) for 3 x 3 kernels with C * F >= WINOGRAD_CHANNELS[stage], measured
#: against the taps per layer and stage on 16 x 128^2 batches (one core, 2026-11-30):
#: dW 1.1x at 32 -> 32 and 1.1-1.4x above (the taps' dW is a long-reduction GEMM that
#: OpenBLAS runs at 50-80 GFLOP/s); dx 1.0x at 32 -> 32 and 32 -> 64, 1.1-1.5x from
#: 48 -> 48 up; forward within noise of the taps below 64 -> 64, 1.2-1.5x from 192 -> 64.
FFT_AREA = 25
FFT_CHANNELS = 1024
FFT_AREA_WIDE = 121
FFT_CHANNELS_WIDE = 32
WINOGRAD_CHANNELS = {"forward": 4096, "wgrad": 1024, "dgrad": 2304}


def transform_for(C, F, KH, KW, stride, padding, stage="forward"):
    """The algorithm expected to be fastest for one stage of a layer: "winograd", "fft",
    or None (the GEMM per tap).

    Parameters
    ----------
    C, F, KH, KW, stride, padding : int
        The layer.
    stage : str
        "forward", "wgrad" (dW) or "dgrad" (dx).
    """
    if stride != 1 or padding > min(KH, KW) - 1:
        return None
    if KH == KW == 3:
        return "winograd" if C * F >= WINOGRAD_CHANNELS[stage] else None
    if KH * KW >= FFT_AREA and (C * F >= FFT_CHANNELS or (
            stage != "forward" and KH * KW >= FFT_AREA_WIDE and C * F >= FFT_CHANNELS_WIDE)):
        return "fft"
    return None


class Conv2dCpuCache(NamedTuple):
    """What :func:`conv2d_backward` needs.

    x : array (N, C, H, W)
        The input (not padded, any memory layout; a reference, not a copy).
    w : array (F, C, KH, KW)
    y : array (N, F, OH, OW) or None
        The output, kept only when an activation is fused.
    slope : float or None
        The fused activation's negative slope (0 for ReLU), or None.
    stride, padding : int

    The backward pass chooses its algorithms (:func:`transform_for`) on its own: all need
    only these.
    """
    x: object
    w: object
    y: object
    slope: object
    stride: int
    padding: int


_SCRATCH = {}


def _scratch(slot, name, shape, dtype):
    """A per-thread buffer of ``shape``, reused across calls (no page faults per tile)."""
    size = int(numpy.prod(shape))
    key = (slot, name, numpy.dtype(dtype).str)
    buf = _SCRATCH.get(key)
    if buf is None or buf.size < size:
        buf = _SCRATCH[key] = numpy.empty(size, dtype)
    return buf[:size].reshape(shape)


def _fold_buffer(slot, fold, R, I, Wt, J, Cin, dtype):
    """The folded slab's buffer (R + I - 1, Wt, J, Cin), or None when not folding."""
    return _scratch(slot, "fold", (R + I - 1, Wt, J, Cin), dtype) if fold and J > 1 else None


def _inside(start, step, count, size):
    """[k0, k1): the k in [0, count) with 0 <= start + step * k < size."""
    k0 = max(0, -(start // step))
    k1 = min(count, (size - 1 - start) // step + 1)
    return k0, max(k0, k1)


def _fill(slab, src, n, h0, w0, step):
    """slab[i, j] = src[n, h0 + step * i, w0 + step * j] inside src, zero outside.

    slab : array (rows, cols, C), written; src : array (N, H, W, C), any strides.
    """
    rows, cols = slab.shape[:2]
    H, W = src.shape[1:3]
    i0, i1 = _inside(h0, step, rows, H)
    j0, j1 = _inside(w0, step, cols, W)
    if i0 == i1 or j0 == j1:
        slab[...] = 0
        return
    slab[:i0] = 0
    slab[i1:] = 0
    slab[i0:i1, :j0] = 0
    slab[i0:i1, j1:] = 0
    slab[i0:i1, j0:j1] = src[n, h0 + step * i0:h0 + step * (i1 - 1) + 1:step,
                             w0 + step * j0:w0 + step * (j1 - 1) + 1:step]


def _phases(w, S, flip):
    """Each phase's taps as one contiguous array.

    Returns a list of ((a, b), wm): forward (flip False), wm (I, J, C, F) with
    wm[qh, qw] = w[:, :, S qh + a, S qw + b]^T; for dx (flip True), wm (I, J, F, C) with
    wm[i, j] = w[:, :, S (I-1-i) + a, S (J-1-j) + b] (taps flipped: a correlation of dz).
    """
    F, C, KH, KW = w.shape
    out = []
    for a in range(min(S, KH)):
        for b in range(min(S, KW)):
            sub = w[:, :, a::S, b::S]                                  # (F, C, I, J)
            m = sub[:, :, ::-1, ::-1].transpose(2, 3, 0, 1) if flip else sub.transpose(2, 3, 1, 0)
            out.append(((a, b), numpy.ascontiguousarray(m)))
    return out


def _tiles(N, rows, cols, I, J, cin, cout, fold):
    """Output tiles (n, r0, r1, c0, c1) covering N images of rows x cols outputs.

    A tile of R x TC outputs reads a slab of (R + I) x (TC + J - 1) input pixels (its halo
    included). Tiles are whole rows when TILE_ROWS rows of the full width fit in
    TILE_ELEMENTS (slab, folded slab and output block), else TILE_ROWS rows of as many
    columns as fit; then as many rows as fit; and at least four tiles per thread when the
    images allow.
    """
    fold = int(fold)
    per_row = cin + fold * J * cin + cout                  # slab, folded slab, output
    halo = I * cin + fold * (I - 1) * J * cin              # per grid column
    R = min(rows, TILE_ROWS)
    TC = max(1, min(cols, TILE_ELEMENTS // (halo + R * per_row) - (J - 1)))
    if TC == cols:                                         # whole rows: grow R instead
        R = max(R, min(rows, (TILE_ELEMENTS // (cols + J - 1) - halo) // per_row))
    T = 4 * get_cpu_threads()
    while R > 1 and N * -(-rows // R) * -(-cols // TC) < T:
        R = -(-R // 2)
    return [(n, r0, min(rows, r0 + R), c0, min(cols, c0 + TC))
            for n in range(N) for r0 in range(0, rows, R) for c0 in range(0, cols, TC)]


def _correlate(out, slab, wm, fold_buf, overwrite=False):
    """out (M, Cout) += sum_{i, j} slab_flat[i * Wq + j : + M] @ wm[i, j], M = R * Wq
    (``overwrite``: out = that sum; the first GEMM writes instead of adding).

    slab : array (R + I, Wq, Cin), C-contiguous; wm : (I, J, Cin, Cout), C-contiguous;
    fold_buf : None, or a buffer (R + I - 1, Wq, J, Cin) to fold the J taps of a row
    into one GEMM of depth J * Cin.
    """
    M, Cout = out.shape
    I, J, Cin, _ = wm.shape
    Wq = slab.shape[1]
    dtype = out.dtype
    it = dtype.itemsize
    src, wp, op = slab.ctypes.data, wm.ctypes.data, out.ctypes.data
    if fold_buf is not None:
        L = fold_buf.shape[0] * Wq
        flat, fold = slab.reshape(-1, Cin), fold_buf.reshape(L, J, Cin)
        for j in range(J):
            fold[:, j] = flat[j:j + L]                    # fold[p, j] = slab_flat[p + j]
        fp = fold_buf.ctypes.data
        for i in range(I):                                # (M, J*Cin) @ (J*Cin, Cout)
            gemm(dtype, M, Cout, J * Cin, fp + i * Wq * J * Cin * it, J * Cin,
                 wp + i * J * Cin * Cout * it, Cout, op, Cout,
                 beta=0.0 if overwrite and i == 0 else 1.0)
        return
    for i in range(I):
        for j in range(J):                                # (M, Cin) @ (Cin, Cout)
            gemm(dtype, M, Cout, Cin, src + (i * Wq + j) * Cin * it, Cin,
                 wp + (i * J + j) * Cin * Cout * it, Cout, op, Cout,
                 beta=0.0 if overwrite and i == j == 0 else 1.0)


def _correlate_wgrad(acc, slab, gt, h0, slot):
    """acc[i, j] (Cout, Cin) += sum_p g[p] (Cout,) outer slab_flat[p + i * Wq + j] (Cin,).

    The weight gradient of :func:`_correlate`'s taps, transposed, with g the tile's dz on
    the (R, Wq) grid (M = R * Wq points, zero in the dropped columns). Written as
    ``sum_q g[q - off] slab_flat[q]``, the shifted dz rows of a kernel row's J taps are
    stacked into one (J * Cout, Q) matrix (J contiguous copies), and each kernel row is one
    GEMM (J * Cout, Q) @ (Q, Cin) of two untransposed row-major operands, which OpenBLAS
    packs faster than a transposed one (measured, one core, 32 -> 32: 70 GFLOP/s against
    51 for a GEMM slab^T (Cin, M) @ g (M, Cout) per tap).

    Parameters
    ----------
    acc : array (I, J, Cout, Cin), C-contiguous, added into
    slab : array (R + I, Wq, Cin), C-contiguous (the forward pass's slab)
    gt : array (Cout, M + 2 * h0), C-contiguous
        gt[:, h0 + p] = g[p], zero before and after.
    h0 : int
        At least (I - 1) * Wq + J - 1, the largest tap offset.
    slot : int
        The thread's scratch slot.
    """
    Wq = slab.shape[1]
    M = gt.shape[1] - 2 * h0
    dtype = gt.dtype
    it = dtype.itemsize
    I, J, Cout, Cin = acc.shape
    Q = M + (I - 1) * Wq + J - 1                      # slab points that meet the grid
    base = h0 - (I - 1) * Wq - (J - 1)
    L = (I - 1) * Wq + Q
    # stack[j, :, v] = gt[:, base + J - 1 - j + v]; tap (i, j) reads it from column
    # (I - 1 - i) * Wq: gt[:, h0 + q - i * Wq - j] = g[q - off], q in [0, Q)
    stack = _scratch(slot, "stack", (J, Cout, L), dtype)
    for j in range(J):
        stack[j] = gt[:, base + J - 1 - j:base + J - 1 - j + L]
    sp, ap = stack.ctypes.data, acc.ctypes.data
    for i in range(I):                                # (J * Cout, Q) @ (Q, Cin)
        gemm(dtype, J * Cout, Cin, Q, sp + (I - 1 - i) * Wq * it, L, slab.ctypes.data, Cin,
             ap + i * J * Cout * Cin * it, Cin)


def _correlate_wgrad_folded(acc, slab, grid, fold_buf):
    """acc[i] (J * Cin, Cout) += fold[i * Wq : + M]^T @ grid (M, Cout): the weight
    gradient of :func:`_correlate`'s folded taps (few input channels, where a stacked dz
    would make a GEMV of depth Cin); acc is (I, J, Cin, Cout), C-contiguous, and
    fold_buf (R + I - 1, Wq, J, Cin) receives the folded slab."""
    M, Cout = grid.shape
    I, J, Cin, _ = acc.shape
    Wq = slab.shape[1]
    dtype = grid.dtype
    it = dtype.itemsize
    L = fold_buf.shape[0] * Wq
    flat, fold = slab.reshape(-1, Cin), fold_buf.reshape(L, J, Cin)
    for j in range(J):
        fold[:, j] = flat[j:j + L]                        # fold[p, j] = slab_flat[p + j]
    for i in range(I):                                    # (J*Cin, M) @ (M, Cout)
        gemm(dtype, J * Cin, Cout, M, fold_buf.ctypes.data + i * Wq * J * Cin * it, J * Cin,
             grid.ctypes.data, Cout, acc.ctypes.data + i * J * Cin * Cout * it, Cout,
             trans_a=True)


def _activate_into(dst, z, slope, slot):
    """dst = act(z): z for None, max(z, slope * z) for slope <= 1 (ReLU at 0), else
    min(z, slope * z); one or two passes over a tile in cache."""
    if slope is None:
        dst[...] = z
    elif slope == 0.0:
        numpy.maximum(z, 0, out=dst)
    else:
        t = _scratch(slot, "act", z.shape, z.dtype)
        numpy.multiply(z, slope, out=t)
        (numpy.maximum if slope <= 1 else numpy.minimum)(z, t, out=dst)


def _check(x, w, b):
    if x.dtype not in (numpy.float32, numpy.float64):
        raise TypeError("conv_cpu runs float32 and float64, got %s" % x.dtype)
    w = w.astype(x.dtype, copy=False)
    b = None if b is None else b.astype(x.dtype, copy=False)
    return w, b


def conv2d_forward(x, w, b, stride=1, padding=0, slope=None, keep_cache=True):
    """Convolution forward on the CPU, optionally fused with bias and a (Leaky)ReLU.

    Parameters
    ----------
    x : numpy.ndarray (N, C, H, W), float32 or float64, any memory layout
    w : numpy.ndarray (F, C, KH, KW)
    b : numpy.ndarray (F,) or None
    stride : int
    padding : int
        Zero padding on each side, in pixels.
    slope : float or None
        None: no activation; 0.0: ReLU; otherwise LeakyReLU with this negative slope.
    keep_cache : bool
        False for inference (None is returned for the cache).

    Returns
    -------
    y : numpy.ndarray (N, F, OH, OW), dtype of x, channels-last memory
    cache : Conv2dCpuCache or None

    Raises
    ------
    ValueError
        When the channels of x and w differ or the output would be empty.
    """
    N, C, H, W = x.shape
    F, Cw, KH, KW = w.shape
    if Cw != C:
        raise ValueError("conv2d: input has %d channels, filters expect %d" % (C, Cw))
    w, b = _check(x, w, b)
    S, P = stride, padding
    OH, OW = output_size(H, KH, S, P), output_size(W, KW, S, P)
    if OH < 1 or OW < 1:
        raise ValueError("conv2d: a %dx%d kernel does not fit a %dx%d input with padding %d"
                         % (KH, KW, H, W, P))
    dtype = x.dtype
    xs = x.transpose(0, 2, 3, 1)                           # (N, H, W, C) view
    method = transform_for(C, F, KH, KW, S, P, "forward")
    if method is not None:
        from . import conv_transform_cpu
        y = conv_transform_cpu.correlate(xs, w, b, P, slope, method).transpose(0, 3, 1, 2)
        cache = Conv2dCpuCache(x, w, y if slope is not None else None, slope, S, P) \
            if keep_cache else None
        return y, cache
    ys = cpu_empty((N, OH, OW, F), dtype)
    phases = _phases(w, S, flip=False)
    I0, J0 = phases[0][1].shape[:2]                        # the largest phase (a = b = 0)
    fold = C < FOLD_BELOW and J0 > 1
    tiles = _tiles(N, OH, OW, I0, J0, C, F, fold)

    def tile(t, slot):
        n, r0, r1, c0, c1 = tiles[t]
        R, Wt = r1 - r0, c1 - c0 + J0 - 1                  # grid width shared by the phases
        out = _scratch(slot, "out", (R * Wt, F), dtype)   # (grid points, F)
        out[...] = 0 if b is None else b
        for (a, bb), wm in phases:
            I, J = wm.shape[:2]
            slab = _scratch(slot, "slab", (R + I, Wt, C), dtype)
            _fill(slab, xs, n, S * r0 + a - P, S * c0 + bb - P, S)
            fold_buf = _fold_buffer(slot, fold, R, I, Wt, J, C, dtype)
            _correlate(out, slab, wm, fold_buf)
        _activate_into(ys[n, r0:r1, c0:c1], out.reshape(R, Wt, F)[:, :c1 - c0], slope, slot)

    cpu_map(tile, len(tiles))
    y = ys.transpose(0, 3, 1, 2)                           # (N, F, OH, OW) view
    cache = Conv2dCpuCache(x, w, y if slope is not None else None, slope, S, P) \
        if keep_cache else None
    return y, cache


def activation_gradient(dy, y, slope, rows, cols):
    """dz = dy * act'(y) in channels-last memory padded with zeros, and db = sum of dz.

    Parameters
    ----------
    dy : numpy.ndarray (N, F, OH, OW), any layout
    y : numpy.ndarray (N, F, OH, OW) or None
        The forward output (needed when ``slope`` is not None).
    slope : float or None
        The fused activation's negative slope (0: ReLU), None: none (dz = dy).
    rows, cols : int
        At least OH, OW: dz is zero beyond them (whole tiles of a transform).

    Returns
    -------
    dz : numpy.ndarray (N, rows, cols, F)
    db : numpy.ndarray (F,), float64 sums of float32 band sums
    """
    N, F, OH, OW = dy.shape
    dys = dy.transpose(0, 2, 3, 1)
    ys = None if slope is None else y.transpose(0, 2, 3, 1)
    dz = cpu_empty((N, rows, cols, F), dy.dtype)
    dz[:, OH:] = 0
    dz[:, :OH, OW:] = 0
    db_parts = {}                      # (n, r0) -> the band's sum: added in a fixed order

    def band(n, r0, r1, slot):
        g, d = dz[n, r0:r1, :OW], dys[n, r0:r1]
        if slope is None:
            g[...] = d
        elif slope == 0.0:
            numpy.multiply(d, ys[n, r0:r1] > 0, out=g)    # ReLU': 1 where y > 0, else 0
        elif 0.0 < slope <= 1.0:
            # LeakyReLU': max(sign(y), slope) is 1 where y > 0 and slope where y <= 0
            # (sign 0 or -1 there), exactly; a multiply by it is 5x faster than a
            # copyto with a mask (measured: 0.35 against 1.5 ms per 1 MiB band)
            factor = _scratch(slot, "factor", g.shape, g.dtype)
            numpy.sign(ys[n, r0:r1], out=factor)
            numpy.maximum(factor, g.dtype.type(slope), out=factor)
            numpy.multiply(d, factor, out=g)
        else:
            numpy.multiply(d, slope, out=g)                # slope where y <= 0 ...
            numpy.copyto(g, d, where=ys[n, r0:r1] > 0)     # ... and 1 where y > 0
        whole = dz[n, r0:r1].reshape(-1, F)                 # zero columns included
        db_parts[n, r0] = _ones(slot, whole.shape[0], dz.dtype) @ whole  # one GEMV

    cpu_map_rows(band, N, OH, 3 * cols * F)
    db = numpy.zeros(F, numpy.float64)
    for key in sorted(db_parts):
        db += db_parts[key]
    return dz, db.astype(dy.dtype)


def _ones(slot, n, dtype):
    ones = _scratch(slot, "ones", (n,), dtype)
    ones[...] = 1
    return ones


def weight_gradient_taps(xs, dz, w_shape, S, P):
    """dW by a GEMM per tap: over the forward's tiles, slab^T @ dz on the tile's grid.

    Parameters
    ----------
    xs : numpy.ndarray (N, H, W, C), any strides
    dz : numpy.ndarray (N, >= OH, >= OW, F), any strides (only [:OH, :OW] is read)
    w_shape : (F, C, KH, KW)
    S, P : int

    Returns
    -------
    dw : numpy.ndarray (F, C, KH, KW)
    """
    N, H, W, C = xs.shape
    F, _, KH, KW = w_shape
    OH, OW = output_size(H, KH, S, P), output_size(W, KW, S, P)
    dtype = xs.dtype
    shapes = [(len(range(a, KH, S)), len(range(b, KW, S)))
              for a in range(min(S, KH)) for b in range(min(S, KW))]
    I0, J0 = shapes[0]
    fold = C < FOLD_BELOW and J0 > 1
    tiles = _tiles(N, OH, OW, I0, J0, C, F, fold)
    # one flat accumulator row holds every stride phase's block: (I, J, F, C), or
    # (I, J, C, F) when folding
    acc = numpy.zeros((SUM_CHUNKS, sum(I * J for I, J in shapes) * F * C), dtype)

    def _phase(flat_acc, k):
        """The accumulator of stride phase k inside one flat row."""
        start = sum(I * J for I, J in shapes[:k]) * F * C
        I, J = shapes[k]
        block = flat_acc[start:start + I * J * F * C]
        return block.reshape((I, J, C, F) if fold else (I, J, F, C))

    def tile(t, slot, part):
        n, r0, r1, c0, c1 = tiles[t]
        R, TC = r1 - r0, c1 - c0
        Wt = TC + J0 - 1
        M, h0 = R * Wt, (I0 - 1) * Wt + J0 - 1            # grid points, largest offset
        if fold:                                           # dz on the tile's (R, Wt) grid
            gt = None
            grid = _scratch(slot, "grid", (R, Wt, F), dtype)
            grid[:, TC:] = 0
            grid[:, :TC] = dz[n, r0:r1, c0:c1]
        else:                              # the same, transposed, h0 zeros either side
            gt = _scratch(slot, "gridt", (F, M + 2 * h0), dtype)
            gt[:, :h0] = 0
            gt[:, h0 + M:] = 0
            grid = gt[:, h0:h0 + M].reshape(F, R, Wt)
            grid[:, :, TC:] = 0
            grid[:, :, :TC] = dz[n, r0:r1, c0:c1].transpose(2, 0, 1)
        for k, (I, J) in enumerate(shapes):
            a, bb = divmod(k, min(S, KW))
            slab = _scratch(slot, "slab", (R + I, Wt, C), dtype)
            _fill(slab, xs, n, S * r0 + a - P, S * c0 + bb - P, S)
            if fold:
                fold_buf = _scratch(slot, "fold", (R + I - 1, Wt, J, C), dtype)
                _correlate_wgrad_folded(_phase(part, k), slab, grid.reshape(M, F), fold_buf)
            else:
                _correlate_wgrad(_phase(part, k), slab, gt, h0, slot)

    total = cpu_map_sum(tile, len(tiles), acc)          # same bits on every run
    dw = numpy.empty(w_shape, dtype)
    order = (3, 2, 0, 1) if fold else (2, 3, 0, 1)       # the blocks -> (F, C, I, J)
    for k in range(len(shapes)):
        a, bb = divmod(k, min(S, KW))
        dw[:, :, a::S, bb::S] = _phase(total, k).transpose(order)
    return dw


def input_gradient_taps(dz, w, S, P, H, W):
    """dx by a GEMM per tap: each phase of dx is dz (zero-padded) correlated with the
    phase's flipped, transposed taps; rows and columns of dx at step S.

    Parameters
    ----------
    dz : numpy.ndarray (N, OH, OW, F), any strides
    w : numpy.ndarray (F, C, KH, KW)
    S, P : int
    H, W : int
        The input's size.

    Returns
    -------
    dxs : numpy.ndarray (N, H, W, C)
    """
    N, _, _, F = dz.shape
    _, C, KH, KW = w.shape
    dtype = dz.dtype
    dxs = cpu_empty((N, H, W, C), dtype)
    if KH < S or KW < S:                                   # phases of dx without taps
        dxs[...] = 0
    fold = F < FOLD_BELOW
    jobs = []
    for (a, bb), wm in _phases(w, S, flip=True):
        I, J = wm.shape[:2]
        u_lo, u_hi = -((a - P) // S), -((a - P - H) // S)  # S u + a - P in [0, H)
        v_lo, v_hi = -((bb - P) // S), -((bb - P - W) // S)
        u_lo, v_lo = max(0, u_lo), max(0, v_lo)
        if u_hi <= u_lo or v_hi <= v_lo:
            continue
        jobs += [(n, a, bb, wm, u_lo + u0, u_lo + u1, v_lo + v0, v_lo + v1)
                 for n, u0, u1, v0, v1 in _tiles(N, u_hi - u_lo, v_hi - v_lo, I, J, F, C,
                                                 fold and J > 1)]

    def tile(t, slot):
        n, a, bb, wm, u0, u1, v0, v1 = jobs[t]
        I, J = wm.shape[:2]
        R, nv = u1 - u0, v1 - v0
        Wg = nv + J - 1
        slab = _scratch(slot, "slab", (R + I, Wg, F), dtype)
        _fill(slab, dz, n, u0 - I + 1, v0 - J + 1, 1)
        out = _scratch(slot, "out", (R * Wg, C), dtype)
        fold_buf = _fold_buffer(slot, fold, R, I, Wg, J, F, dtype)
        _correlate(out, slab, wm, fold_buf, overwrite=True)
        h0, w0 = S * u0 + a - P, S * v0 + bb - P
        dxs[n, h0:h0 + S * (R - 1) + 1:S, w0:w0 + S * (nv - 1) + 1:S] = \
            out.reshape(R, Wg, C)[:, :nv]

    cpu_map(tile, len(jobs))
    return dxs


def conv2d_backward(dy, cache, input_grad=True):
    """Convolution backward on the CPU.

    Three stages, each by the algorithm measured fastest for the layer
    (:func:`transform_for`): dz = dy * act'(y) and db; dW (GEMM per tap, or Winograd / FFT
    tiles); dx (the same choice, made separately).

    Parameters
    ----------
    dy : numpy.ndarray (N, F, OH, OW), any memory layout
    cache : Conv2dCpuCache
    input_grad : bool
        False skips the dx stage (the network's input needs no gradient).

    Returns
    -------
    dx : numpy.ndarray (N, C, H, W), channels-last memory, or None without ``input_grad``
    dw : numpy.ndarray (F, C, KH, KW)
    db : numpy.ndarray (F,)
        The sum of dz, also when the forward pass had no bias (as in functional.conv).
    """
    from . import conv_transform_cpu as tcpu
    x, w, S, P, slope = cache.x, cache.w, cache.stride, cache.padding, cache.slope
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = dy.shape[2:]
    xs = x.transpose(0, 2, 3, 1)
    by_w = transform_for(C, F, KH, KW, S, P, "wgrad")
    by_x = transform_for(C, F, KH, KW, S, P, "dgrad")
    rows, cols = OH, OW
    if by_w is not None:                                   # whole tiles of its transform
        tr = tcpu.TRANSFORMS[by_w](KH, KW, x.dtype)
        rows, cols = -(-OH // tr.Vh) * tr.Vh, -(-OW // tr.Vw) * tr.Vw
    dz, db = activation_gradient(dy, cache.y, slope, rows, cols)
    if by_w is None:
        dw = weight_gradient_taps(xs, dz, w.shape, S, P)
    else:
        dw = tcpu.weight_gradient(xs, dz, KH, KW, P, by_w)
    if not input_grad:
        return None, dw, db
    dz = dz[:, :OH, :OW]
    if by_x is None:
        dxs = input_gradient_taps(dz, w, S, P, H, W)
    else:
        w_t = numpy.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        dxs = tcpu.correlate(dz, w_t, None, KH - 1 - P, None, by_x)   # (C, F, KH, KW) taps
    return dxs.transpose(0, 3, 1, 2), dw, db
