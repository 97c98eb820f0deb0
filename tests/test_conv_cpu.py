"""The CPU kernels (conv_cpu, pool_cpu, upsample_cpu, shape_cpu, blas_cpu) against the loop
references (float64) and the readable NumPy paths (float32), in both memory layouts and
with one and two threads."""

import numpy
import pytest

from cupyden import backend
from cupyden.functional import (activation, blas_cpu, conv, conv_cpu, conv_transform_cpu,
                                pool, pool_cpu, shape_cpu, upsample, upsample_cpu)

from conftest import rel


def channels_last(a):
    """The same values as a, in channels-last memory (an NCHW-shaped view)."""
    return numpy.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    old = backend.get_cpu_threads()
    backend.set_cpu_threads(request.param)
    yield request.param
    backend.set_cpu_threads(old)


CASES = [(k, s, hw, c, f) for k in (1, 3, 5, 11) for s in (1, 2)
         for hw, c, f in (((9, 7), 1, 4), ((8, 11), 3, 1), ((12, 13), 20, 5))]


@pytest.mark.parametrize("kernel, stride, hw, C, F", CASES)
def test_conv_cpu_equals_loop_reference(kernel, stride, hw, C, F, threads):
    """float64: forward and backward equal the loop reference (also C < FOLD_BELOW, the
    folded taps, and C >= FOLD_BELOW)."""
    rng = numpy.random.default_rng(kernel * 100 + stride * 10 + C)
    x = rng.standard_normal((2, C) + hw)
    w = rng.standard_normal((F, C, kernel, kernel))
    b = rng.standard_normal(F)
    P = kernel // 2
    y_ref, c_ref = conv.conv2d_forward_naive(x, w, b, stride, P)
    y, c = conv_cpu.conv2d_forward(x, w, b, stride, P)
    assert y.shape == y_ref.shape
    assert rel(y, y_ref) < 1e-12
    dy = rng.standard_normal(y_ref.shape)
    for got, ref in zip(conv_cpu.conv2d_backward(dy, c), conv.conv2d_backward_naive(dy, c_ref)):
        assert got.shape == ref.shape
        assert rel(got, ref) < 1e-12


@pytest.mark.parametrize("padding", [0, 2])
def test_conv_cpu_other_paddings(padding):
    rng = numpy.random.default_rng(padding)
    x = rng.standard_normal((1, 2, 10, 9))
    w = rng.standard_normal((3, 2, 3, 5))
    y_ref, c_ref = conv.conv2d_forward_naive(x, w, None, 2, padding)
    y, c = conv_cpu.conv2d_forward(x, w, None, 2, padding)
    assert rel(y, y_ref) < 1e-12
    dy = rng.standard_normal(y.shape)
    for got, ref in zip(conv_cpu.conv2d_backward(dy, c), conv.conv2d_backward_naive(dy, c_ref)):
        assert rel(got, ref) < 1e-12


@pytest.mark.parametrize("kernel, stride, hw, C, F", CASES[::2])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
def test_conv_cpu_equals_im2col_float32(kernel, stride, hw, C, F, slope, threads):
    """float32, with fused (Leaky)ReLU: equal to functional/conv.py's im2col path (rel <
    1e-5), forward and backward, from an NCHW and from a channels-last input."""
    rng = numpy.random.default_rng(7)
    x = rng.standard_normal((3, C) + hw).astype(numpy.float32)
    w = rng.standard_normal((F, C, kernel, kernel)).astype(numpy.float32)
    b = rng.standard_normal(F).astype(numpy.float32)
    P = kernel // 2
    with conv.cpu_conv("im2col"):
        y_ref, c_ref = conv.conv2d_forward(x, w, b, stride, P, slope)
        dy = rng.standard_normal(y_ref.shape).astype(numpy.float32)
        g_ref = conv.conv2d_backward(dy, c_ref)
    for xin in (x, channels_last(x)):
        y, c = conv.conv2d_forward(xin, w, b, stride, P, slope)     # the dispatcher
        assert isinstance(c, conv_cpu.Conv2dCpuCache)
        assert y.dtype == numpy.float32 and y.strides[1] == 4      # channels-last output
        assert rel(y, y_ref) < 1e-5
        for got, ref in zip(conv.conv2d_backward(channels_last(dy), c), g_ref):
            assert got.dtype == numpy.float32
            assert rel(got, ref) < 1e-5


