"""cuDNN path (kernels/cudnn_fe.py) against the im2col path, mixed precision, loss scaling.

GPU tests (marker ``gpu``) run only where CuPy sees a GPU and cuDNN passes its probe; the
CPU tests cover the precision options, the loss scaler and the float16 master weights.
"""

import numpy
import pytest

from cupyden import backend, gradcheck
from cupyden.errors import InputError
from cupyden.functional.conv import gpu_conv, set_precision
from cupyden.models import build_model
from cupyden.optim import Adam, Parameters
from cupyden.optim.loss_scale import LossScaler
from cupyden.training import train_step

from conftest import rel


def _cudnn():
    if backend.gpu_count() == 0:
        pytest.skip("no GPU")
    from cupyden.kernels import cudnn_fe
    why = cudnn_fe.problem()
    if why is not None:
        pytest.skip(why)
    return backend.gpu_module(), cudnn_fe


MODELS = {"dncnn": {"arch": "dncnn", "depth": 12, "width": 32, "seed": 1},
          "unet": {"arch": "unet", "base": 32, "seed": 1},
          "topaz": {"arch": "topaz-unet", "seed": 1}}


def _forward_backward(model, params, x, dy):
    """[y, dx, every parameter gradient] as float64 host arrays."""
    params.zero_grad()
    y = model.forward(x)
    dx = model.backward(dy)
    return [backend.to_host(a).astype(numpy.float64) for a in (y, dx, params.grad)]


