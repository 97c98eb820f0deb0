"""One flat buffer for every parameter of a model, and one for their gradients.

Each layer's ``params[k]`` and ``grads[k]`` become views into ``data`` and ``grad``, named
``"<layer>.<k>"`` (e.g. ``"enc1.conv2.w"``). The optimizer then updates every parameter
with one pass (one fused kernel on the GPU), zeroing every gradient is one memset, and
gradient checks perturb all parameters at once along one random direction.

Mixed precision (Micikevicius et al. 2018, "Mixed precision training", sec. 3.1): a float16
model computes with float16 weights (``data``) while float32 master weights (``master``)
take the optimizer's updates and float32 gradients (``grad``) collect the backward pass;
``sync`` rounds the master weights into ``data`` after each update.
"""

import numpy

from ..backend import get_array_module, to_device


class Parameters:
    """Flat parameter and gradient buffers of a model, with named views.

    Parameters
    ----------
    model : cupyden.models.base.Model
        Already moved with ``model.to(xp, dtype)``; its layers' ``params`` and ``grads``
        are rebound to views of the flat buffers (values kept).
    filters_channels_last : bool or None
        Keep convolution filters (parameters of 4 or 5 axes, (F, C, *K)) in the flat
        buffers as (F, *K, C): the views keep their logical shape, with channels-last
        strides. cuDNN's channels-last convolutions then read the filters in place instead
        of copying each filter twice per training step (forward and data gradient). None:
        on a GPU, yes; on the CPU, no.

    Attributes
    ----------
    data : 1-D array of the model's dtype, length ``size``
        What the layers compute with.
    grad : 1-D array, float32 for a float16 model, else the model's dtype
    master : 1-D float32 array, or None
        Float32 master weights of a float16 model (None otherwise): what the optimizer
        updates.
    names : list of str
    shapes : dict name -> tuple
        Logical shapes.
    offsets : dict name -> (start, stop) into ``data``
        Each start a multiple of ``ALIGN`` elements (the elements between two parameters
        are unused and stay 0 in ``grad``).
    channels_last : set of str
        The names stored as (F, *K, C).
    """

    #: Parameters start at multiples of 128 elements: 256 bytes for float16, as CuPy aligns
    #: its own allocations (cuDNN reads a channels-last operand in place only from a 16-byte
    #: aligned address). 8 elements ran as fast: DnCNN-17/64's float16 step took 10.4-10.6
    #: ms of GPU time on an H200 at either, and with the filters copied (benchmarks/
    #: RESULTS.md, session 12).
    ALIGN = 128

    def __init__(self, model, filters_channels_last=None):
        self.xp, dtype = model.xp, model.dtype
        if filters_channels_last is None:
            filters_channels_last = self.xp is not numpy
        entries = model.named_parameters()
        self.names = [name for name, _, _ in entries]
        self.shapes, self.offsets, self.channels_last = {}, {}, set()
        start = 0
        for name, layer, k in entries:
            start = -(-start // self.ALIGN) * self.ALIGN
            self.shapes[name] = layer.params[k].shape
            self.offsets[name] = (start, start + layer.params[k].size)
            start += layer.params[k].size
            if filters_channels_last and layer.params[k].ndim in (4, 5):
                self.channels_last.add(name)
        self.size = start
        half = numpy.dtype(dtype) == numpy.float16
        self.data = self.xp.zeros(self.size, dtype)
        self.grad = self.xp.zeros(self.size, numpy.float32 if half else dtype)
        for name, layer, k in entries:
            self.view(name)[...] = layer.params[k]
            layer.params[k] = self.view(name)
            layer.grads[k] = self.view(name, self.grad)
        self.master = self.data.astype(numpy.float32) if half else None

    @property
    def trained(self):
        """The buffer the optimizer updates: ``master`` when there is one, else ``data``."""
        return self.data if self.master is None else self.master

    def sync(self):
        """Round the master weights into ``data`` (no-op without master weights)."""
        if self.master is not None:
            self.data[...] = self.master

    def view(self, name, flat=None):
        """The named slice of ``flat`` (default ``data``), shaped like the parameter (a
        strided view for a filter stored channels-last)."""
        a, b = self.offsets[name]
        flat = (self.data if flat is None else flat)[a:b]
        shape = self.shapes[name]
        if name not in self.channels_last:
            return flat.reshape(shape)
        stored = flat.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],))   # (F, *K, C)
        return get_array_module(flat).moveaxis(stored, -1, 1)

    def zero_grad(self):
        """Set every gradient to 0 (one fill of the flat buffer)."""
        self.grad.fill(0)

    def named(self, flat):
        """{name: host array} of a flat buffer of this layout (for saving), each
        C-contiguous in its logical shape."""
        host = to_device(flat, numpy)
        return {n: numpy.array(self.view(n, host), order="C") for n in self.names}

    def load_named(self, flat, arrays):
        """Fill a flat buffer of this layout from {name: array}.

        Raises
        ------
        KeyError
            When a name is missing; ValueError when a shape differs.
        """
        for n in self.names:
            src = numpy.asarray(arrays[n])
            if src.shape != tuple(self.shapes[n]):
                raise ValueError("%s: shape %s, expected %s" % (n, src.shape, self.shapes[n]))
            if n in self.channels_last:
                src = numpy.moveaxis(src, 1, -1)
            a, b = self.offsets[n]
            flat[a:b] = to_device(numpy.ascontiguousarray(src).ravel(), self.xp)
