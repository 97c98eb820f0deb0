"""Parameter-free layers and small ones: activations, pooling, upsampling, padding,
concatenation, flatten, dropout, linear, batch normalisation."""

import math

import numpy

from ..backend import default_rng, get_array_module, in_memory_order
from ..functional import activation as act
from ..functional.batchnorm import batchnorm_backward, batchnorm_forward
from ..functional.dropout import dropout_backward, dropout_forward
from ..functional.linear import linear_backward, linear_forward
from ..functional.pool import maxpool2d_backward, maxpool2d_forward
from ..functional.shape import (concat_backward, concat_forward, flatten_backward,
                                flatten_forward, reflection_pad2d_backward,
                                reflection_pad2d_forward)
from ..functional.upsample import (upsample2d_backward, upsample2d_forward,
                                   upsample_concat_backward, upsample_concat_forward)
from .base import Layer


class ReLU(Layer):
    """y = max(x, 0)."""

    def forward(self, x):
        y, self.cache = act.relu_forward(x)
        return y

    def backward(self, dy):
        return act.relu_backward(dy, self.cache)


class LeakyReLU(Layer):
    """y = x if x > 0 else slope * x."""

    def __init__(self, slope=0.01):
        super().__init__()
        self.slope = slope

    def forward(self, x):
        y, self.cache = act.leaky_relu_forward(x, self.slope)
        return y

    def backward(self, dy):
        return act.leaky_relu_backward(dy, self.cache)


class MaxPool2d(Layer):
    """Max pooling, window = stride = ``kernel`` pixels."""

    def __init__(self, kernel=2):
        super().__init__()
        self.kernel = kernel
        self.rf = (kernel, kernel)

    def forward(self, x):
        y, self.cache = maxpool2d_forward(x, self.kernel)
        return y

    def backward(self, dy):
        return maxpool2d_backward(dy, self.cache)


class Upsample2d(Layer):
    """Nearest upsampling to ``size`` (by default twice the input size)."""

    rf = (1, 0.5)

    def forward(self, x, size=None):
        size = (2 * x.shape[2], 2 * x.shape[3]) if size is None else tuple(size)
        y, self.cache = upsample2d_forward(x, size)
        return y

    def backward(self, dy):
        return upsample2d_backward(dy, self.cache)


class UpsampleConcat(Layer):
    """A U-Net decoder's input: nearest upsampling of x to the skip's size, concatenated
    with the skip along channels (2-D or 3-D; ``functional.upsample``).

    ``forward(x, skip)``; ``backward(dy)`` returns (dx, dskip).
    """

    rf = (1, 0.5)

    def forward(self, x, skip):
        y, self.cache = upsample_concat_forward(x, skip)
        return y

    def backward(self, dy):
        return upsample_concat_backward(dy, self.cache)


class Concat(Layer):
    """Channel concatenation of two inputs (a skip connection)."""

    def forward(self, a, b):
        y, self.cache = concat_forward(a, b)
        return y

    def backward(self, dy):
        """Returns (da, db)."""
        return concat_backward(dy, self.cache)


class Flatten(Layer):
    """(N, ...) -> (N, D)."""

    def forward(self, x):
        y, self.cache = flatten_forward(x)
        return y

    def backward(self, dy):
        return flatten_backward(dy, self.cache)


class ReflectionPad2d(Layer):
    """Reflection padding by ``padding`` pixels on each side."""

    def __init__(self, padding=1):
        super().__init__()
        self.padding = padding

    def forward(self, x):
        y, self.cache = reflection_pad2d_forward(x, self.padding)
        return y

    def backward(self, dy):
        return reflection_pad2d_backward(dy, self.cache)


class Dropout(Layer):
    """Inverted dropout with drop probability ``p``; identity in evaluation mode.

    The mask comes from the layer's own generator, seeded by ``seed``; ``reseed`` sets
    it again (gradient checks reuse one mask across forward passes).
    """

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        self.p = p
        self.seed = seed
        self._rng = None

    def reseed(self, seed=None):
        self._rng = None
        if seed is not None:
            self.seed = seed

    def forward(self, x):
        if not self.training or self.p == 0:
            self.cache = None
            return x
        xp = get_array_module(x)
        if self._rng is None:
            self._rng = default_rng(xp, self.seed)
        (v,), undo = in_memory_order(x)          # drawn in x's memory order, like x
        mask = (self._rng.random(v.shape, dtype=numpy.float32) >= self.p).transpose(undo)
        y, cache = dropout_forward(x, mask, self.p)
        self.cache = cache if self.keep_cache else None   # Monte-Carlo dropout at inference
        return y

    def backward(self, dy):
        return dy if self.cache is None else dropout_backward(dy, self.cache)


class Linear(Layer):
    """y = x w^T + b; w (F, D) initialised uniform in +-1/sqrt(D) (PyTorch's default)."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        rng = numpy.random.default_rng(0) if rng is None else rng
        bound = 1.0 / math.sqrt(in_features)
        self._add_param("w", rng.uniform(-bound, bound, (out_features, in_features)))
        if bias:
            self._add_param("b", rng.uniform(-bound, bound, out_features))

    def forward(self, x):
        y, self.cache = linear_forward(x, self.params["w"], self.params.get("b"))
        return y

    def backward(self, dy):
        dx, dw, db = linear_backward(dy, self.cache)
        self.grads["w"] += dw
        if "b" in self.params:
            self.grads["b"] += db
        return dx


class BatchNorm2d(Layer):
    """Batch normalisation with running statistics (momentum 0.1, eps 1e-5).

    Attributes
    ----------
    params : {"gamma": (C,), "beta": (C,)}
    buffers : {"running_mean": (C,), "running_var": (C,)}
    """

    def __init__(self, channels, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self._add_param("gamma", numpy.ones(channels))
        self._add_param("beta", numpy.zeros(channels))
        self.buffers = {"running_mean": numpy.zeros(channels),
                        "running_var": numpy.ones(channels)}

    def forward(self, x):
        y, self.cache = batchnorm_forward(
            x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
            self.buffers["running_var"], self.training, self.momentum, self.eps)
        return y

    def backward(self, dy):
        dx, dgamma, dbeta = batchnorm_backward(dy, self.cache)
        self.grads["gamma"] += dgamma
        self.grads["beta"] += dbeta
        return dx
