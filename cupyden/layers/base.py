"""Layer base class, Sequential, and the receptive-field walk.

A layer owns its parameters (``params``), their gradients (``grads``, accumulated by
``backward``: call ``zero_grad`` between steps), non-trained state (``buffers``, e.g.
BatchNorm running statistics) and the cache of its last forward pass. The optimizer's
:class:`cupyden.optim.params.Parameters` later rebinds ``params`` and ``grads`` to views
into one flat buffer, so a layer never needs to know where its arrays live.
"""

import numpy

from ..backend import to_device


class Layer:
    """Base class: no parameters, identity receptive field."""

    #: (kernel, stride) seen by the receptive-field walk; upsampling uses stride 1/2.
    rf = (1, 1)

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.cache = None
        self.training = True      # BatchNorm statistics, Dropout on/off
        self.keep_cache = True    # False in inference: no cache, less memory

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def _add_param(self, name, value):
        self.params[name] = value
        self.grads[name] = numpy.zeros_like(value)

    def to(self, xp, dtype):
        """Move parameters, gradients and buffers to ``xp`` with float dtype ``dtype``."""
        for d in (self.params, self.grads, self.buffers):
            for k, v in d.items():
                d[k] = to_device(v, xp).astype(dtype, copy=False)
        self.cache = None
        return self

    def __repr__(self):
        return type(self).__name__


class Sequential(Layer):
    """Layers applied in order; backward applies their backward passes in reverse.

    Parameters
    ----------
    named : list of (str, Layer)
        Names become parameter-name prefixes, e.g. ``"conv3"`` -> ``"conv3.w"``.
    """

    def __init__(self, named):
        super().__init__()
        self.named = list(named)

    def forward(self, x):
        for _, layer in self.named:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for _, layer in reversed(self.named):
            dy = layer.backward(dy)
        return dy

    def named_layers(self, prefix=""):
        """Flattened (name, leaf layer) pairs, nested names joined by dots."""
        out = []
        for name, layer in self.named:
            full = prefix + name
            if isinstance(layer, Sequential):
                out.extend(layer.named_layers(full + "."))
            else:
                out.append((full, layer))
        return out

    def path(self):
        """Leaf layers in order (for :func:`receptive_field`)."""
        return [layer for _, layer in self.named_layers()]


def receptive_field(path):
    """Receptive field (pixels) of the last layer of ``path`` on its input.

    Walks the layers with r = 1, j = 1 (jump: input pixels per step of the current
    feature map): each layer of kernel k and stride s does r += (k - 1) * j, j *= s
    (Araujo et al. 2019, "Computing receptive fields of convolutional neural networks",
    Distill, eq. 2). Upsampling by 2 has k = 1, s = 1/2.

    Parameters
    ----------
    path : list of Layer
        The longest chain from input to output (for a U-Net: down to the bottleneck and
        back up).

    Returns
    -------
    int
    """
    r, j = 1.0, 1.0
    for layer in path:
        k, s = layer.rf
        r += (k - 1) * j
        j *= s
    return int(round(r))
