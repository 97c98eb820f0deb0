"""Fast paths against their loop references."""

import numpy
import pytest

from cupyden.backend import to_host
from cupyden.functional import conv, pool
from cupyden.functional.shape import reflection_pad2d_backward, reflection_pad2d_forward
from cupyden.functional.upsample import upsample2d_backward, upsample2d_forward

from conftest import rel


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(8, 8), (9, 7), (11, 10)])
def test_conv_equals_loop_reference(xp, kernel, stride, hw):
    rng = numpy.random.default_rng(kernel * 10 + stride)
    x = rng.standard_normal((2, 3) + hw)
    w = rng.standard_normal((4, 3, kernel, kernel))
    b = rng.standard_normal(4)
    P = kernel // 2
    y_ref, c_ref = conv.conv2d_forward_naive(x, w, b, stride, P)
    y, c = conv.conv2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), stride, P)
    assert y.shape == y_ref.shape
    assert rel(y, y_ref) < 1e-12
    dy = rng.standard_normal(y_ref.shape)
    for got, ref in zip(conv.conv2d_backward(xp.asarray(dy), c), conv.conv2d_backward_naive(dy, c_ref)):
        assert rel(got, ref) < 1e-12


@pytest.mark.parametrize("keep_columns", [True, False])
def test_conv_blocks_of_rows_equal_one_block(xp, monkeypatch, keep_columns):
    """Row bands (the CPU path) and whole-batch blocks give the same result, with the
    columns kept for the backward pass or rebuilt there (the readable im2col path)."""
    from cupyden.settings import SETTINGS
    monkeypatch.setattr(SETTINGS, "cpu_conv", "im2col")
    rng = numpy.random.default_rng(1)
    x = xp.asarray(rng.standard_normal((2, 3, 17, 13)))
    w = xp.asarray(rng.standard_normal((5, 3, 3, 3)))
    b = xp.asarray(rng.standard_normal(5))
    dy = xp.asarray(rng.standard_normal((2, 5, 9, 7)))
    y1, c1 = conv.conv2d_forward(x, w, b, 2, 1, slope=0.0)
    g1 = conv.conv2d_backward(dy, c1)
    name = "BLOCK_ELEMENTS_CPU" if xp is numpy else "BLOCK_ELEMENTS_GPU"
    monkeypatch.setattr(conv, name, 27 * 7 * 2)   # two output rows per block
    if not keep_columns:
        monkeypatch.setattr(conv, "KEEP_COLUMNS_CPU" if xp is numpy else "KEEP_COLUMNS_GPU", 0)
    assert len(list(conv._blocks(2, 9, 7, 27, xp))) == 10
    y2, c2 = conv.conv2d_forward(x, w, b, 2, 1, slope=0.0)
    assert (c2.cols is not None) == keep_columns
    assert rel(y2, y1) < 1e-14
    for a, b_ in zip(conv.conv2d_backward(dy, c2), g1):
        assert rel(a, b_) < 1e-14


def test_conv_output_size_formula():
    assert conv.output_size(256, 3, 1, 1) == 256
    assert conv.output_size(255, 3, 2, 1) == 128
    assert conv.output_size(10, 5, 2, 0) == 3


def test_maxpool_equals_loop_reference(xp):
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 9))
    y_ref, c_ref = pool.maxpool2d_forward_naive(x, 2)
    y, c = pool.maxpool2d_forward(xp.asarray(x), 2)
    assert y.shape == (2, 3, 3, 4) and rel(y, y_ref) == 0
    dy = rng.standard_normal(y.shape)
    assert rel(pool.maxpool2d_backward(xp.asarray(dy), c), pool.maxpool2d_backward_naive(dy, c_ref)) == 0


@pytest.mark.parametrize("size", [(6, 8), (7, 9), (5, 4)])
def test_upsample_nearest_source_rule(xp, size):
    """y[i, j] = x[floor(i H / OH), floor(j W / OW)], and backward sums the copies."""
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((1, 2, 3, 4))
    y, c = upsample2d_forward(xp.asarray(x), size)
    OH, OW = size
    ref = numpy.empty((1, 2, OH, OW))
    for i in range(OH):
        for j in range(OW):
            ref[:, :, i, j] = x[:, :, i * 3 // OH, j * 4 // OW]
    assert rel(y, ref) == 0
    dy = rng.standard_normal((1, 2, OH, OW))
    dref = numpy.zeros_like(x)
    for i in range(OH):
        for j in range(OW):
            dref[:, :, i * 3 // OH, j * 4 // OW] += dy[:, :, i, j]
    assert rel(upsample2d_backward(xp.asarray(dy), c), dref) < 1e-15


def test_reflection_pad_matches_numpy_and_folds_back(xp):
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((1, 1, 5, 4))
    pads = (2, 1, 0, 3)
    y, c = reflection_pad2d_forward(xp.asarray(x), pads)
    assert rel(y, numpy.pad(x, ((0, 0), (0, 0), (2, 1), (0, 3)), mode="reflect")) == 0
    # backward of a linear map: <pad(x), dy> = <x, pad^T(dy)>
    dy = rng.standard_normal(y.shape)
    dx = to_host(reflection_pad2d_backward(xp.asarray(dy), c))
    assert abs(numpy.vdot(to_host(y), dy) - numpy.vdot(x, dx)) < 1e-12


@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv3d_equals_the_loop_reference(xp, k):
    from cupyden.functional.volume import conv3d_forward, conv3d_naive
    rng = numpy.random.default_rng(k)
    x = rng.standard_normal((2, 3, 5, 4, 6))
    w = rng.standard_normal((2, 3, k, k, k))
    b = rng.standard_normal(2)
    y, _ = conv3d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    assert rel(y, conv3d_naive(x, w, b)) < 1e-12


def test_maxpool3d_and_upsample3d_by_hand(xp):
    from cupyden.functional.volume import maxpool3d_forward, upsample3d_forward
    x = numpy.arange(2 * 4 * 5 * 3, dtype=numpy.float64).reshape(1, 2, 4, 5, 3)
    y, _ = maxpool3d_forward(xp.asarray(x), 2)
    # each 2x2x2 window's maximum is its last element (values increase along every axis)
    assert rel(y, x[:, :, 1:4:2, 1:4:2, 1:2:2]) == 0
    u, _ = upsample3d_forward(xp.asarray(x), (8, 9, 3))
    i = (numpy.arange(9) * 5) // 9
    assert rel(u, x[:, :, numpy.arange(8) // 2][:, :, :, i]) == 0
