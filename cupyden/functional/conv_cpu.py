"""2-D convolution on the CPU: channels-last bands of rows, one GEMM per kernel tap.

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

For a band of R output rows, the padded input rows [r0, r0 + R + KH) are copied into a
slab of width Wq = OW + KW - 1, (rows, Wq, C). On the slab flattened to (rows * Wq, C) the
shift (kh, kw) is the offset kh * Wq + kw, so the shifted inputs of all R * Wq grid points
are one contiguous (R * Wq, C) matrix and each tap is one GEMM (R * Wq, C) @ (C, F)
accumulated into the band's output (BLAS beta = 1, the bias written first). Grid columns
j >= OW read across a row's end and are dropped. No column matrix: the input is copied
once instead of KH * KW times (im2col).

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

with off = qh * Wq + qw and dz_grid the band's dz on the (R, Wq) grid, zero in the dropped
columns. dph_ab is a stride-1 correlation of the zero-padded dz with the phase's taps
flipped and transposed, computed by the same slab-and-taps code as the forward pass (the
gradient of a convolution is a transposed convolution: Dumoulin & Visin 2016, "A guide to
convolution arithmetic for deep learning", arXiv:1603.07285, sec. 4).

Threads: bands are tasks of :func:`cupyden.backend.cpu_map`. Each thread has its own slab,
output block and dW accumulator (summed at the end); the GEMMs (``blas_cpu.gemm``), copies
and ufuncs release the GIL. A band's slab and output block are sized for a core's L2 cache.
"""

from typing import NamedTuple

import numpy

from ..backend import cpu_empty, cpu_map, get_cpu_threads
from .blas_cpu import gemm
from .conv import output_size

#: Elements of one tile's slab and output block (2 MiB of float32, a core's L2 cache on
#: this project's Xeon). Swept on 2026-11-30 (benchmarks/RESULTS.md, "CPU profile"):
#: 0.5 MiB tiles were up to 1.3x slower than 2 and 4 MiB ones, which were within noise.
TILE_ELEMENTS = 512 * 1024
#: Output rows of a tile at least (when the image has them): a tile's slab holds KH - 1
#: rows more than its output, copied twice when tiles are few rows high.
TILE_ROWS = 8
#: Fold a row's taps into the GEMM depth when the input has fewer channels than this.
FOLD_BELOW = 16
#: Stride-1 convolutions run in a transform domain (:mod:`conv_transform_cpu`) when that
#: is faster than the GEMM per tap, as measured on this project's Xeon for every layer of
#: the shipped networks (benchmarks/RESULTS.md, "CPU profile"): FFTs for kernels of at
#: least FFT_AREA pixels with C * F >= FFT_CHANNELS (Topaz's 5 x 5 layers: 1.4-1.9x), and
#: in the backward pass also for kernels of FFT_AREA_WIDE with C * F >= FFT_CHANNELS_WIDE
#: (Topaz's 11 x 11 first layer, whose dx by taps is a GEMV per tap); Winograd's
#: F(2 x 2, 3 x 3) for 3 x 3 kernels with C * F >= WINOGRAD_CHANNELS (1.1-1.5x from
#: 192 -> 64 up; 0.7-1.0x below 96 -> 96).
FFT_AREA = 25
FFT_CHANNELS = 1024
FFT_AREA_WIDE = 121
FFT_CHANNELS_WIDE = 32
WINOGRAD_CHANNELS = 12288


def transform_for(C, F, KH, KW, stride, padding, backward=False):
    """The transform expected to beat the GEMM per tap for this layer's forward (or
    backward) pass: "fft", "winograd" or None (taps)."""
    if stride != 1 or padding > min(KH, KW) - 1:
        return None
    if KH == KW == 3 and C * F >= WINOGRAD_CHANNELS:
        return "winograd"
    if KH * KW >= FFT_AREA and (C * F >= FFT_CHANNELS or (
            backward and KH * KW >= FFT_AREA_WIDE and C * F >= FFT_CHANNELS_WIDE)):
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

    The backward pass chooses its algorithm (:func:`transform_for`) on its own: both need
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
    """A per-thread buffer of ``shape``, reused across calls (no page faults per band)."""
    size = int(numpy.prod(shape))
    key = (slot, name, numpy.dtype(dtype).str)
    buf = _SCRATCH.get(key)
    if buf is None or buf.size < size:
        buf = _SCRATCH[key] = numpy.empty(size, dtype)
    return buf[:size].reshape(shape)


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