def _reference_and_model(cp, name, dtype):
    """A float32 model with weights rounded to ``dtype``'s precision, the same weights in a
    ``dtype`` model, and inputs / output gradients rounded the same way."""
    ref = build_model(MODELS[name]).to(cp, numpy.float32).train()
    ref_params = Parameters(ref)
    ref_params.data[...] = ref_params.data.astype(dtype).astype(numpy.float32)
    model = build_model(MODELS[name]).to(cp, dtype).train()
    params = Parameters(model)
    model.load_state(ref.state())
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal((2, 1, 64, 64)).astype(dtype)
    dy = rng.standard_normal((2, 1, 64, 64)).astype(dtype)
    return ref, ref_params, model, params, cp.asarray(x), cp.asarray(dy)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_cudnn_equals_im2col(name, precision):
    """Forward pass and every gradient of the DnCNN-12/32, the U-Net and Topaz's
    UDenoiseNet (the model of --arch topaz) through cuDNN. In fp32 against the same network
    in float64 (im2col): the forward pass < 1e-5, dx and the parameter gradients < 2e-4; in
    TF32 and float16 against im2col in strict float32: the forward pass < 3e-3 and the
    gradients < 0.1.

    Why float64 for fp32: im2col in float32 is itself 4e-3..6e-3 away from float64 in every
    parameter gradient of Topaz's network, while cuDNN's float32 is 1.1e-5 away (dx 7.9e-5,
    forward 4.3e-6; H200, 2026-11-30, benchmarks/RESULTS.md): comparing the two float32
    paths measured the reference's error, not cuDNN's.

    Why not 3e-3 for the gradients at reduced precision: a rounding of 3e-4 moves a few
    pre-activations across 0, which flips their ReLU gates; the gradient of a random
    cotangent is a sum with O(sqrt n) cancellation, each flip adds O(1). PyTorch's own TF32
    against its float32 on this test: 5.0e-2 (dx) and 4.7e-2 (parameters) on an H200
    (benchmarks/RESULTS.md). The convolutions themselves are held to 3e-3 one by one in
    ``test_every_layer_op_at_reduced_precision``.
    """
    cp, cudnn_fe = _cudnn()
    from cupyden.functional.conv_cudnn import IM2COL_FALLBACKS
    dtype = set_precision(precision, cp)
    try:
        ref, ref_params, model, params, x, dy = _reference_and_model(cp, name, dtype)
        ref_dtype = numpy.float64 if precision == "fp32" else numpy.float32
        if ref_dtype == numpy.float64:
            ref = build_model(MODELS[name]).to(cp, numpy.float64).train()
            ref_params = Parameters(ref)
            ref.load_state(model.state())
        with gpu_conv("im2col"):
            expected = _forward_backward(ref, ref_params, x.astype(ref_dtype),
                                         dy.astype(ref_dtype))
        with gpu_conv("cudnn"):
            got = _forward_backward(model, params, x, dy)
    finally:
        set_precision("fp32", cp)
    errors = [rel(g, e) for g, e in zip(got, expected)]
    if precision == "fp32":
        assert errors[0] < 1e-5 and max(errors[1:]) < 2e-4, errors
    else:
        assert errors[0] < 3e-3 and max(errors[1:]) < 0.1, errors
    assert not IM2COL_FALLBACKS, IM2COL_FALLBACKS


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("precision", ["tf32", "fp16"])
def test_every_layer_op_at_reduced_precision(name, precision):
    """Each convolution of the model, on the input it sees in a strict float32 forward
    pass: fused fprop (bias, activation), dgrad, wgrad and bias gradient (linear, no gate)
    at TF32 / float16 against strict float32 im2col: rel < 3e-3."""
    cp, _ = _cudnn()
    from cupyden.functional.conv import conv2d_backward, conv2d_forward
    from cupyden.layers import Conv2d
    ref = build_model(MODELS[name]).to(cp, numpy.float32).train()
    rng = numpy.random.default_rng(4)
    x = cp.asarray(rng.standard_normal((2, 1, 64, 64)).astype(numpy.float32))
    with gpu_conv("im2col"):
        ref.forward(x)
    layers = [layer for _, layer in ref.named_layers() if isinstance(layer, Conv2d)]
    dtype = set_precision(precision, cp)
    worst = 0.0
    try:
        for layer in layers:
            c = layer.cache
            P = c.padding
            H, W = c.x_shape[2:]
            xin = c.xpad[:, :, P:P + H, P:P + W]
            w, b = layer.params["w"], layer.params.get("b")
            dz = cp.asarray(rng.standard_normal(c.y.shape if c.y is not None else
                                                (xin.shape[0], w.shape[0], H, W)))
            # both paths see the same values, rounded to the tested precision
            vals = [None if a is None else a.astype(dtype).astype(numpy.float32)
                    for a in (xin, w, b, dz)]
            runs = {}
            for conv, dt in (("im2col", numpy.float32), ("cudnn", dtype)):
                cast = [None if a is None else a.astype(dt) for a in vals]
                with gpu_conv(conv):
                    y, _ = conv2d_forward(cast[0], cast[1], cast[2], layer.stride, P,
                                          layer.slope, keep_cache=False)
                    _, cache = conv2d_forward(cast[0], cast[1], cast[2], layer.stride, P, None)
                    runs[conv] = (y,) + conv2d_backward(cast[3], cache)
            for a, e in zip(runs["cudnn"], runs["im2col"]):
                worst = max(worst, rel(a, e))
    finally:
        set_precision("fp32", cp)
    assert worst < 3e-3, worst


@pytest.mark.gpu
@pytest.mark.parametrize("conv", ["im2col", "cudnn"])
def test_gradcheck_conv_cases_on_both_gpu_paths(conv):
    """Every convolution case of the gradient checks (2-D and 3-D ops, the models) in
    float64 on each GPU path."""
    cp, cudnn_fe = _cudnn()
    with gpu_conv(conv):
        for case in gradcheck.all_cases(cp):
            if not any(k in case.name for k in ("conv", "dncnn", "unet", "topaz")):
                continue
            assert gradcheck.directional_check(case) < gradcheck.TOLERANCE, case.name
    from cupyden.functional.conv_cudnn import IM2COL_FALLBACKS
    assert not IM2COL_FALLBACKS, IM2COL_FALLBACKS