def force_transform(monkeypatch, method):
    """Every stride-1 convolution that ``method`` can do goes through it."""
    def choose(C, F, KH, KW, stride, padding, stage="forward"):
        fits = stride == 1 and padding <= min(KH, KW) - 1
        return method if fits and (method == "fft" or KH == KW == 3) else None
    monkeypatch.setattr(conv_cpu, "transform_for", choose)


TRANSFORM_CASES = [(m, k, hw, c, f) for m, ks in (("fft", (1, 3, 5, 11)), ("winograd", (3,)))
                   for k in ks for hw, c, f in (((9, 7), 1, 4), ((8, 11), 3, 1),
                                                ((12, 37), 20, 5))]


@pytest.mark.parametrize("method, kernel, hw, C, F", TRANSFORM_CASES)
@pytest.mark.parametrize("padding", ["same", 0])
def test_conv_transform_equals_loop_reference(method, kernel, hw, C, F, padding, monkeypatch,
                                              threads):
    """float64: the tiled FFT and Winograd paths equal the loop reference, forward and
    backward (images not a multiple of the tiles)."""
    force_transform(monkeypatch, method)
    rng = numpy.random.default_rng(kernel + C)
    x = rng.standard_normal((2, C) + hw)
    w = rng.standard_normal((F, C, kernel, kernel))
    b = rng.standard_normal(F)
    P = kernel // 2 if padding == "same" else 0
    if min(hw) + 2 * P < kernel:
        pytest.skip("kernel larger than the padded input")
    y_ref, c_ref = conv.conv2d_forward_naive(x, w, b, 1, P)
    y, c = conv_cpu.conv2d_forward(x, w, b, 1, P)
    assert rel(y, y_ref) < 1e-12
    dy = rng.standard_normal(y_ref.shape)
    for got, ref in zip(conv_cpu.conv2d_backward(dy, c), conv.conv2d_backward_naive(dy, c_ref)):
        assert got.shape == ref.shape
        assert rel(got, ref) < 1e-12


@pytest.mark.parametrize("method, kernel", [("fft", 5), ("winograd", 3)])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
def test_conv_transform_equals_im2col_float32(method, kernel, slope, monkeypatch):
    """float32 with fused (Leaky)ReLU: rel < 1e-5 against im2col, forward and backward."""
    force_transform(monkeypatch, method)
    rng = numpy.random.default_rng(5)
    x = channels_last(rng.standard_normal((2, 9, 21, 18)).astype(numpy.float32))
    w = rng.standard_normal((6, 9, kernel, kernel)).astype(numpy.float32)
    b = rng.standard_normal(6).astype(numpy.float32)
    P = kernel // 2
    with conv.cpu_conv("im2col"):
        y_ref, c_ref = conv.conv2d_forward(x, w, b, 1, P, slope)
        dy = rng.standard_normal(y_ref.shape).astype(numpy.float32)
        g_ref = conv.conv2d_backward(dy, c_ref)
    y, c = conv.conv2d_forward(x, w, b, 1, P, slope)
    assert y.dtype == numpy.float32 and rel(y, y_ref) < 1e-5
    for got, ref in zip(conv.conv2d_backward(dy, c), g_ref):
        assert got.dtype == numpy.float32 and rel(got, ref) < 1e-5


