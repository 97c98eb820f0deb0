"""Conv2d layer (optionally fused with ReLU or LeakyReLU)."""

import math

import numpy

from ..functional.conv import conv2d_backward, conv2d_forward
from .base import Layer


class Conv2d(Layer):
    """2-D convolution layer with zero padding, optional bias and fused activation.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Odd, 1 to 11.
    stride : int
        1 or 2.
    padding : int or None
        None gives "same" padding, kernel_size // 2.
    bias : bool
    activation : None, "relu" or "leaky_relu"
        Fused after the bias.
    slope : float
        Negative slope of the leaky ReLU.
    rng : numpy.random.Generator or None
        For the initial weights: He normal, std = sqrt(2 / fan_in) (He et al. 2015), a
        gain suited to ReLU networks; bias 0.

    Attributes
    ----------
    params : {"w": (F, C, KH, KW), "b": (F,)}
    input_grad : bool
        True: ``backward`` returns the input's gradient; False: it returns None and skips
        computing it (a layer reading the network's input, during
        :meth:`cupyden.models.base.Model.backward_params`).
    """

    input_grad = True

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None,
                 bias=True, activation=None, slope=0.01, rng=None):
        super().__init__()
        if kernel_size % 2 == 0 or not 1 <= kernel_size <= 11:
            raise ValueError("kernel_size must be odd, 1 to 11, got %d" % kernel_size)
        rng = numpy.random.default_rng(0) if rng is None else rng
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.slope = {None: None, "relu": 0.0, "leaky_relu": slope}[activation]
        fan_in = in_channels * kernel_size * kernel_size
        std = math.sqrt(2.0 / fan_in)
        self._add_param("w", rng.standard_normal(
            (out_channels, in_channels, kernel_size, kernel_size)) * std)
        if bias:
            self._add_param("b", numpy.zeros(out_channels))
        self.rf = (kernel_size, stride)

    def forward(self, x):
        y, self.cache = conv2d_forward(x, self.params["w"], self.params.get("b"), self.stride,
                                       self.padding, self.slope, keep_cache=self.keep_cache)
        return y

    def backward(self, dy):
        dx, dw, db = conv2d_backward(dy, self.cache, self.input_grad)
        self.grads["w"] += dw
        if "b" in self.params:
            self.grads["b"] += db
        return dx

    def __repr__(self):
        F, C, K, _ = self.params["w"].shape
        act = {None: "", 0.0: "+ReLU"}.get(self.slope, "+LeakyReLU(%g)" % (self.slope or 0))
        return "Conv2d(%d->%d, %dx%d, stride %d)%s" % (C, F, K, K, self.stride, act)