@pytest.mark.gpu
def test_conv3d_cudnn_equals_shift_and_multiply():
    """3-D conv + bias + LeakyReLU through cuDNN equals the shift-and-multiply path."""
    cp, cudnn_fe = _cudnn()
    from cupyden.functional.volume import conv3d_backward, conv3d_forward
    rng = numpy.random.default_rng(3)
    x = cp.asarray(rng.standard_normal((2, 4, 10, 12, 14)).astype(numpy.float32))
    w = cp.asarray(rng.standard_normal((6, 4, 3, 3, 3)).astype(numpy.float32) * 0.2)
    b = cp.asarray(rng.standard_normal(6).astype(numpy.float32))
    dy = cp.asarray(rng.standard_normal((2, 6, 10, 12, 14)).astype(numpy.float32))
    out = {}
    for conv in ("im2col", "cudnn"):
        with gpu_conv(conv):
            y, cache = conv3d_forward(x, w, b, 0.1)
            out[conv] = (y,) + conv3d_backward(dy, cache)
    for a, e in zip(out["cudnn"], out["im2col"]):
        assert rel(a, e) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32, numpy.float16])
@pytest.mark.parametrize("shape", [(3, 32, 17, 19), (2, 48, 5, 6, 7), (16, 32, 64, 64)])
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_fused_activation_bias_backward(dtype, shape, slope):
    """The one-pass dz + bias sum on channels-last memory equals the two-pass path: dz
    bit for bit, db to float32 summation rounding (16 x 32 x 64^2 has more elements than
    the kernel has threads, so threads loop)."""
    if backend.gpu_count() == 0:
        pytest.skip("no GPU")
    cp = backend.gpu_module()
    from cupyden.functional.activation import activation_backward
    from cupyden.functional.conv import channel_sum
    from cupyden.functional.conv_cudnn import activation_bias_backward
    rng = numpy.random.default_rng(3)
    last = (0,) + tuple(range(2, len(shape))) + (1,)           # channels-last memory
    inverse = numpy.argsort(last)
    y = cp.asarray(rng.standard_normal([shape[i] for i in last]).astype(dtype)).transpose(inverse)
    dy = cp.asarray(rng.standard_normal(shape).astype(dtype))   # NCHW: copied to y's layout
    dz, db = activation_bias_backward(dy, y, slope, True)
    ref_dz = activation_backward(dy, y, slope)
    assert dz.strides == y.strides
    assert numpy.array_equal(backend.to_host(dz), backend.to_host(ref_dz))
    exact = backend.to_host(ref_dz).astype(numpy.float64).sum(axis=(0,) + tuple(range(2, len(shape))))
    assert db.dtype == (numpy.float32 if dtype == numpy.float16 else dtype)
    tol = 1e-12 if dtype == numpy.float64 else 1e-5
    assert rel(backend.to_host(db), exact) < tol
    assert rel(backend.to_host(channel_sum(ref_dz)), exact) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp64", "fp32", "tf32", "fp16"])
@pytest.mark.parametrize("shape,F,K,slope", [((2, 32, 33, 31), 16, 3, 0.1),
                                             ((1, 1, 40, 48), 48, 11, 0.0),
                                             ((2, 8, 6, 7, 5), 8, 3, None),
                                             ((1, 32, 24, 24), 1, 3, None)])