def test_conv_cpu_mixed_stages_equal_loop_reference(monkeypatch, threads):
    """Stages by different algorithms (forward and dx by taps, dW by Winograd)."""
    monkeypatch.setattr(conv_cpu, "transform_for", lambda *a: "winograd" if a[-1] == "wgrad"
                        else None)
    rng = numpy.random.default_rng(11)
    x = rng.standard_normal((2, 3, 7, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    y_ref, c_ref = conv.conv2d_forward_naive(x, w, None, 1, 1)
    y, c = conv_cpu.conv2d_forward(x, w, None, 1, 1)
    assert rel(y, y_ref) < 1e-12
    dy = rng.standard_normal(y.shape)
    for got, ref in zip(conv_cpu.conv2d_backward(dy, c), conv.conv2d_backward_naive(dy, c_ref)):
        assert rel(got, ref) < 1e-12


def test_transform_chosen_as_measured():
    """Taps for small layers, Winograd for 3 x 3 with many channels, FFT for Topaz's
    5 x 5 layers (and the 11 x 11 one's backward pass)."""
    choose = conv_cpu.transform_for
    assert choose(97, 64, 5, 5, 1, 2) == "fft" and choose(64, 32, 5, 5, 1, 2) == "fft"
    assert choose(32, 1, 5, 5, 1, 2) is None
    assert choose(1, 48, 11, 11, 1, 5) is None
    assert choose(1, 48, 11, 11, 1, 5, "dgrad") == "fft"
    assert choose(32, 32, 3, 3, 1, 1, "wgrad") == "winograd"
    assert choose(32, 32, 3, 3, 1, 1, "dgrad") is None
    assert choose(48, 48, 3, 3, 1, 1, "dgrad") == "winograd"
    assert choose(384, 128, 3, 3, 1, 1) == "winograd"
    assert choose(32, 32, 3, 3, 1, 1) is None and choose(1, 32, 3, 3, 1, 1, "wgrad") is None
    assert choose(384, 128, 3, 3, 2, 1) is None and choose(97, 64, 5, 5, 2, 2) is None
    assert conv_transform_cpu.Fft(5, 5, numpy.float32).s == 16
    assert conv_transform_cpu.Fft(11, 11, numpy.float32).s == 32


def test_conv_cpu_tiles_equal_one_tile(monkeypatch):
    """Many small tiles (each thread's slab reused across them) give one tile's result."""
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((2, 4, 23, 17))
    w = rng.standard_normal((6, 4, 3, 3))
    y1, c1 = conv_cpu.conv2d_forward(x, w, None, 1, 1, 0.0)
    g1 = conv_cpu.conv2d_backward(numpy.ones_like(y1), c1)
    monkeypatch.setattr(conv_cpu, "TILE_ELEMENTS", 1)             # one pixel per tile
    monkeypatch.setattr(conv_cpu, "TILE_ROWS", 1)
    assert len(conv_cpu._tiles(2, 23, 17, 3, 3, 4, 6, False)) == 2 * 23 * 17
    y2, c2 = conv_cpu.conv2d_forward(x, w, None, 1, 1, 0.0)
    assert rel(y2, y1) < 1e-14
    for a, b in zip(conv_cpu.conv2d_backward(numpy.ones_like(y2), c2), g1):
        assert rel(a, b) < 1e-13


def test_conv_cpu_inference_keeps_no_cache():
    x = numpy.ones((1, 1, 5, 5), numpy.float32)
    w = numpy.ones((2, 1, 3, 3), numpy.float32)
    y, cache = conv.conv2d_forward(x, w, None, 1, 1, keep_cache=False)
    assert cache is None
    assert y[0, 0, 2, 2] == 9 and y[0, 1, 0, 0] == 4


def test_gemm_accumulates_and_transposes():
    rng = numpy.random.default_rng(0)
    for dtype in (numpy.float32, numpy.float64):
        a = rng.standard_normal((5, 7)).astype(dtype)
        b = rng.standard_normal((7, 3)).astype(dtype)
        c = rng.standard_normal((5, 3)).astype(dtype)
        ref = c + a @ b
        blas_cpu.gemm(dtype, 5, 3, 7, a.ctypes.data, 7, b.ctypes.data, 3, c.ctypes.data, 3)
        assert rel(c, ref) < 1e-6
        at = numpy.ascontiguousarray(a.T)                          # (K, M) read transposed
        blas_cpu.gemm(dtype, 5, 3, 7, at.ctypes.data, 5, b.ctypes.data, 3, c.ctypes.data, 3,
                      beta=0.0, trans_a=True)
        assert rel(c, a @ b) < 1e-6


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 5, 9, 7)])
def test_maxpool_cpu_equals_loop_reference(shape, threads):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal(shape)
    y_ref, c_ref = pool.maxpool2d_forward_naive(x, 2)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = pool.maxpool2d_backward_naive(dy, c_ref)
    for xin in (x, channels_last(x)):
        y, c = pool_cpu.maxpool2d_forward(xin, 2)
        assert numpy.array_equal(y, y_ref)
        assert numpy.array_equal(pool_cpu.maxpool2d_backward(dy, c), dx_ref)


def test_maxpool_cpu_ties_go_to_the_first():
    x = numpy.zeros((1, 2, 2, 2), numpy.float32)                  # one window, all equal
    y, c = pool.maxpool2d_forward(channels_last(x), 2)
    dx = pool.maxpool2d_backward(numpy.ones((1, 2, 1, 1), numpy.float32), c)
    assert dx[0, :, 0, 0].tolist() == [1, 1] and dx.sum() == 2


