"""The phase convolution (``functional.phase_conv``): upsampling x2 + concatenation + a
KxK convolution as one convolution at the coarse resolution, against the loop references
composed, its gradient checks, and Topaz's UDenoiseNet through it against the two-op path."""

import numpy
import pytest

from cupyden.backend import channels_last_strides, to_device, to_host
from cupyden.functional import phase_conv as pc
from cupyden.gradcheck import TOLERANCE, directional_check, elementwise_check, layer_case
from cupyden.layers import Conv2d, UpsampleConcat, UpsampleConcatConv2d
from cupyden.models import TopazUNet
from cupyden.models.topaz import PRETRAINED

from conftest import rel


def _is_channels_last(a):
    return a.strides == tuple(s * a.itemsize for s in channels_last_strides(a.shape))


def _draw(rng, N, Ch, Cs, F, K, H, W):
    return (rng.standard_normal((N, Ch, H, W)), rng.standard_normal((N, Cs, 2 * H, 2 * W)),
            rng.standard_normal((F, Ch + Cs, K, K)), rng.standard_normal(F))


@pytest.mark.parametrize("K", [3, 5, 7])
@pytest.mark.parametrize("Cs", [1, 2])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
def test_op_equals_the_loop_references_composed(xp, K, Cs, slope):
    """Forward and every gradient equal upsample_concat_naive + conv2d_forward_naive (and
    their backward references) in float64; N = 2, odd F, H != W."""
    rng = numpy.random.default_rng(K * 10 + Cs)
    h, skip, w, b = _draw(rng, 2, 3, Cs, 5, K, 4, 5)
    y_ref, cache_ref = pc.upsample_concat_conv2d_naive(h, skip, w, b, slope)
    y, cache = pc.upsample_concat_conv2d_forward(*(to_device(a, xp) for a in (h, skip, w, b)),
                                                 slope)
    assert y.shape == (2, 5, 8, 10) and _is_channels_last(y) and cache.up is None
    assert rel(y, y_ref) < 1e-12
    dy = rng.standard_normal(y_ref.shape)
    ref = pc.upsample_concat_conv2d_backward_naive(dy, cache_ref)
    got = pc.upsample_concat_conv2d_backward(to_device(dy, xp), cache)
    for name, a, e in zip(("dh", "dskip", "dw", "db"), got, ref):
        assert a.shape == e.shape and rel(a, e) < 1e-12, name
    dh, dskip, dw, db = pc.upsample_concat_conv2d_backward(to_device(dy, xp), cache,
                                                           input_grad=False)
    assert dskip is None and rel(dh, ref[0]) < 1e-12 and rel(dw, ref[2]) < 1e-12


def test_other_sizes_take_the_two_op_path(xp):
    """A skip that is not twice h's size (Topaz unpadded on odd sides): upsampling by
    floor(i H / OH), as before; no bias."""
    rng = numpy.random.default_rng(1)
    h, _, w, _ = _draw(rng, 2, 2, 1, 3, 3, 3, 4)
    skip = rng.standard_normal((2, 1, 7, 9))
    y_ref, cache_ref = pc.upsample_concat_conv2d_naive(h, skip, w, None, 0.1)
    y, cache = pc.upsample_concat_conv2d_forward(to_device(h, xp), to_device(skip, xp),
                                                 to_device(w, xp), None, 0.1)
    assert cache.up is not None and rel(y, y_ref) < 1e-12
    dy = rng.standard_normal(y_ref.shape)
    ref = pc.upsample_concat_conv2d_backward_naive(dy, cache_ref)
    got = pc.upsample_concat_conv2d_backward(to_device(dy, xp), cache)
    for a, e in zip(got[:3], ref[:3]):
        assert rel(a, e) < 1e-12


def test_space_to_depth_and_depth_to_space(xp):
    """out[n, (qy*2 + qx)*C + c, i, j] = x[n, c, 2i + qy, 2j + qx]; each undoes the other
    and keeps channels-last memory."""
    x = numpy.arange(2 * 3 * 4 * 6, dtype=numpy.float64).reshape(2, 3, 4, 6)
    z = pc.space_to_depth(to_device(x, xp))
    assert z.shape == (2, 12, 2, 3) and _is_channels_last(z)
    assert to_host(z)[1, (1 * 2 + 0) * 3 + 2, 1, 2] == x[1, 2, 3, 4]
    back = pc.depth_to_space(z)
    assert _is_channels_last(back) and numpy.array_equal(to_host(back), x)
    h = numpy.arange(2 * 5 * 2 * 3, dtype=numpy.float64).reshape(2, 5, 2, 3)
    zz = pc.phase_concat(to_device(h, xp), to_device(x, xp))
    assert _is_channels_last(zz)
    assert numpy.array_equal(to_host(zz), numpy.concatenate([h, to_host(z)], axis=1))


