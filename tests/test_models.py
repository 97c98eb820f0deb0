"""Model structure: parameter counts, receptive fields, sizes."""

import numpy
import pytest

from cupyden.models import DnCNN, UNet, build_model
from cupyden.optim import Parameters


def test_dncnn_12_32_has_93089_parameters():
    assert DnCNN(depth=12, width=32).n_parameters() == 93089


def test_dncnn_receptive_field_is_computed_from_layers():
    assert DnCNN(12, 32).receptive_field == 25
    assert DnCNN(17, 64).receptive_field == 35


def test_unet_receptive_field():
    # two 3x3 convs per level, three 2x pools: 1 + 4 + 1 + 8 + 2 + 16 + 4 + 32 + 16 + 8 + 4 = 96
    assert UNet().receptive_field == 96


@pytest.mark.parametrize("hw", [(16, 16), (13, 21), (8, 9), (3, 5)])
def test_unet_any_size(xp, hw):
    model = UNet(base=4).to(xp, numpy.float32)
    x = xp.ones((1, 1) + hw, numpy.float32)
    y = model.forward(x)
    assert y.shape == x.shape
    assert model.backward(xp.ones_like(y)).shape == x.shape


def test_config_round_trip():
    for model in (DnCNN(6, 8, seed=3), UNet(base=8, seed=1)):
        again = build_model(model.config())
        a, b = model.state(), again.state()
        assert a.keys() == b.keys()
        assert all(numpy.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("config", [
    {"arch": "dncnn", "depth": 4, "width": 6},
    {"arch": "unet", "base": 4},
    {"arch": "topaz-unet", "nf": 4, "depth": 2, "base_width": 5, "top_width": 3}])
def test_backward_params_equals_backward_without_the_input_gradient(xp, config):
    """A training step's backward (backward_params: the input layer skips dx) gives the
    same parameter gradients, to the bit, as the full backward; the input layer computes
    its dx again afterwards."""
    model = build_model(config).to(xp, numpy.float64)
    params = Parameters(model)
    rng = numpy.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 1, 16, 12)))
    dy = xp.asarray(rng.standard_normal((2, 1, 16, 12)))
    model.forward(x)
    params.zero_grad()
    assert model.backward(dy).shape == x.shape
    full = params.grad.copy()
    params.zero_grad()
    model.forward(x)
    assert model.backward_params(dy) is None
    assert bool((params.grad == full).all())
    assert all(layer.input_grad for layer in model.input_layers())
    model.forward(x)
    assert model.backward(dy).shape == x.shape
