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

Relative error: |a - b| / max(|a|, |b|) (directional, along a direction with a component
on the gradient), ||a - b|| / max(||a||, ||b||) (elementwise). Central differences in float64 with
h = 1e-6 leave an error near 1e-9 on smooth functions. Kinks (ReLU at 0, max-pool ties)
are avoided where inputs can be chosen, and detected where they cannot (inside models):
a kink within the step makes the differences at h and h/2 disagree; the step then shrinks,
and a direction or entry too close to a kink is redrawn or skipped.
"""

from typing import Callable, List, NamedTuple

import numpy

from .backend import get_array_module
from .layers import (BatchNorm2d, BatchNorm3d, Concat, Conv2d, Conv3d, Dropout, Flatten,
                     LeakyReLU, Linear, MaxPool2d, MaxPool3d, ReflectionPad2d, ReflectionPad3d,
                     ReLU, Upsample2d, Upsample3d, UpsampleConcat, UpsampleConcatConv2d)
from .losses import LOSSES, Objective
from .losses.contrastive import contrastive_backward, contrastive_forward
from .models import DnCNN, F2FdUNet, Siamese, TopazUNet, UNet, UNet3d
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


def _kinked(n1, n2, f0):
    """True when central differences at h and h/2 disagree: a kink (ReLU at 0, a max-pool
    tie) lies within the step, where no finite difference is valid.

    On a smooth function they differ by about h^2 times the third derivative (~1e-12)
    plus rounding, about eps |f0| / h ~ 4e-10 |f0| with f0 = <f(x), v>; the tolerance is
    well above both.
    """
    return abs(n1 - n2) > 1e-6 * max(abs(n1), abs(n2)) + 1e-8 * abs(f0)


def _derivative(f_at, h, f0):
    """Central difference of t -> f_at(t) at 0, or None when a kink lies too close.

    Tries the steps h, h/4 and h/16: the first whose difference agrees with the one at
    half the step is used (a kink closer than the step spoils the larger steps only).
    """
    for step in (h, h / 4, h / 16):
        n1 = (f_at(step) - f_at(-step)) / (2 * step)
        n2 = (f_at(step / 2) - f_at(-step / 2)) / step
        if not _kinked(n1, n2, f0):
            return n2
    return None


def directional_check(case, h=1e-6, seed=0, tries=5):
    """Directional test <u, J^T v> vs <J u, v>; returns the relative error (float).

    u is a unit direction half along the analytic gradient g = J^T v and half random:
    u = (g/||g|| + r/||r||) normalised. Then <u, g> is about ||g|| / sqrt(2), so the
    relative error |a - n| / max(|a|, |n|) cannot blow up by chance (a purely random u in
    D dimensions is nearly orthogonal to g), while an error in the gradient's scale shows
    in full. Near a kink the step shrinks (see :func:`_derivative`); a direction too close
    to one is redrawn, up to ``tries`` times.
    """
    xp = get_array_module(*case.inputs)
    rng = numpy.random.default_rng(seed)

    def draw(shape):
        return xp.asarray(rng.standard_normal(shape))

    y = case.forward(case.inputs)
    v = draw(y.shape)
    if case.params is not None:
        case.params.zero_grad()
    f0 = _vdot(y, v)
    dxs = case.backward(v)
    grads = list(dxs) + ([case.params.grad.copy()] if case.params is not None else [])
    gnorm = sum(_vdot(g, g) for g in grads) ** 0.5
    p0 = case.params.data.copy() if case.params is not None else None
    for _ in range(tries):
        # one direction over inputs and parameters together: gradient part + random part
        rs = [draw(g.shape) for g in grads]
        rnorm = sum(_vdot(r, r) for r in rs) ** 0.5
        us = [r / rnorm + (g / gnorm if gnorm > 0 else 0) for r, g in zip(rs, grads)]
        norm = sum(_vdot(u, u) for u in us) ** 0.5
        us = [u / norm for u in us]
        analytic = sum(_vdot(g, u) for g, u in zip(grads, us))

        def f_at(t):
            if case.params is not None:
                case.params.data[...] = p0 + t * us[-1]
            return _vdot(case.forward([x + t * u for x, u in zip(case.inputs, us)]), v)

        numeric = _derivative(f_at, h, f0)
        if case.params is not None:
            case.params.data[...] = p0
        if numeric is not None:
            break
    if numeric is None:
        return float("inf")
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-300)


def elementwise_check(case, h=1e-6, seed=0, max_entries=64):
    """Elementwise central differences over input entries and sampled parameter entries.

    Every entry of inputs of up to ``max_entries`` entries, else a random sample of
    ``max_entries``; the same number of sampled parameter entries. Near a kink the step
    shrinks (see :func:`_derivative`); entries too close to one are skipped, and more than
    a fifth skipped counts as a failure. Returns the relative error ||a - n|| / max(||a||, ||n||)
    of the checked gradient entries (float).
    """
    xp = get_array_module(*case.inputs)
    rng = numpy.random.default_rng(seed)
    y = case.forward(case.inputs)
    v = xp.asarray(rng.standard_normal(y.shape))
    f0 = _vdot(y, v)
    if case.params is not None:
        case.params.zero_grad()
    dxs = case.backward(v)
    targets = [(x.reshape(-1), dx.reshape(-1)) for x, dx in zip(case.inputs, dxs)]
    if case.params is not None:
        targets.append((case.params.data, case.params.grad.copy()))
    analytic, numeric, skipped = [], [], 0
    for flat, dflat in targets:
        n = flat.size
        for e in (range(n) if n <= max_entries else rng.choice(n, max_entries, replace=False)):
            old = float(flat[e])

            def f_at(t):
                flat[e] = old + t
                return _vdot(case.forward(case.inputs), v)

            n = _derivative(f_at, h, f0)
            flat[e] = old
            if n is None:
                skipped += 1
                continue
            numeric.append(n)
            analytic.append(float(dflat[e]))
    if skipped > 0.2 * (skipped + len(numeric)):
        return float("inf")
    a, n = numpy.array(analytic), numpy.array(numeric)
    return float(numpy.linalg.norm(a - n) / max(numpy.linalg.norm(a), numpy.linalg.norm(n), 1e-300))


class _One(Model):
    """A model of one layer, so that a layer's parameters get a flat buffer."""

    def __init__(self, layer):
        self.layer = layer
        self.named = [("layer", layer)]

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
              label=None, related=False):
    """A Case for a loss (or an Objective) against a fixed random target; the prediction
    is the input. ``related``: the target is the prediction plus noise (MS-SSIM clips
    negative means, which unrelated images give, to a constant)."""
    fwd, bwd = (objective.forward, objective.backward) if objective else LOSSES[name]
    p = rng.standard_normal(shape)
    pred = xp.asarray(p, dtype)
    target = xp.asarray(p + 0.5 * rng.standard_normal(shape) if related
                        else rng.standard_normal(shape), dtype)
    state = {}

    def forward(xs):
        loss, state["cache"] = fwd(xs[0], target)
        return loss.reshape(1)

    def backward(dy):
        return [bwd(state["cache"]) * dy.reshape(())]

    return Case(label or "loss " + name, forward, backward, [pred], None)


