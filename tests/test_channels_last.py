"""The U-Nets' ops between convolutions keep channels-last memory (GPU) and equal their
loop references and their NumPy versions (issue 15)."""

import numpy
import pytest

from cupyden import backend
from cupyden.functional import pool, shape, upsample, volume
from cupyden.models import build_model

from conftest import rel


def channels_last(xp, a):
    """a (N, C, *S) as a channels-last array of xp."""
    phys = xp.asarray(numpy.ascontiguousarray(numpy.moveaxis(a, 1, -1)))
    return xp.moveaxis(phys, -1, 1)


def is_channels_last(a):
    span = backend.channels_last_span(a)
    return span is not None and span[1] == a.shape[1]


@pytest.mark.parametrize("x_shape,size", [((2, 3, 3, 4), (6, 8)), ((1, 2, 3, 4), (7, 9)),
                                          ((2, 2, 2, 3, 2), (5, 7, 4))])
def test_upsample_concat_equals_loop_reference(xp, x_shape, size):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal(x_shape)
    skip = rng.standard_normal((x_shape[0], 4) + size)
    y, cache = upsample.upsample_concat_forward(xp.asarray(x), xp.asarray(skip))
    assert rel(y, upsample.upsample_concat_naive(x, skip)) == 0
    dy = rng.standard_normal(y.shape)
    dx, dskip = upsample.upsample_concat_backward(xp.asarray(dy), cache)
    ref_dx, ref_dskip = upsample.upsample_concat_backward_naive(dy, x.shape)
    assert rel(dx, ref_dx) < 1e-15 and rel(dskip, ref_dskip) == 0


def test_layout_preserving_ops_on_numpy():
    """The array paths keep a channels-last input's layout too (and equal the C-order
    results): concatenation, reflection padding and its backward, the sum of gradients,
    activations, dropout."""
    from cupyden.functional import activation, dropout
    rng = numpy.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 2, 5, 4))
    acl, bcl = channels_last(numpy, a), channels_last(numpy, b)
    y, _ = shape.concat_forward(acl, bcl)
    assert is_channels_last(y) and numpy.array_equal(y, numpy.concatenate([a, b], 1))
    p, c = shape.reflection_pad2d_forward(acl, (1, 2, 3, 1))
    assert is_channels_last(p)
    assert numpy.array_equal(p, numpy.pad(a, ((0, 0), (0, 0), (1, 2), (3, 1)), "reflect"))
    dp = rng.standard_normal(p.shape)
    dx = shape.reflection_pad2d_backward(channels_last(numpy, dp), c)
    assert is_channels_last(dx)
    assert rel(dx, shape.reflection_pad2d_backward(dp, c)) < 1e-15
    s = shape.add_gradients(acl, channels_last(numpy, numpy.concatenate([b, a], 1))[:, 2:])
    assert is_channels_last(s) and numpy.array_equal(s, a + a)
    r, rc = activation.leaky_relu_forward(acl, 0.1)
    assert is_channels_last(r) and is_channels_last(activation.leaky_relu_backward(acl, rc))
    mask = rng.random(a.shape) > 0.3
    d, dc = dropout.dropout_forward(acl, mask, 0.3)
    assert rel(d, a * mask / 0.7) < 1e-15 and is_channels_last(d)


# ----------------------------------------------------------------------------- GPU

def _cupy():
    if backend.gpu_count() == 0:
        pytest.skip("no GPU")
    return backend.gpu_module()


@pytest.mark.gpu
@pytest.mark.parametrize("x_shape", [(2, 32, 16, 18), (3, 5, 9, 7), (1, 1, 8, 8),
                                     (2, 8, 6, 8, 10), (1, 3, 5, 4, 7)])
@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
def test_maxpool_kernel_equals_numpy(x_shape, dtype):
    """Max pooling forward and backward on channels-last CuPy arrays (the kernel) equal
    the NumPy op bit for bit, ties included, and return channels-last arrays."""
    cp = _cupy()
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal(x_shape).astype(dtype)
    x[..., ::3] = 0                                           # ties (ReLU outputs)
    fwd, bwd = ((pool.maxpool2d_forward, pool.maxpool2d_backward) if x.ndim == 4
                else (volume.maxpool3d_forward, volume.maxpool3d_backward))
    y_ref, c_ref = fwd(x, 2)
    y, c = fwd(channels_last(cp, x), 2)
    assert is_channels_last(y) and c.argmax.dtype == numpy.uint8
    assert numpy.array_equal(backend.to_host(y), y_ref)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx = bwd(channels_last(cp, dy), c)
    assert is_channels_last(dx)
    assert numpy.array_equal(backend.to_host(dx), bwd(dy, c_ref))


@pytest.mark.gpu
@pytest.mark.parametrize("x_shape,size", [((2, 32, 8, 9), (16, 18)), ((2, 48, 5, 6), (11, 13)),
                                          ((1, 1, 4, 4), (8, 8)), ((2, 8, 3, 4, 5), (6, 8, 10)),
                                          ((1, 4, 2, 3, 2), (5, 7, 4))])
@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
def test_upsample_concat_kernel_equals_numpy(x_shape, size, dtype):
    """Upsampling + concatenation (one kernel) and its backward on channels-last CuPy
    arrays equal the NumPy ops; the output is channels-last; plain upsampling too."""
    cp = _cupy()
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(dtype)
    skip = rng.standard_normal((x_shape[0], 3) + size).astype(dtype)
    y_ref, c_ref = upsample.upsample_concat_forward(x, skip)
    y, c = upsample.upsample_concat_forward(channels_last(cp, x), channels_last(cp, skip))
    assert is_channels_last(y) and c.up is None
    assert numpy.array_equal(backend.to_host(y), y_ref)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx, dskip = upsample.upsample_concat_backward(channels_last(cp, dy), c)
    ref_dx, ref_dskip = upsample.upsample_concat_backward(dy, c_ref)
    assert is_channels_last(dx)
    tol = {numpy.float16: 2e-3, numpy.float32: 1e-6, numpy.float64: 1e-14}[dtype]
    assert rel(dx, ref_dx) < tol
    assert numpy.array_equal(backend.to_host(dskip), ref_dskip)
    forward = upsample.upsample2d_forward if x.ndim == 4 else volume.upsample3d_forward
    u, _ = forward(channels_last(cp, x), size)
    assert is_channels_last(u)
    assert numpy.array_equal(backend.to_host(u), y_ref[:, :x_shape[1]])


@pytest.mark.gpu
@pytest.mark.parametrize("config", [{"arch": "unet", "base": 16, "seed": 0},
                                    {"arch": "topaz-unet", "nf": 16, "seed": 0},
                                    {"arch": "f2fd-unet", "ndim": 2, "nf": 8, "seed": 0}])
def test_no_layout_copy_between_convolutions(config):
    """A training step (forward and backward) of each U-Net on the cuDNN path copies no
    tensor into channels-last: every op between convolutions keeps the layout."""
    cp = _cupy()
    from cupyden.kernels import cudnn_fe
    if cudnn_fe.problem() is not None:
        pytest.skip(cudnn_fe.problem())
    model = build_model(config).to(cp, numpy.float32).train()
    x = cp.asarray(numpy.random.default_rng(0).standard_normal((2, 1, 64, 64)), numpy.float32)
    model.forward(x)                                          # plans tuned, shapes seen
    model.backward(cp.ones_like(x))
    before = cudnn_fe.COPIES[0]
    y = model.forward(x)
    model.backward(cp.ones_like(y))
    assert cudnn_fe.COPIES[0] == before
