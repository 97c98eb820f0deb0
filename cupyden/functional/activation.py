"""ReLU and LeakyReLU: the first ops a student should read.

ReLU: y = max(x, 0); dy/dx = 1 where x > 0, else 0 (the kink at 0 takes 0).
LeakyReLU (Maas et al. 2013): y = x where x > 0, else slope * x; dy/dx = 1 or slope.
"""

from typing import NamedTuple

import numpy

from ..backend import dense_order, empty_like_memory, get_array_module, is_gpu_array


def copy_like(a, like):
    """``a`` copied into memory laid out like ``like`` (same shape)."""
    out = empty_like_memory(like)
    out[...] = a
    return out


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
    y : array, shape and dtype of x
    cache : ActivationCache
    """
    xp = get_array_module(x)
    positive = x > 0
    y = x * xp.where(positive, x.dtype.type(1), x.dtype.type(slope))
    return y, ActivationCache(positive, slope)


def leaky_relu_backward(dy, cache):
    """LeakyReLU backward: dx = dy * (1 if x > 0 else slope)."""
    xp = get_array_module(dy)
    return dy * xp.where(cache.positive, dy.dtype.type(1), dy.dtype.type(cache.slope))


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
    if slope == 0.0:
        xp.maximum(y, 0, out=y)
    else:
        y *= xp.where(y > 0, y.dtype.type(1), y.dtype.type(slope))


def activation_backward(dy, y, slope):
    """Gradient through a fused activation, from its output ``y``.

    For slope >= 0, y > 0 exactly where the pre-activation was > 0, so the output is
    enough to take the derivative (no need to keep the pre-activation).

    Parameters
    ----------
    dy : array, shape of y
    y : array
        The activation's output.
    slope : float or None
        None means no activation (dy is returned as is).
    """
    if slope is None:
        return dy
    xp = get_array_module(dy)
    if is_gpu_array(dy):
        from ..kernels.activation import activation_backward_kernel
        dz = empty_like_memory(y)             # y's memory layout (channels-last for cuDNN)
        order = dense_order(y)
        if dy.strides != y.strides:
            dy = copy_like(dy, dz)
        # on 1-D views of the three when their memory is dense (CuPy indexes n-d and
        # permuted strides with a division per axis and element)
        views = [a.transpose(order) for a in (dy, y, dz)]
        if all(v.flags.c_contiguous for v in views):
            views = [v.reshape(-1) for v in views]
        activation_backward_kernel(views[0], views[1], numpy.float64(slope), views[2])
        return dz
    return dy * xp.where(y > 0, dy.dtype.type(1), dy.dtype.type(slope))
