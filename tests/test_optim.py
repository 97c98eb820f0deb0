"""Adam: the reference against hand arithmetic, the fused kernel against the reference,
state saved and restored by name."""

import numpy
import pytest

from cupyden.backend import to_host
from cupyden.models import DnCNN
from cupyden.optim import Adam, Parameters
from cupyden.optim.adam import adam_step_reference

from conftest import rel


def test_adam_first_step_by_hand():
    # step 1: m_hat = g, v_hat = g^2, so p <- p - lr * g / (|g| + eps) = p - lr * sign(g)
    p = numpy.array([1.0, -2.0, 0.5])
    g = numpy.array([0.3, -4.0, 1e-3])
    m, v = numpy.zeros(3), numpy.zeros(3)
    adam_step_reference(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    expect = numpy.array([1.0, -2.0, 0.5]) - 0.1 * g / (numpy.abs(g) + 1e-8)
    assert numpy.allclose(p, expect, rtol=0, atol=1e-12)
    assert numpy.allclose(m, 0.1 * g) and numpy.allclose(v, 0.001 * g * g)


def _run(xp, fused, steps=10, wd=0.01):
    model = DnCNN(4, 8, seed=0).to(xp, numpy.float32)
    params = Parameters(model, filters_channels_last=False)   # one flat layout on both
    opt = Adam(params, lr=1e-2, weight_decay=wd, fused=fused)
    rng = numpy.random.default_rng(0)
    for _ in range(steps):
        params.grad[...] = xp.asarray(rng.standard_normal(params.size), numpy.float32)
        opt.step()
    return to_host(params.data), opt


@pytest.mark.gpu
def test_fused_adam_equals_reference_over_10_steps():
    cupy = pytest.importorskip("cupy")
    ref, _ = _run(cupy, fused=False)
    fused, _ = _run(cupy, fused=True)
    host, _ = _run(numpy, fused=False)
    assert rel(fused, ref) < 1e-6
    assert rel(fused, host) < 1e-6


def test_adam_state_round_trip_by_name(xp):
    _, opt = _run(xp, fused=None, steps=3)
    state = opt.state()
    assert state["step"] == 3 and "conv2.w" in state["m"]
    model = DnCNN(4, 8, seed=0).to(xp, numpy.float32)
    opt2 = Adam(Parameters(model))              # on a GPU: filters channels-last
    opt2.load_state(state)
    assert opt2.t == 3
    for flat, flat2 in ((opt.m, opt2.m), (opt.v, opt2.v)):
        a, b = opt.params.named(flat), opt2.params.named(flat2)
        assert all(numpy.array_equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("arch", [{"arch": "unet", "base": 8}, {"arch": "topaz-unet"}])
def test_filters_stored_channels_last_train_like_contiguous_ones(xp, arch):
    """Parameters(filters_channels_last=True) (the GPU's default) keeps each filter's
    logical shape and values: two Adam steps give the same weights, by name, as the
    C-ordered buffer, and the views are channels-last and 16-byte aligned."""
    from cupyden.models import build_model
    from cupyden.training import train_step
    rng = numpy.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 1, 32, 32)), numpy.float32)
    t = xp.asarray(rng.standard_normal((2, 1, 32, 32)), numpy.float32)
    out = []
    for layout in (False, True):
        model = build_model(dict(arch, seed=0)).to(xp, numpy.float32).train()
        params = Parameters(model, filters_channels_last=layout)
        opt = Adam(params, lr=1e-2)
        losses = [float(train_step(model, params, opt, "mse", x, t))]
        grads = params.named(params.grad)
        losses.append(float(train_step(model, params, opt, "mse", x, t)))
        out.append((losses, grads, params.named(params.data)))
        if layout:
            for name, layer, k in model.named_parameters():
                w = layer.params[k]
                if w.ndim == 4:
                    assert name in params.channels_last and w.strides[1] == w.itemsize
                    assert w.data.ptr % 16 == 0 if xp is not numpy else \
                        w.__array_interface__["data"][0] % 16 == 0
    (l0, g0, w0), (l1, g1, w1) = out
    assert rel(numpy.array(l1), numpy.array(l0)) < 1e-5
    for n in g0:
        assert w1[n].flags.c_contiguous and rel(g1[n], g0[n]) < 1e-4
        if xp is numpy:       # the GPU's convolutions may sum in another order: a gradient
            assert rel(w1[n], w0[n]) < 1e-6   # near 0 then flips Adam's first step