def test_upsample2x_and_concat_cpu(threads):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 4)).astype(numpy.float32)
    y_ref = x.repeat(2, axis=2).repeat(2, axis=3)
    dy = rng.standard_normal(y_ref.shape).astype(numpy.float32)
    dx_ref = dy.reshape(2, 3, 5, 2, 4, 2).sum(axis=(3, 5))
    for xin in (x, channels_last(x)):
        y, c = upsample.upsample2d_forward(xin, (10, 8))           # the dispatcher
        assert numpy.array_equal(y, y_ref) and y.strides[1] == 4
        assert rel(upsample_cpu.upsample2x_backward(channels_last(dy), c), dx_ref) < 1e-6
    b = rng.standard_normal((2, 2, 5, 4)).astype(numpy.float32)
    cat, ca = shape_cpu.concat_forward(channels_last(x), b)
    assert numpy.array_equal(cat, numpy.concatenate([x, b], axis=1)) and ca == 3


def test_cpu_map_runs_every_task_once_and_reraises(threads):
    seen = numpy.zeros(50, int)

    def task(i, slot):
        assert 0 <= slot < threads
        seen[i] += 1

    backend.cpu_map(task, 50)
    assert seen.tolist() == [1] * 50

    def bad(i, slot):
        if i == 7:
            raise ValueError("task 7")

    with pytest.raises(ValueError, match="task 7"):
        backend.cpu_map(bad, 20)
    backend.cpu_map(task, 50)                                      # the pool still works
    assert seen.tolist() == [2] * 50


@pytest.mark.parametrize("method", [None, "winograd", "fft"])
def test_conv_cpu_gradients_are_the_same_bits_on_every_run(method, monkeypatch):
    """float32 weight and bias gradients do not depend on which thread took which tile:
    the per-tile sums are added in a fixed order (backend.cpu_map_sum). Before, two
    identical training runs ended with different weights (cupyden.train against
    cupyden-train, tests/test_pipeline_train.py). (The tiles themselves depend on the
    number of threads, so 1 and 2 threads may differ in the last bits.)"""
    if method:
        force_transform(monkeypatch, method)
    kernel = 5 if method == "fft" else 3
    rng = numpy.random.default_rng(3)
    x = channels_last(rng.standard_normal((4, 16, 40, 36)).astype(numpy.float32))
    w = rng.standard_normal((16, 16, kernel, kernel)).astype(numpy.float32)
    b = rng.standard_normal(16).astype(numpy.float32)
    old = backend.get_cpu_threads()
    runs = []
    try:
        for n in (2, 2, 2):
            backend.set_cpu_threads(n)
            y, c = conv_cpu.conv2d_forward(x, w, b, 1, kernel // 2, 0.0)
            dy = numpy.random.default_rng(4).standard_normal(y.shape).astype(numpy.float32)
            runs.append(conv_cpu.conv2d_backward(dy, c))
    finally:
        backend.set_cpu_threads(old)
    for other in runs[1:]:
        for got, first in zip(other, runs[0]):
            assert numpy.array_equal(got, first)


@pytest.mark.parametrize("slope", [None, 0.0, 0.1, 1.0, 2.5])
def test_activation_gradient_equals_activation_backward(slope, threads):
    """dz = dy * act'(y) equals functional.activation's reference to the bit (every
    activation path: none, ReLU, LeakyReLU by max(sign(y), slope), and slope > 1), zero
    beyond the output; db is the sum of dz."""
    rng = numpy.random.default_rng(5)
    z = rng.standard_normal((2, 6, 9, 7)).astype(numpy.float32)
    z[0, 0, 0, :3] = 0                                             # y == 0: slope there
    if slope is None:
        y = z
    else:
        y = numpy.maximum(z, slope * z) if slope <= 1 else numpy.minimum(z, slope * z)
    y = channels_last(y)
    dy = rng.standard_normal(y.shape).astype(numpy.float32)
    dz, db = conv_cpu.activation_gradient(dy, y, slope, 11, 8)
    ref = activation.activation_backward(dy, y, slope)
    assert dz.shape == (2, 11, 8, 6)
    assert numpy.array_equal(dz[:, :9, :7], ref.transpose(0, 2, 3, 1))
    assert not dz[:, 9:].any() and not dz[:, :, 7:].any()
    assert rel(db, ref.astype(numpy.float64).sum(axis=(0, 2, 3))) < 1e-6
