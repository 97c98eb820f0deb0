"""Inverted dropout (Srivastava et al. 2014): y = x * mask / (1 - p), mask ~ Bernoulli(1 - p).

The mask is drawn by the caller (the Dropout layer, from its own seeded generator) so
that the op is a pure function and can be gradient-checked with a fixed mask. Products are
taken in x's memory order, so the output keeps x's layout (channels-last on cuDNN's path).
"""

from ..backend import in_memory_order


def dropout_forward(x, mask, p):
    """Dropout forward.

    Parameters
    ----------
    x : array, any shape
    mask : bool array, shape of x
        True for kept elements.
    p : float
        Drop probability in [0, 1).

    Returns
    -------
    y : array, shape and memory layout of x
    cache : array
        The scaled mask, mask / (1 - p), dtype of x.
    """
    (v, m), undo = in_memory_order(x, mask)
    scale = (m / (1.0 - p)).astype(x.dtype)
    return (v * scale).transpose(undo), scale.transpose(undo)


def dropout_backward(dy, cache):
    """dx = dy * mask / (1 - p)."""
    (s, g), undo = in_memory_order(cache, dy)
    return (g * s).transpose(undo)
