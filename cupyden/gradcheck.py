"""Finite-difference gradient checks, in two tiers (both in float64).

1. Elementwise (teaching): for each input entry e (and a sample of parameter entries),

       dL/dx_e ~ (L(x + h e) - L(x - h e)) / (2 h),   L(x) = <f(x), v>

   for a fixed random cotangent v, compared with the backward pass's dx = J^T v.
   Cost: two forward passes per entry, so tiny inputs only.

2. Directional (every size; HIPS/autograd's ``check_vjp``, Chainer's ``check_backward``):
   with a random direction u of unit length (over every input and every parameter at
   once) and a random cotangent v,

       <J u, v> ~ (<f(x + h u), v> - <f(x - h u), v>) / (2 h)   versus   <u, J^T v>

   which costs two forward passes whatever the number of parameters.

Relative error: |a - b| / max(|a|, |b|) (directional), ||a - b|| / max(||a||, ||b||)
(elementwise). Central differences in float64 with h = 1e-6 leave an error near 1e-9 on
smooth functions; inputs are drawn away from kinks (ReLU at 0, max-pool ties).
"""

from typing import Callable, List, NamedTuple

import numpy

from .backend import get_array_module
from .layers import (BatchNorm2d, Concat, Conv2d, Dropout, Flatten, LeakyReLU, Linear,
                     MaxPool2d, ReflectionPad2d, ReLU, Upsample2d)
from .losses import LOSSES, Objective
from .models import DnCNN, UNet
from .models.base import Model
from .optim.params import Parameters

TOLERANCE = 1e-6


class Case(NamedTuple):
    """One function to check.

    name : str
    forward : callable(list of arrays) -> array
    backward : callable(dy) -> list of arrays, one per input (fills ``params.grad``)
    inputs : list of float64 arrays
    params : Parameters or None
    """
    name: str
    forward: Callable
    backward: Callable
    inputs: List
    params: object


def _vdot(a, b):
    xp = get_array_module(a)
    return float(xp.vdot(a.ravel(), b.ravel()))


def directional_check(case, h=1e-6, seed=0):
    """Directional test <u, J^T v> vs <J u, v>; returns the relative error (float)."""
    xp = get_array_module(*case.inputs)
    rng = numpy.random.default_rng(seed)

    def draw(shape):
        return xp.asarray(rng.standard_normal(shape))

    y = case.forward(case.inputs)
    v = draw(y.shape)
    if case.params is not None:
        case.params.zero_grad()
    dxs = case.backward(v)
    us = [draw(x.shape) for x in case.inputs]
    up = draw(case.params.size) if case.params is not None else None
    # one direction of unit length over inputs and parameters together: the step h moves
    # the point by h in total, so few ReLU kinks lie within it even with 1e5 parameters
    norm = sum(_vdot(u, u) for u in us + ([up] if up is not None else [])) ** 0.5
    us = [u / norm for u in us]
    analytic = sum(_vdot(dx, u) for dx, u in zip(dxs, us))
    if case.params is not None:
        up /= norm
        analytic += _vdot(case.params.grad, up)
        p0 = case.params.data.copy()

    def f_at(sign):
        if case.params is not None:
            case.params.data[...] = p0 + sign * h * up
        return _vdot(case.forward([x + sign * h * u for x, u in zip(case.inputs, us)]), v)

    numeric = (f_at(1) - f_at(-1)) / (2 * h)
    if case.params is not None:
        case.params.data[...] = p0
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-300)


def elementwise_check(case, h=1e-6, seed=0, max_entries=64):
    """Elementwise central differences over input entries and sampled parameter entries.

    Every entry of inputs of up to ``max_entries`` entries, else a random sample of
    ``max_entries``; the same number of sampled parameter entries. Returns the relative
    error of the checked gradient entries (float).
    """
    xp = get_array_module(*case.inputs)
    rng = numpy.random.default_rng(seed)
    y = case.forward(case.inputs)
    v = xp.asarray(rng.standard_normal(y.shape))
    if case.params is not None:
        case.params.zero_grad()
    dxs = case.backward(v)
    analytic, numeric = [], []

    def entries(n):
        return range(n) if n <= max_entries else rng.choice(n, max_entries, replace=False)

    for x, dx in zip(case.inputs, dxs):
        flat, dflat = x.reshape(-1), dx.reshape(-1)
        for e in entries(flat.size):
            old = float(flat[e])
            flat[e] = old + h
            fp = _vdot(case.forward(case.inputs), v)
            flat[e] = old - h
            fm = _vdot(case.forward(case.inputs), v)
            flat[e] = old
            numeric.append((fp - fm) / (2 * h))
            analytic.append(float(dflat[e]))
    if case.params is not None:
        grad = case.params.grad.copy()
        data = case.params.data
        for e in entries(case.params.size):
            old = float(data[e])
            data[e] = old + h
            fp = _vdot(case.forward(case.inputs), v)
            data[e] = old - h
            fm = _vdot(case.forward(case.inputs), v)
            data[e] = old
            numeric.append((fp - fm) / (2 * h))
            analytic.append(float(grad[e]))
    a, n = numpy.array(analytic), numpy.array(numeric)
    return float(numpy.linalg.norm(a - n) / max(numpy.linalg.norm(a), numpy.linalg.norm(n), 1e-300))


class _One(Model):
    """A model of one layer, so that a layer's parameters get a flat buffer."""

    def __init__(self, layer):
        self.layer = layer
        self.named = [("layer", layer)]

    def path(self):
        return [self.layer]

    def forward(self, *xs):
        return self.layer.forward(*xs)

    def backward(self, dy):
        return self.layer.backward(dy)


