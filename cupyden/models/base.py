"""Model base class: named layers, train/eval, device moves, state by name."""

import numpy

from ..backend import to_host
from ..layers import receptive_field


class Model:
    """A network with an explicit forward and a written-out backward.

    Subclasses set ``self.named`` (list of (name, Layer); an empty name adds no prefix, so
    a model that wraps one Sequential names its layers "conv1", ...), implement
    ``forward`` and ``backward``, and override ``path`` when the longest input-to-output
    chain is not all layers in order (as in the U-Net, whose concatenations are not on it).
    """

    arch = None

    def named_layers(self):
        """(name, leaf layer) pairs in forward order."""
        out = []
        for name, layer in self.named:
            if hasattr(layer, "named_layers"):
                out.extend(layer.named_layers(name + "." if name else ""))
            else:
                out.append((name, layer))
        return out

    def path(self):
        """Layers of the longest input-to-output chain (default: all, in order)."""
        return [layer for _, layer in self.named_layers()]

    def named_parameters(self):
        """(full name, layer, local name) for every parameter, e.g. ("conv3.w", layer, "w")."""
        return [("%s.%s" % (lname, p), layer, p)
                for lname, layer in self.named_layers() for p in layer.params]

    def n_parameters(self):
        """Number of trainable scalars."""
        return sum(layer.params[p].size for _, layer, p in self.named_parameters())

    def train(self):
        """Training mode: BatchNorm uses batch statistics, Dropout drops, caches kept."""
        for _, layer in self.named_layers():
            layer.training, layer.keep_cache = True, True
        return self

    def eval(self):
        """Inference mode: running statistics, no dropout, no caches (less memory)."""
        for _, layer in self.named_layers():
            layer.training, layer.keep_cache = False, False
        return self

    def to(self, xp, dtype=numpy.float32):
        """Move every parameter, gradient and buffer to ``xp`` with dtype ``dtype``."""
        for _, layer in self.named_layers():
            layer.to(xp, dtype)
        self.xp, self.dtype = xp, numpy.dtype(dtype)
        return self

    @property
    def receptive_field(self):
        """Receptive field in pixels, computed from the layers (never hard-coded)."""
        return receptive_field(self.path())

    def state(self):
        """{name: host array} of parameters ("conv3.w") and buffers ("bn1.running_mean")."""
        out = {}
        for lname, layer in self.named_layers():
            for k, v in list(layer.params.items()) + list(layer.buffers.items()):
                out["%s.%s" % (lname, k)] = to_host(v)
        return out

    def load_state(self, state):
        """Copy arrays from {name: array} into the parameters and buffers, in place.

        Raises
        ------
        KeyError
            When a name is missing; ValueError when a shape differs.
        """
        for lname, layer in self.named_layers():
            for d in (layer.params, layer.buffers):
                for k, v in d.items():
                    src = state["%s.%s" % (lname, k)]
                    if tuple(src.shape) != v.shape:
                        raise ValueError("%s.%s: shape %s, expected %s"
                                         % (lname, k, tuple(src.shape), v.shape))
                    v[...] = src if isinstance(v, numpy.ndarray) else self.xp.asarray(src)

    def input_layers(self):
        """The layers that read the network's input and can skip its gradient
        (``input_grad``); models whose ``backward`` accepts None from them override this.
        None here: every layer computes its input's gradient."""
        return []

    def backward_params(self, dy):
        """The backward pass for the parameter gradients only (a training step): the
        layers of :meth:`input_layers` skip the gradient of the network's input, which
        nothing needs (PyTorch likewise skips it for an input without ``requires_grad``).

        Parameters
        ----------
        dy : array, the output's shape
            The loss gradient.
        """
        layers = self.input_layers()
        for layer in layers:
            layer.input_grad = False
        try:
            self.backward(dy)
        finally:
            for layer in layers:
                layer.input_grad = True

    def config(self):
        """Architecture and hyper-parameters, enough to rebuild the model."""
        raise NotImplementedError