def test_both_forward_routes_equal_the_direct_sum(precision, shape, F, K, slope):
    """The fused graph (conv + bias + activation) and the split route (the convolution's
    graph, then ``bias_activation_kernel``) both equal a float64 convolution of the same
    rounded inputs; so does whichever route ``conv_forward`` chose. float64 has the split
    route only (no fused double engines before Blackwell)."""
    from cupyden.settings import using
    cp, cudnn_fe = _cudnn()
    dtype = {"fp64": numpy.float64, "fp16": numpy.float16}.get(precision, numpy.float32)
    rng = numpy.random.default_rng(5)
    C, nd, p = shape[1], len(shape) - 2, K // 2
    x = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal((F, C) + (K,) * nd) / numpy.sqrt(C * K ** nd)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    with using(precision="fp32"):                # float64 data: double engines
        ref = backend.to_host(cudnn_fe.conv_forward(
            cp.asarray(x, numpy.float64), cp.asarray(w, numpy.float64), None, 1, p, None))
    ref = ref + b.astype(numpy.float64).reshape((1, F) + (1,) * nd)
    if slope is not None:
        ref = numpy.where(ref > 0, ref, slope * ref)
    xd, wd, bd = cp.asarray(x), cp.asarray(w), cp.asarray(b)
    with using(precision="fp32" if precision == "fp64" else precision):
        split = cudnn_fe._fprop(cudnn_fe.operand(xd), wd, None, 1, p, None)
        cudnn_fe._bias_activation(split, bd, slope)
        outs = {"split": split, "chosen": cudnn_fe.conv_forward(xd, wd, bd, 1, p, slope)}
        if dtype != numpy.float64:
            outs["fused"] = cudnn_fe._fprop(cudnn_fe.operand(xd), wd, bd, 1, p, slope)
    tol = {"fp64": 1e-12, "fp32": 1e-5, "tf32": 2e-3, "fp16": 2e-3}[precision]
    for route, y in outs.items():
        assert rel(y, ref) < tol, route


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_input_layer_backward_runs_no_dgrad(precision):
    """A layer reading the network's input (``input_grad`` False, during backward_params)
    gives dx None and the same dw and db without running cuDNN's dgrad graph
    (Topaz's 11 x 11 first layer: 3.8 ms of a 12 x 384^2 float16 step on an H200)."""
    from cupyden.functional.conv import conv2d_backward, conv2d_forward
    cp, cudnn_fe = _cudnn()
    dtype = set_precision(precision, cp)
    try:
        rng = numpy.random.default_rng(3)
        x = cp.asarray(rng.standard_normal((2, 1, 40, 36)), dtype)
        w = cp.asarray(rng.standard_normal((48, 1, 11, 11)) / 11, dtype)
        b = cp.asarray(rng.standard_normal(48), dtype)
        with gpu_conv("cudnn"):
            y, cache = conv2d_forward(x, w, b, 1, 5, 0.1, keep_cache=True)
            dy = cp.asarray(rng.standard_normal(y.shape), dtype)
            cudnn_fe._PLANS.clear()
            dx, dw, db = conv2d_backward(dy, cache, input_grad=True)
            ops = sorted(k[0] for k in cudnn_fe._PLANS)
            cudnn_fe._PLANS.clear()
            none, dw2, db2 = conv2d_backward(dy, cache, input_grad=False)
            ops2 = sorted(k[0] for k in cudnn_fe._PLANS)
    finally:
        set_precision("fp32", cp)
    assert "dgrad" in ops, ops
    assert "dgrad" not in ops2 and "wgrad" in ops2, ops2
    assert dx.shape == x.shape and none is None
    # dw is not bit-equal between two calls at fp32 (H200 call 5 of session 12; the fp16
    # case was): cuDNN's wgrad engines need not be deterministic
    tol = {"fp32": 1e-6, "fp16": 1e-3}[precision]
    assert rel(dw2, dw) < tol and rel(db2, db) < tol


@pytest.mark.gpu
def test_cudnn_can_be_turned_off(monkeypatch):
    _, cudnn_fe = _cudnn()
    monkeypatch.setenv("CUPYDEN_CUDNN", "0")
    assert "CUPYDEN_CUDNN=0" in cudnn_fe.problem()
    with pytest.raises(RuntimeError, match="CUPYDEN_CUDNN=0"):
        with gpu_conv("cudnn"):
            from cupyden.functional.conv_cudnn import usable
            usable(backend.gpu_module().zeros((1, 1, 4, 4), numpy.float32))