def _correlate(out, slab, wm, fold_buf):
    """out (M, Cout) += sum_{i, j} slab_flat[i * Wq + j : + M] @ wm[i, j], M = R * Wq.

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
                 wp + i * J * Cin * Cout * it, Cout, op, Cout)
        return
    for i in range(I):
        for j in range(J):                                # (M, Cin) @ (Cin, Cout)
            gemm(dtype, M, Cout, Cin, src + (i * Wq + j) * Cin * it, Cin,
                 wp + (i * J + j) * Cin * Cout * it, Cout, op, Cout)


def _correlate_wgrad(acc, slab, grid, fold_buf):
    """acc[i, j] (Cin, Cout) += slab_flat[i * Wq + j : + M]^T @ grid (M, Cout).

    The transpose of :func:`_correlate` with the same slab and folding; acc is
    (I, J, Cin, Cout), C-contiguous.
    """
    M, Cout = grid.shape
    I, J, Cin, _ = acc.shape
    Wq = slab.shape[1]
    dtype = grid.dtype
    it = dtype.itemsize
    gp, ap = grid.ctypes.data, acc.ctypes.data
    if fold_buf is not None:
        L = fold_buf.shape[0] * Wq
        flat, fold = slab.reshape(-1, Cin), fold_buf.reshape(L, J, Cin)
        for j in range(J):
            fold[:, j] = flat[j:j + L]
        fp = fold_buf.ctypes.data
        for i in range(I):                                # (J*Cin, M) @ (M, Cout)
            gemm(dtype, J * Cin, Cout, M, fp + i * Wq * J * Cin * it, J * Cin, gp, Cout,
                 ap + i * J * Cin * Cout * it, Cout, trans_a=True)
        return
    src = slab.ctypes.data
    for i in range(I):
        for j in range(J):                                # (Cin, M) @ (M, Cout)
            gemm(dtype, Cin, Cout, M, src + (i * Wq + j) * Cin * it, Cin, gp, Cout,
                 ap + (i * J + j) * Cin * Cout * it, Cout, trans_a=True)


def _activate_into(dst, z, slope, slot):
    """dst = act(z): z for None, max(z, slope * z) for slope <= 1 (ReLU at 0), else
    min(z, slope * z); one or two passes over a band in cache."""
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
    method = transform_for(C, F, KH, KW, S, P)
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
            fold_buf = _scratch(slot, "fold", (R + I - 1, Wt, J, C), dtype) if fold and J > 1 else None
            _correlate(out, slab, wm, fold_buf)
        _activate_into(ys[n, r0:r1, c0:c1], out.reshape(R, Wt, F)[:, :c1 - c0], slope, slot)

    cpu_map(tile, len(tiles))
    y = ys.transpose(0, 3, 1, 2)                           # (N, F, OH, OW) view
    cache = Conv2dCpuCache(x, w, y if slope is not None else None, slope, S, P) \
        if keep_cache else None
    return y, cache


def conv2d_backward(dy, cache):
    """Convolution backward on the CPU.

    Parameters
    ----------
    dy : numpy.ndarray (N, F, OH, OW), any memory layout
    cache : Conv2dCpuCache

    Returns
    -------
    dx : numpy.ndarray (N, C, H, W), channels-last memory
    dw : numpy.ndarray (F, C, KH, KW)
    db : numpy.ndarray (F,)
        The sum of dz, also when the forward pass had no bias (as in functional.conv).
    """
    x, w, S, P, slope = cache.x, cache.w, cache.stride, cache.padding, cache.slope
    method = transform_for(x.shape[1], w.shape[0], w.shape[2], w.shape[3], S, P, True)
    if method is not None:
        from . import conv_transform_cpu
        return conv_transform_cpu.backward(dy, x, cache.y, w, slope, P, method)
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = dy.shape[2:]
    dtype = x.dtype
    T = get_cpu_threads()
    xs, dys = x.transpose(0, 2, 3, 1), dy.transpose(0, 2, 3, 1)
    ys = None if slope is None else cache.y.transpose(0, 2, 3, 1)
    dz = cpu_empty((N, OH, OW, F), dtype)                # dy * act'(y), for dx below

    # pass 1, over the forward's tiles: dz, db and dW
    phases = _phases(w, S, flip=False)
    I0, J0 = phases[0][1].shape[:2]
    fold = C < FOLD_BELOW and J0 > 1
    tiles = _tiles(N, OH, OW, I0, J0, C, F, fold)
    dw_acc = [numpy.zeros((T,) + wm.shape, dtype) for _, wm in phases]   # (T, I, J, C, F)
    db_acc = numpy.zeros((T, F), numpy.float64)

    def wgrad(t, slot):
        n, r0, r1, c0, c1 = tiles[t]
        R, TC = r1 - r0, c1 - c0
        Wt = TC + J0 - 1
        grid = _scratch(slot, "grid", (R, Wt, F), dtype)   # dz on the tile's grid
        grid[:, TC:] = 0
        g, d = grid[:, :TC], dys[n, r0:r1, c0:c1]
        if slope is None:
            g[...] = d
        else:
            positive = ys[n, r0:r1, c0:c1] > 0
            if slope == 0.0:
                numpy.multiply(d, positive, out=g)         # ReLU': 1 where y > 0, else 0
            else:
                numpy.multiply(d, slope, out=g)            # slope where y <= 0 ...
                numpy.copyto(g, d, where=positive)         # ... and 1 where y > 0
        dz[n, r0:r1, c0:c1] = g
        flat = grid.reshape(-1, F)
        db_acc[slot] += flat.sum(axis=0, dtype=numpy.float64)
        for ((a, bb), wm), acc in zip(phases, dw_acc):
            I, J = wm.shape[:2]
            slab = _scratch(slot, "slab", (R + I, Wt, C), dtype)
            _fill(slab, xs, n, S * r0 + a - P, S * c0 + bb - P, S)
            fold_buf = _scratch(slot, "fold", (R + I - 1, Wt, J, C), dtype) if fold and J > 1 else None
            _correlate_wgrad(acc[slot], slab, flat, fold_buf)

    cpu_map(wgrad, len(tiles))
    dw = numpy.empty_like(w)
    for ((a, bb), _), acc in zip(phases, dw_acc):
        dw[:, :, a::S, bb::S] = acc.sum(axis=0).transpose(3, 2, 0, 1)   # (I,J,C,F) -> (F,C,I,J)
    db = db_acc.sum(axis=0).astype(dtype)

    # pass 2, over bands of each phase of dx: dph = dz (zero-padded) correlated with the
    # phase's flipped, transposed taps; rows and columns of dx at step S
    covered = KH >= S and KW >= S                          # every phase of dx has taps
    dxs = cpu_empty((N, H, W, C), dtype)
    if not covered:
        dxs[...] = 0
    dphases = _phases(w, S, flip=True)
    fold = F < FOLD_BELOW
    jobs = []
    for (a, bb), wm in dphases:
        I, J = wm.shape[:2]
        u_lo, u_hi = -((a - P) // S), -((a - P - H) // S)  # S u + a - P in [0, H)
        v_lo, v_hi = -((bb - P) // S), -((bb - P - W) // S)
        u_lo, v_lo = max(0, u_lo), max(0, v_lo)
        if u_hi <= u_lo or v_hi <= v_lo:
            continue
        jobs += [(n, a, bb, wm, u_lo + u0, u_lo + u1, v_lo + v0, v_lo + v1)
                 for n, u0, u1, v0, v1 in _tiles(N, u_hi - u_lo, v_hi - v_lo, I, J, F, C,
                                                 fold and J > 1)]

    def dgrad(t, slot):
        n, a, bb, wm, u0, u1, v0, v1 = jobs[t]
        I, J = wm.shape[:2]
        R, nv = u1 - u0, v1 - v0
        Wg = nv + J - 1
        slab = _scratch(slot, "slab", (R + I, Wg, F), dtype)
        _fill(slab, dz, n, u0 - I + 1, v0 - J + 1, 1)
        out = _scratch(slot, "out", (R * Wg, C), dtype)
        out[...] = 0
        fold_buf = _scratch(slot, "fold", (R + I - 1, Wg, J, F), dtype) if fold and J > 1 else None
        _correlate(out, slab, wm, fold_buf)
        h0, w0 = S * u0 + a - P, S * v0 + bb - P
        dxs[n, h0:h0 + S * (R - 1) + 1:S, w0:w0 + S * (nv - 1) + 1:S] = \
            out.reshape(R, Wg, C)[:, :nv]

    cpu_map(dgrad, len(jobs))
    return dxs.transpose(0, 3, 1, 2), dw, db
