"""ReLU and LeakyReLU: the first ops a student should read.

ReLU: y = max(x, 0); dy/dx = 1 where x > 0, else 0 (the kink at 0 takes 0).
LeakyReLU (Maas et al. 2013): y = x where x > 0, else slope * x; dy/dx = 1 or slope.

Each expression is evaluated on views in the input's memory order
(``backend.in_memory_order``), so a channels-last input gives a channels-last output on
the GPU too (CuPy allocates C order and walks the logical order otherwise).
"""

from typing import NamedTuple

from ..backend import get_array_module, in_memory_order


class ActivationCache(NamedTuple):
    """What the backward pass needs: the sign pattern of the input.

    positive : bool array, shape of x
        True where x > 0.
    slope : float
        0 for ReLU.
    """
    positive: object
    slope: float


def relu_forward(x):
    """ReLU forward.

    Parameters
    ----------
    x : array, any shape, float

    Returns
    -------
    y : array, shape and dtype of x
    cache : ActivationCache
    """
    return leaky_relu_forward(x, 0.0)


def relu_backward(dy, cache):
    """ReLU backward: dx = dy where x > 0, else 0."""
    return leaky_relu_backward(dy, cache)


def leaky_relu_forward(x, slope=0.01):
    """LeakyReLU forward: y = x if x > 0 else slope * x.

    Parameters
    ----------
    x : array, any shape, float
    slope : float
        Slope for x <= 0 (Topaz-Denoise uses 0.1).

    Returns
    -------
    y : array, shape, dtype and memory layout of x
    cache : ActivationCache
    """
    xp = get_array_module(x)
    (v,), undo = in_memory_order(x)
    positive = v > 0
    y = v * xp.where(positive, x.dtype.type(1), x.dtype.type(slope))
    return y.transpose(undo), ActivationCache(positive.transpose(undo), slope)


def leaky_relu_backward(dy, cache):
    """LeakyReLU backward: dx = dy * (1 if x > 0 else slope)."""
    xp = get_array_module(dy)
    (p, g), undo = in_memory_order(cache.positive, dy)
    return (g * xp.where(p, dy.dtype.type(1), dy.dtype.type(cache.slope))).transpose(undo)


def activate_(y, slope):
    """Apply LeakyReLU (ReLU when ``slope == 0``) to ``y`` in place; used by fused ops.

    Parameters
    ----------
    y : array, float, modified in place
    slope : float or None
        None means no activation.
    """
    if slope is None:
        return
    xp = get_array_module(y)
    (v,), _ = in_memory_order(y)
    if slope == 0.0:
        xp.maximum(v, 0, out=v)
    else:
        v *= xp.where(v > 0, y.dtype.type(1), y.dtype.type(slope))


def activation_backward(dy, y, slope):
    """Gradient through a fused activation, from its output ``y``: dy * act'(y).

    For slope >= 0, y > 0 exactly where the pre-activation was > 0, so the output is
    enough to take the derivative (no need to keep the pre-activation).

    Parameters
    ----------
    dy : array, shape of y
    y : array
        The activation's output.
    slope : float or None
        None means no activation (dy is returned as is).

    Returns
    -------
    dz : array, shape of y, y's memory layout
    """
    if slope is None:
        return dy
    xp = get_array_module(dy)
    (v, g), undo = in_memory_order(y, dy)
    return (g * xp.where(v > 0, dy.dtype.type(1), dy.dtype.type(slope))).transpose(undo)
