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

from ..backend import to_device


class Parameters:
    """Flat parameter and gradient buffers of a model, with named views.

    Parameters
    ----------
    model : cupyden.models.base.Model
        Already moved with ``model.to(xp, dtype)``; its layers' ``params`` and ``grads``
        are rebound to views of the flat buffers (values kept).

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
    offsets : dict name -> (start, stop) into ``data``
    """

    def __init__(self, model):
        self.xp, dtype = model.xp, model.dtype
        entries = model.named_parameters()
        self.names = [name for name, _, _ in entries]
        self.shapes, self.offsets = {}, {}
        start = 0
        for name, layer, k in entries:
            self.shapes[name] = layer.params[k].shape
            self.offsets[name] = (start, start + layer.params[k].size)
            start += layer.params[k].size
        self.size = start
        half = numpy.dtype(dtype) == numpy.float16
        self.data = self.xp.empty(self.size, dtype)
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
        """The named slice of ``flat`` (default ``data``), shaped like the parameter."""
        a, b = self.offsets[name]
        return (self.data if flat is None else flat)[a:b].reshape(self.shapes[name])

    def zero_grad(self):
        """Set every gradient to 0 (one fill of the flat buffer)."""
        self.grad.fill(0)

    def named(self, flat):
        """{name: host array} of a flat buffer of this layout (for saving)."""
        host = to_device(flat, numpy)
        return {n: host[a:b].reshape(self.shapes[n]).copy() for n, (a, b) in self.offsets.items()}

    def load_named(self, flat, arrays):
        """Fill a flat buffer of this layout from {name: array}.

        Raises
        ------
        KeyError
            When a name is missing; ValueError when a shape differs.
        """
        for n, (a, b) in self.offsets.items():
            src = numpy.asarray(arrays[n])
            if src.shape != tuple(self.shapes[n]):
                raise ValueError("%s: shape %s, expected %s" % (n, src.shape, self.shapes[n]))
            flat[a:b] = to_device(src.ravel(), self.xp)