@pytest.mark.gpu
def test_fp16_training_step_skips_overflow_and_learns():
    """float16 steps with loss scaling: a huge scale overflows and is halved (step
    skipped, weights untouched); then the loss falls like float32's."""
    cp, _ = _cudnn()
    set_precision("fp16", cp)
    try:
        model = build_model({"arch": "dncnn", "depth": 4, "width": 16, "seed": 0})
        model.to(cp, numpy.float16).train()
        params = Parameters(model)
        opt = Adam(params, lr=1e-3)
        scaler = LossScaler(scale=2.0 ** 40)
        rng = numpy.random.default_rng(0)
        clean = rng.standard_normal((8, 1, 32, 32)).astype(numpy.float32)
        x = cp.asarray(clean + 0.5 * rng.standard_normal(clean.shape).astype(numpy.float32))
        t = cp.asarray(clean)
        before = params.master.copy()
        train_step(model, params, opt, "mse", x, t, scaler)
        assert scaler.skipped == 1 and scaler.scale == 2.0 ** 39
        assert bool((params.master == before).all())
        scaler = LossScaler()
        first = float(train_step(model, params, opt, "mse", x, t, scaler))
        for _ in range(30):
            last = float(train_step(model, params, opt, "mse", x, t, scaler))
        assert last < 0.7 * first
        assert params.data.dtype == numpy.float16 and params.master.dtype == numpy.float32
    finally:
        set_precision("fp32", cp)


# ----------------------------------------------------------------------------- CPU

def test_precision_options_on_the_cpu():
    assert set_precision("fp32", numpy) == numpy.float32
    for p in ("tf32", "fp16"):
        with pytest.raises(InputError, match="needs a GPU"):
            set_precision(p, numpy)
    with pytest.raises(InputError, match="precision must be"):
        set_precision("bf16", numpy)


def test_loss_scaler_rule():
    s = LossScaler(scale=8.0, growth_interval=3)
    for finite, scale in [(True, 8), (True, 8), (True, 16), (False, 8), (True, 8),
                          (False, 4), (True, 4), (True, 4), (True, 8)]:
        s.update(finite)
        assert s.scale == scale
    assert s.skipped == 2
    assert s.finite(numpy.ones(4)) and not s.finite(numpy.array([1.0, numpy.inf]))
    t = LossScaler()
    t.load_state(s.state())
    assert t.state() == s.state()


def test_loss_scale_check_follows_the_rule_where_the_gradients_live(xp):
    """check() gives [1 / (S * ranks), finite] with the S that scaled the step and moves S,
    clean and skipped by the rule of update(), on the host and on the device alike."""
    s, ref = LossScaler(scale=8.0, growth_interval=3), LossScaler(scale=8.0, growth_interval=3)
    good, bad = xp.ones(5, numpy.float32), xp.asarray([1.0, numpy.nan, 2.0], numpy.float32)
    for g in [good, good, good, bad, good, bad, bad, good, good, good]:
        finite = bool(xp.isfinite(g).all())
        verdict = s.check(g, ranks=2)
        assert verdict.applied() == finite
        assert verdict.inverse_scale() == 1.0 / (ref.scale * 2)
        ref.update(finite)
        assert s.state() == ref.state()
    assert s.state() == {"scale": 4.0, "clean": 0, "skipped": 3}
    assert float(s.scale_on(xp)) == 4.0


