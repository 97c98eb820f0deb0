"""Both gradient-check tiers pass, in float64, for every op, loss and model."""

import numpy
import pytest

from cupyden import gradcheck
from cupyden.backend import to_host

from conftest import rel

NAMES = [c.name for c in gradcheck.all_cases(numpy)]


@pytest.mark.parametrize("name", NAMES)
def test_gradients(xp, name):
    case = next(c for c in gradcheck.all_cases(xp) if c.name == name)
    assert gradcheck.directional_check(case) < gradcheck.TOLERANCE
    assert gradcheck.elementwise_check(case) < gradcheck.TOLERANCE


def test_directional_check_catches_a_wrong_gradient():
    case = next(c for c in gradcheck.all_cases(numpy) if c.name == "relu")
    wrong = case._replace(backward=lambda dy: [x * 1.01 for x in case.backward(dy)])
    assert gradcheck.directional_check(wrong) > 1e-3
    assert gradcheck.elementwise_check(wrong) > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in NAMES if "dropout" not in n])
def test_cupy_equals_numpy_float32(name):
    """Every op's CuPy forward and backward equal NumPy's in float32 (rel < 1e-5).

    Dropout, and the models with dropout (F2Fd's U-Nets), are left out: the two modules
    draw different masks from the same seed.
    """
    cupy = pytest.importorskip("cupy")
    from cupyden.backend import gpu_count
    if gpu_count() == 0:
        pytest.skip("no GPU")
    results = []
    for xp in (numpy, cupy):
        case = next(c for c in gradcheck.all_cases(xp, dtype=numpy.float32) if c.name == name)
        y = case.forward(case.inputs)
        dy = xp.asarray(numpy.random.default_rng(9).standard_normal(y.shape), numpy.float32)
        if case.params is not None:
            case.params.zero_grad()
        grads = case.backward(dy)
        if case.params is not None:          # by name: the GPU keeps filters channels-last
            named = case.params.named(case.params.grad)
            grads = grads + [named[n] for n in case.params.names]
        results.append([to_host(a) for a in [y] + grads])
    for a, b in zip(*results):
        assert rel(b, a) < 1e-5
