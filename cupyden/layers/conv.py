"""Conv2d layer (optionally fused with ReLU or LeakyReLU), and a U-Net's top decoder
convolution fused with the upsampling and skip concatenation that feed it."""

import math

import numpy

from ..functional.conv import conv2d_backward, conv2d_forward
from ..functional.phase_conv import (upsample_concat_conv2d_backward,
                                     upsample_concat_conv2d_forward)
from .base import Layer


def _init_conv(layer, in_channels, out_channels, kernel_size, bias, activation, slope, rng):
    """Add a convolution's parameters to ``layer`` (He normal weights, zero bias; see
    :class:`Conv2d`) and return the fused activation's slope (None, 0.0 or ``slope``)."""
    if kernel_size % 2 == 0 or not 1 <= kernel_size <= 11:
        raise ValueError("kernel_size must be odd, 1 to 11, got %d" % kernel_size)
    rng = numpy.random.default_rng(0) if rng is None else rng
    std = math.sqrt(2.0 / (in_channels * kernel_size * kernel_size))     # sqrt(2 / fan_in)
    layer._add_param("w", rng.standard_normal(
        (out_channels, in_channels, kernel_size, kernel_size)) * std)
    if bias:
        layer._add_param("b", numpy.zeros(out_channels))
    return {None: None, "relu": 0.0, "leaky_relu": slope}[activation]


def _act_name(slope):
    """The fused activation in a layer's repr: "", "+ReLU" or "+LeakyReLU(slope)"."""
    return {None: "", 0.0: "+ReLU"}.get(slope, "+LeakyReLU(%g)" % (slope or 0))


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
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.slope = _init_conv(self, in_channels, out_channels, kernel_size, bias,
                                activation, slope, rng)
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
        return "Conv2d(%d->%d, %dx%d, stride %d)%s" % (C, F, K, K, self.stride,
                                                      _act_name(self.slope))


class UpsampleConcatConv2d(Layer):
    """Nearest upsampling of h to the skip's size, concatenation of the skip, and a
    "same" convolution with fused bias and activation, in one op
    (``functional.phase_conv``: a convolution at h's resolution when the skip is exactly
    twice h's size).

    Parameters, initial weights, ``params`` and ``input_grad`` as :class:`Conv2d` with
    stride 1 and ``in_channels`` = Ch + Cs (upsampled channels first), so that the weights
    of the Conv2d it replaces load unchanged (same random draws for the same ``rng``).
    ``forward(h, skip)``; ``backward(dy)`` returns (dh, dskip), dskip None without
    ``input_grad`` (the skip is then the network's input).

    Receptive-field walk: the upsampling (kernel 1, stride 1/2) followed by the K x K
    convolution is, in h's pixels, one layer of kernel (K + 1) / 2 and stride 1/2
    (Araujo et al. 2019, eq. 2: r += (K - 1) j / 2, then j /= 2).
    """

    input_grad = True

    def __init__(self, in_channels, out_channels, kernel_size=3, bias=True, activation=None,
                 slope=0.01, rng=None):
        super().__init__()
        self.slope = _init_conv(self, in_channels, out_channels, kernel_size, bias,
                                activation, slope, rng)
        self.rf = ((kernel_size + 1) // 2, 0.5)

    def forward(self, h, skip):
        y, self.cache = upsample_concat_conv2d_forward(
            h, skip, self.params["w"], self.params.get("b"), self.slope,
            keep_cache=self.keep_cache)
        return y

    def backward(self, dy):
        dh, dskip, dw, db = upsample_concat_conv2d_backward(dy, self.cache, self.input_grad)
        self.grads["w"] += dw
        if "b" in self.params:
            self.grads["b"] += db
        return dh, dskip

    def __repr__(self):
        F, C, K, _ = self.params["w"].shape
        return "UpsampleConcatConv2d(%d->%d, %dx%d)%s" % (C, F, K, K, _act_name(self.slope))