def test_adam_with_a_verdict_skips_an_overflowed_step_and_does_not_count_it(xp):
    """An overflow's verdict leaves p, m, v unchanged and t uncounted (the fused kernel
    decides on the device); a finite one equals a step with grad_scale = S."""
    model = build_model({"arch": "dncnn", "depth": 3, "width": 4, "seed": 0}).to(xp, numpy.float32)
    params = Parameters(model)
    params.grad[...] = xp.asarray(numpy.cos(numpy.arange(params.size, dtype=numpy.float32)) * 64)
    for fused in ((False, True) if xp is not numpy else (False,)):
        p0 = params.data.copy()
        opt, twin = Adam(params, lr=0.01, fused=fused), None
        scaler = LossScaler(scale=64.0)
        opt.step(verdict=scaler.check(params.grad))
        after_one = params.data.copy()
        params.data[...] = p0
        twin = Adam(params, lr=0.01, fused=fused)
        twin.step(grad_scale=64.0)
        assert rel(params.data, after_one) == 0 and opt.t == 1
        params.data[...] = after_one
        m, v = opt.m.copy(), opt.v.copy()
        params.grad[0] = numpy.inf
        opt.step(verdict=scaler.check(params.grad))
        assert opt.t == 1 and scaler.skipped == 1 and scaler.scale == 32.0
        assert bool((params.data == after_one).all()) and bool((opt.m == m).all())
        assert bool((opt.v == v).all())
        params.grad[0] = 1.0
        opt.step(verdict=scaler.check(params.grad))
        assert opt.t == 2 and not bool((params.data == after_one).all())
        params.data[...] = p0
        params.grad[...] = xp.asarray(numpy.cos(numpy.arange(params.size, dtype=numpy.float32)) * 64)


def test_adam_unscales_gradients(xp):
    """A step on S * g with grad_scale S equals a step on g (both implementations)."""
    model = build_model({"arch": "dncnn", "depth": 3, "width": 4, "seed": 0}).to(xp, numpy.float32)
    results = []
    for S in (1.0, 1024.0):
        params = Parameters(model)
        params.data[...] = xp.asarray(numpy.linspace(-1, 1, params.size, dtype=numpy.float32))
        params.grad[...] = xp.asarray(numpy.cos(numpy.arange(params.size, dtype=numpy.float32)) * S)
        for fused in ((False, True) if xp is not numpy else (False,)):
            p0 = params.data.copy()
            opt = Adam(params, lr=0.01, fused=fused)
            opt.step(grad_scale=S)
            results.append(backend.to_host(params.data).copy())
            params.data[...] = p0
    for r in results[1:]:
        assert rel(r, results[0]) < 1e-6


def test_float16_parameters_keep_float32_master_weights():
    model = build_model({"arch": "dncnn", "depth": 3, "width": 4, "seed": 0})
    model.to(numpy, numpy.float16)
    params = Parameters(model)
    assert params.data.dtype == numpy.float16
    assert params.grad.dtype == numpy.float32 and params.master.dtype == numpy.float32
    assert numpy.array_equal(params.master.astype(numpy.float16), params.data)
    params.master += 1e-4                       # below float16's step near 1: rounds away
    params.sync()
    assert numpy.array_equal(params.data, params.master.astype(numpy.float16))
    model32 = build_model({"arch": "dncnn", "depth": 3, "width": 4, "seed": 0})
    assert Parameters(model32.to(numpy, numpy.float32)).master is None


def test_settings_are_one_checked_object():
    """settings: names and choices are checked, `using` restores, the old names work."""
    from cupyden import settings
    from cupyden.functional import conv
    assert conv.PRECISIONS == settings.PRECISIONS and conv.set_precision is settings.set_precision
    with gpu_conv("im2col"):
        assert settings.SETTINGS.conv == "im2col"
        with settings.using(tune_plans=1, precision="tf32"):
            assert settings.SETTINGS.tf32 and settings.SETTINGS.tune_plans == 1
        assert settings.SETTINGS.tune_plans == 8 and not settings.SETTINGS.tf32
    with pytest.raises(ValueError, match="resident_gib"):
        settings.configure(resident_gib=-1)
    assert settings.SETTINGS.conv == "auto"
    for bad in ({"conv": "fast"}, {"precision": "bf16"}, {"colour": 1}, {"tf32": True}):
        with pytest.raises(ValueError):
            settings.configure(**bad)