def _away_from_zero(rng, shape, margin=0.1):
    """Random values with |x| >= margin (no ReLU kink within a finite-difference step)."""
    x = rng.standard_normal(shape)
    return numpy.sign(x) * (margin + numpy.abs(x))


def layer_case(name, layer, inputs, xp, training=True, reseed=False, dtype=numpy.float64):
    """A Case for a layer (or model) with its parameters in a flat buffer of ``dtype``."""
    model = layer if isinstance(layer, Model) else _One(layer)
    model.to(xp, dtype)
    model.train()
    if not training:
        for _, lay in model.named_layers():
            lay.training = False
    params = Parameters(model) if model.named_parameters() else None
    inputs = [xp.asarray(x, dtype) for x in inputs]

    def forward(xs):
        if reseed:
            for _, lay in model.named_layers():
                if isinstance(lay, Dropout):
                    lay.reseed()
        return model.forward(*xs)

    def backward(dy):
        out = model.backward(dy)
        return list(out) if isinstance(out, tuple) else [out]

    return Case(name, forward, backward, inputs, params)


def loss_case(name, xp, rng, dtype=numpy.float64, shape=(2, 1, 5, 6), objective=None,
              label=None):
    """A Case for a loss (or an Objective) against a fixed random target; the prediction
    is the input."""
    fwd, bwd = (objective.forward, objective.backward) if objective else LOSSES[name]
    pred = xp.asarray(rng.standard_normal(shape), dtype)
    target = xp.asarray(rng.standard_normal(shape), dtype)
    state = {}

    def forward(xs):
        loss, state["cache"] = fwd(xs[0], target)
        return loss.reshape(1)

    def backward(dy):
        return [bwd(state["cache"]) * dy.reshape(())]

    return Case(label or "loss " + name, forward, backward, [pred], None)


def all_cases(xp, seed=0, dtype=numpy.float64):
    """Every op (through its layer), loss and model, with small inputs.

    Parameters
    ----------
    xp : module
        numpy or cupy.
    seed : int
        The same seed gives the same inputs and weights on either module.
    dtype : numpy dtype
        float64 for gradient checks; float32 to compare devices.

    Returns
    -------
    list of Case
    """
    rng = numpy.random.default_rng(seed)
    r = rng.standard_normal
    cases = []

    def add(name, layer, inputs, **kw):
        cases.append(layer_case(name, layer, inputs, xp, dtype=dtype, **kw))
        return cases[-1]

    for k, s, p, hw in [(1, 1, 0, (5, 6)), (3, 1, 1, (6, 7)), (3, 2, 1, (7, 6)),
                        (5, 1, 2, (6, 6)), (5, 2, 2, (9, 8)), (7, 1, 3, (8, 7)),
                        (11, 1, 5, (12, 11))]:
        add("conv2d k%d s%d p%d" % (k, s, p), Conv2d(2, 3, k, stride=s, padding=p, rng=rng),
            [r((2, 2) + hw)])
    add("conv2d+relu", Conv2d(2, 3, 3, activation="relu", rng=rng), [r((2, 2, 6, 5))])
    add("conv2d+leaky_relu 0.1", Conv2d(2, 3, 3, activation="leaky_relu", slope=0.1, rng=rng),
        [r((2, 2, 5, 6))])
    add("relu", ReLU(), [_away_from_zero(rng, (2, 3, 4, 5))])
    add("leaky_relu 0.1", LeakyReLU(0.1), [_away_from_zero(rng, (2, 3, 4, 5))])
    add("maxpool2d 2", MaxPool2d(2), [r((2, 2, 6, 7))])
    add("upsample2d x2", Upsample2d(), [r((2, 2, 3, 4))])
    odd = Upsample2d()                      # output size given, as from a skip connection
    case = layer_case("upsample2d to 7x9", odd, [r((2, 2, 3, 4))], xp, dtype=dtype)
    cases.append(case._replace(forward=lambda xs: odd.forward(xs[0], (7, 9))))
    add("concat", Concat(), [r((2, 2, 3, 4)), r((2, 3, 3, 4))])
    add("flatten", Flatten(), [r((2, 2, 3, 4))])
    add("reflection_pad2d 2", ReflectionPad2d(2), [r((2, 2, 5, 4))])
    add("batchnorm2d train", BatchNorm2d(3), [r((4, 3, 3, 2))])
    add("batchnorm2d eval", BatchNorm2d(3), [r((4, 3, 3, 2))], training=False)
    add("dropout 0.3", Dropout(0.3, seed=1), [r((2, 3, 4, 5))], reseed=True)
    add("linear", Linear(7, 4, rng=rng), [r((3, 7))])
    for name in sorted(LOSSES):
        shape = (2, 1, 13, 14) if name == "ssim" else (2, 1, 5, 6)   # SSIM: 11 px window
        cases.append(loss_case(name, xp, rng, dtype, shape))
    w = xp.asarray(rng.uniform(0.1, 1.0, (5, 4)), dtype)            # per-frequency weights
    cases.append(loss_case("fourier", xp, rng, dtype, objective=Objective([("fourier", 1.0)], w),
                           label="loss fourier, ring-weighted"))
    mix = Objective([("mse", 1.0), ("fourier", 0.1), ("ssim", 0.2), ("gradient", 0.3)])
    cases.append(loss_case("mix", xp, rng, dtype, (2, 1, 12, 13), objective=mix,
                           label="loss mse+fourier+ssim+gradient"))
    add("model dncnn-12/32", DnCNN(12, 32, seed=seed), [r((1, 1, 12, 12))])
    add("model dncnn-4/8", DnCNN(4, 8, seed=seed), [r((2, 1, 7, 6))])
    add("model unet base 4", UNet(base=4, seed=seed), [r((2, 1, 13, 11))])
    return cases