def test_phase_weights_and_their_adjoint(xp):
    """<phase_weights(w), dv> = <w, phase_weights_backward(dv)>; the upsampled channels'
    phase filters of K = 3 are the sums of the fine taps that fall on one coarse tap."""
    rng = numpy.random.default_rng(2)
    for K in (3, 5, 7, 9):
        KP = pc.phase_kernel_size(K)
        assert KP == {3: 3, 5: 3, 7: 5, 9: 5}[K]
        w = to_device(rng.standard_normal((3, 4 + 2, K, K)), xp)
        dv = to_device(rng.standard_normal((12, 4 + 8, KP, KP)), xp)
        v = pc.phase_weights(w, 4)
        assert v.shape == (12, 12, KP, KP)
        dw = pc.phase_weights_backward(dv, w.shape, 4)
        assert abs(float((v * dv).sum()) - float((w * dw).sum())) < 1e-10 * float(abs(v * dv).sum())
    w = numpy.arange(9.0).reshape(1, 1, 3, 3)               # K = 3, Ch = 1, Cs = 0
    v = to_host(pc.phase_weights(to_device(w, xp), 1))
    # output phase (0, 0) at fine row 2i reads fine rows 2i-1, 2i, 2i+1 = coarse i-1, i, i:
    # coarse tap 0 gets fine tap 0, coarse tap 1 gets fine taps 1 + 2
    assert numpy.array_equal(v[0, 0], [[0, 1 + 2, 0], [3 + 6, 4 + 5 + 7 + 8, 0], [0, 0, 0]])


@pytest.mark.parametrize("slope", [None, 0.1])
def test_gradients_of_the_layer(xp, slope):
    """Finite differences (float64): directional on h, skip, w and b together, and
    elementwise on a tiny case."""
    rng = numpy.random.default_rng(3)
    activation = None if slope is None else "leaky_relu"
    layer = UpsampleConcatConv2d(3, 4, 5, activation=activation, slope=0.1, rng=rng)
    case = layer_case("phase conv", layer, [rng.standard_normal((2, 2, 3, 4)),
                                            rng.standard_normal((2, 1, 6, 8))], xp)
    assert directional_check(case) < TOLERANCE
    layer = UpsampleConcatConv2d(2, 3, 3, activation=activation, slope=0.1, rng=rng)
    case = layer_case("phase conv tiny", layer, [rng.standard_normal((1, 1, 2, 3)),
                                                 rng.standard_normal((1, 1, 4, 6))], xp)
    assert elementwise_check(case) < TOLERANCE


def _two_op_top(model):
    """A stand-in for ``model.top`` running today's UpsampleConcat + Conv2d on the same
    weights (the path before the phase convolution)."""
    top, up = model.top, UpsampleConcat()
    F, C, K, _ = top.params["w"].shape
    conv = Conv2d(C, F, K, activation="leaky_relu", slope=0.1)
    conv.params, conv.grads = top.params, top.grads        # the same arrays

    class TwoOps:
        input_grad = True

        def forward(self, h, x):
            return conv.forward(up.forward(h, x))

        def backward(self, dy):
            conv.input_grad = True
            return up.backward(conv.backward(dy))
    return TwoOps()


def _run(model, x, dy):
    model.train()
    for _, layer in model.named_layers():
        for g in layer.grads.values():
            g[...] = 0
    y = model.forward(x)
    dx = model.backward(dy)
    return y, dx, {k: to_host(layer.grads[p]).copy() for k, layer, p in model.named_parameters()}


@pytest.mark.parametrize("config,shape", [
    (dict(PRETRAINED["unet-small"][1], depth=3), (64, 96)),
    (dict(PRETRAINED["unet"][1], nf=8), (64, 96)),
    (dict(PRETRAINED["unet-small"][1], nf=8, pad=False), (50, 70))])
def test_topaz_unet_equals_the_two_op_path(xp, config, shape):
    """Topaz's UDenoiseNet (unet-small; unet with 8 channels; unpadded on odd sides, where
    dec1 keeps the two ops) with dec1.0 as the phase convolution equals the same weights
    through UpsampleConcat + Conv2d: output, input gradient and every parameter gradient,
    float64, rel < 1e-10; backward_params gives the same parameter gradients."""
    config = {k: v for k, v in config.items() if k != "arch"}
    model = TopazUNet(seed=4, **config).to(xp, numpy.float64)
    old = TopazUNet(seed=4, **config).to(xp, numpy.float64)
    old.top = _two_op_top(old)
    rng = numpy.random.default_rng(5)
    x = to_device(rng.standard_normal((2, 1) + shape), xp)
    dy = to_device(rng.standard_normal((2, 1) + shape), xp)
    y, dx, grads = _run(model, x, dy)
    y_old, dx_old, grads_old = _run(old, x, dy)
    assert rel(y, y_old) < 1e-10 and rel(dx, dx_old) < 1e-10
    assert grads.keys() == grads_old.keys() and "dec1.0.w" in grads
    for k in grads:
        assert rel(grads[k], grads_old[k]) < 1e-10, k
    for _, layer in model.named_layers():
        for g in layer.grads.values():
            g[...] = 0
    model.forward(x)
    assert model.backward_params(dy) is None
    assert all(rel(layer.grads[p], grads[k]) < 1e-12 for k, layer, p in model.named_parameters())


def test_topaz_names_and_receptive_field_are_unchanged():
    """dec1.0 keeps a Conv2d's names and shapes (Topaz's .sav weights load unchanged); the
    receptive field is still 298 px (82 for unet-small); no up1 layer remains."""
    model = TopazUNet()
    names = [n for n, _ in model.named_layers()]
    assert "up1" not in names
    assert names[-6:] == ["up2", "dec2.0", "dec2.2", "dec1.0", "dec1.2", "dec1.4"]
    assert model.state()["dec1.0.w"].shape == (64, 97, 5, 5)
    assert model.state()["dec1.0.b"].shape == (64,)
    assert model.receptive_field == 298 and TopazUNet(depth=3).receptive_field == 82
    assert model.input_layers() == [model.enc[0].named[0][1], model.top]
