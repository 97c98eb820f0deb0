"""3-D layers for tomograms: Conv3d, MaxPool3d, Upsample3d, BatchNorm3d, ReflectionPad3d.

Dropout, Concat, ReLU and LeakyReLU work on volumes unchanged (they do not look at the
spatial axes).
"""

import math

import numpy

from ..functional.volume import (conv3d_backward, conv3d_forward, maxpool3d_backward,
                                 maxpool3d_forward, reflection_pad3d_backward,
                                 reflection_pad3d_forward, upsample3d_backward,
                                 upsample3d_forward)
from .base import Layer
from .simple import BatchNorm2d


class Conv3d(Layer):
    """3-D convolution, stride 1, "same" zero padding, optional bias and fused activation.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Odd (3 in F2Fd's U-Net).
    bias : bool
    activation : None, "relu" or "leaky_relu"
    slope : float
        Negative slope of the leaky ReLU.
    rng : numpy.random.Generator or None
        He normal initial weights, std = sqrt(2 / fan_in) (He et al. 2015); bias 0.

    Attributes
    ----------
    params : {"w": (F, C, K, K, K), "b": (F,)}
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, bias=True, activation=None,
                 slope=0.01, rng=None):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd, got %d" % kernel_size)
        rng = numpy.random.default_rng(0) if rng is None else rng
        self.slope = {None: None, "relu": 0.0, "leaky_relu": slope}[activation]
        fan_in = in_channels * kernel_size ** 3
        self._add_param("w", rng.standard_normal(
            (out_channels, in_channels) + (kernel_size,) * 3) * math.sqrt(2.0 / fan_in))
        if bias:
            self._add_param("b", numpy.zeros(out_channels))
        self.rf = (kernel_size, 1)

    def forward(self, x):
        y, cache = conv3d_forward(x, self.params["w"], self.params.get("b"), self.slope)
        self.cache = cache if self.keep_cache else None      # inference keeps no padded copy
        return y

    def backward(self, dy):
        dx, dw, db = conv3d_backward(dy, self.cache)
        self.grads["w"] += dw
        if "b" in self.params:
            self.grads["b"] += db
        return dx


class MaxPool3d(Layer):
    """Max pooling, window = stride = ``kernel`` voxels."""

    def __init__(self, kernel=2):
        super().__init__()
        self.kernel = kernel
        self.rf = (kernel, kernel)

    def forward(self, x):
        y, cache = maxpool3d_forward(x, self.kernel)
        self.cache = cache if self.keep_cache else None
        return y

    def backward(self, dy):
        return maxpool3d_backward(dy, self.cache)


class Upsample3d(Layer):
    """Nearest upsampling to ``size`` (D, H, W) (by default twice the input size)."""

    rf = (1, 0.5)

    def forward(self, x, size=None):
        size = tuple(2 * n for n in x.shape[2:]) if size is None else tuple(size)
        y, cache = upsample3d_forward(x, size)
        self.cache = cache if self.keep_cache else None
        return y

    def backward(self, dy):
        return upsample3d_backward(dy, self.cache)


class BatchNorm3d(BatchNorm2d):
    """Batch normalisation of volumes (N, C, D, H, W): the same layer as BatchNorm2d,
    whose functional pair reduces over the batch and every spatial axis."""


class ReflectionPad3d(Layer):
    """Reflection padding of a volume's three spatial axes by ``pads`` ((front, back),
    (top, bottom), (left, right)) voxels (``functional.volume.reflection_pad3d_forward``)."""

    def __init__(self, pads):
        super().__init__()
        self.pads = tuple(tuple(p) for p in pads)

    def forward(self, x):
        y, self.cache = reflection_pad3d_forward(x, self.pads)
        return y

    def backward(self, dy):
        return reflection_pad3d_backward(dy, self.cache)