def contrastive_case(xp, rng, dtype=numpy.float64):
    """The contrastive loss on pairs drawn away from d = 0 and d = margin: half the pairs
    at distance ~0.5-1.2, half at ~2.8-4."""
    N, D = 8, 5
    e2 = rng.standard_normal((N, D))
    direction = rng.standard_normal((N, D))
    direction /= numpy.linalg.norm(direction, axis=1, keepdims=True)
    dist = numpy.where(numpy.arange(N) % 2 == 0, rng.uniform(0.5, 1.2, N), rng.uniform(2.8, 4, N))
    dist[1::4] = rng.uniform(0.5, 1.5, len(dist[1::4]))        # different pairs inside the margin
    e1 = e2 + direction * dist[:, None]
    y = xp.asarray(numpy.arange(N) % 2, dtype)                # 0 same, 1 different
    state = {}

    def forward(xs):
        loss, state["c"] = contrastive_forward(xs[0], xs[1], y)
        return loss.reshape(1)

    def backward(dy):
        return [g * dy.reshape(()) for g in contrastive_backward(state["c"])]

    return Case("loss contrastive", forward, backward,
                [xp.asarray(e1, dtype), xp.asarray(e2, dtype)], None)


def siamese_pair_case(xp, rng, dtype=numpy.float64, seed=0):
    """Both branches of the Siamese network with shared weights, output [e1, e2]."""
    model = Siamese(box=6, embedding=4, seed=seed).to(xp, dtype).train()
    params = Parameters(model)
    inputs = [xp.asarray(rng.standard_normal((4, 1, 6, 6)), dtype) for _ in range(2)]

    def forward(xs):
        e1, e2 = model.forward_pair(xs[0], xs[1])
        return xp.concatenate([e1, e2], axis=1)

    def backward(dy):
        D = model.embedding
        return list(model.backward_pair(dy[:, :D], dy[:, D:]))

    return Case("model siamese pair", forward, backward, inputs, params)


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
    add("upsample+concat to 7x9", UpsampleConcat(), [r((2, 2, 3, 4)), r((2, 3, 7, 9))])
    add("flatten", Flatten(), [r((2, 2, 3, 4))])
    add("reflection_pad2d 2", ReflectionPad2d(2), [r((2, 2, 5, 4))])
    add("batchnorm2d train", BatchNorm2d(3), [r((4, 3, 3, 2))])
    add("batchnorm2d eval", BatchNorm2d(3), [r((4, 3, 3, 2))], training=False)
    add("dropout 0.3", Dropout(0.3, seed=1), [r((2, 3, 4, 5))], reseed=True)
    add("linear", Linear(7, 4, rng=rng), [r((3, 7))])
    add("conv3d k3", Conv3d(2, 3, 3, rng=rng), [r((2, 2, 4, 5, 3))])
    add("conv3d k1", Conv3d(2, 2, 1, rng=rng), [r((1, 2, 3, 2, 4))])
    add("conv3d k3+leaky_relu 0.1", Conv3d(2, 2, 3, activation="leaky_relu", slope=0.1,
                                            rng=rng), [r((1, 2, 3, 4, 4))])
    add("maxpool3d 2", MaxPool3d(2), [r((2, 2, 4, 5, 4))])
    add("upsample3d x2", Upsample3d(), [r((1, 2, 2, 3, 2))])
    up3 = Upsample3d()                      # to a skip connection's odd size
    case = layer_case("upsample3d to 5x7x3", up3, [r((1, 2, 2, 3, 2))], xp, dtype=dtype)
    cases.append(case._replace(forward=lambda xs: up3.forward(xs[0], (5, 7, 3))))
    add("upsample+concat 3-D to 5x4x6", UpsampleConcat(), [r((1, 2, 2, 2, 3)),
                                                           r((1, 2, 5, 4, 6))])
    add("reflection_pad3d", ReflectionPad3d(((1, 2), (0, 3), (2, 1))), [r((1, 2, 3, 4, 5))])
    add("batchnorm3d train", BatchNorm3d(2), [r((2, 2, 3, 2, 3))])
    add("dropout 0.3 on a volume", Dropout(0.3, seed=2), [r((1, 2, 3, 4, 3))], reseed=True)
    for name in sorted(LOSSES):
        shape = {"ssim": (2, 1, 13, 14), "msssim": (2, 1, 24, 23)}.get(name, (2, 1, 5, 6))
        cases.append(loss_case(name, xp, rng, dtype, shape, related=name == "msssim"))
    w = xp.asarray(rng.uniform(0.1, 1.0, (5, 4)), dtype)            # per-frequency weights
    cases.append(loss_case("fourier", xp, rng, dtype, objective=Objective([("fourier", 1.0)], w),
                           label="loss fourier, ring-weighted"))
    mix = Objective([("mse", 1.0), ("fourier", 0.1), ("ssim", 0.2), ("gradient", 0.3)])
    cases.append(loss_case("mix", xp, rng, dtype, (2, 1, 12, 13), objective=mix,
                           label="loss mse+fourier+ssim+gradient"))
    cases.append(contrastive_case(xp, rng, dtype))
    cases.append(siamese_pair_case(xp, rng, dtype, seed))
    add("model dncnn-12/32", DnCNN(12, 32, seed=seed), [r((1, 1, 12, 12))])
    add("model dncnn-4/8", DnCNN(4, 8, seed=seed), [r((2, 1, 7, 6))])
    add("model unet base 4", UNet(base=4, seed=seed), [r((2, 1, 13, 11))])
    add("model topaz-unet depth 2, unpadded",
        TopazUNet(nf=2, base_width=3, top_width=3, depth=2, pad=False, seed=seed),
        [r((2, 1, 9, 11))])
    add("model topaz-unet depth 2, padded",
        TopazUNet(nf=2, base_width=5, top_width=3, depth=2, pad=True, seed=seed),
        [r((1, 1, 10, 7))])
    add("model f2fd-unet 2-D depth 2, dropout 0.3",
        F2FdUNet(ndim=2, nf=2, depth=2, dropout_p=0.3, seed=seed), [r((2, 1, 8, 12))],
        reseed=True)
    add("model f2fd-unet 3-D depth 1, dropout 0.3",
        F2FdUNet(ndim=3, nf=2, depth=1, dropout_p=0.3, seed=seed), [r((1, 1, 4, 2, 6))],
        reseed=True)
    add("model unet3d base 2 depth 2 (padded, residual)", UNet3d(base=2, depth=2, seed=seed),
        [r((1, 1, 5, 6, 7))])
    add("upsample+concat+conv2d k5 (phases) + leaky_relu 0.1",   # last: earlier draws kept
        UpsampleConcatConv2d(3, 4, 5, activation="leaky_relu", slope=0.1, rng=rng),
        [r((2, 2, 3, 4)), r((2, 1, 6, 8))])
    add("upsample+concat+conv2d k3 to 7x9", UpsampleConcatConv2d(4, 3, 3, rng=rng),
        [r((2, 2, 3, 4)), r((2, 2, 7, 9))])
    return cases
