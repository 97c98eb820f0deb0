"""The seed's residual CNN (DnCNN; Zhang et al. 2017, "Beyond a Gaussian denoiser").

    noise = Conv(C->W)+ReLU, (depth - 2) x [Conv(W->W)+ReLU], Conv(W->C)     (3x3, "same")
    y = x - noise

At depth 12 and width 32 on one channel: 320 + 10 * 9,248 + 289 = 93,089 parameters, and
a receptive field of 1 + 12 * 2 = 25 pixels.
"""

import numpy

from ..layers import Conv2d, Sequential
from .base import Model


class DnCNN(Model):
    """Residual denoising CNN.

    Parameters
    ----------
    depth : int
        Number of conv layers (>= 2).
    width : int
        Channels of the hidden layers.
    channels : int
        Image channels (1 for micrographs).
    seed : int
        Seed of the initial weights.

    Input and output: (N, channels, H, W), any H, W.
    """

    arch = "dncnn"

    def __init__(self, depth=12, width=32, channels=1, seed=0):
        if depth < 2:
            raise ValueError("depth must be >= 2")
        self.depth, self.width, self.channels, self.seed = depth, width, channels, seed
        rng = numpy.random.default_rng(seed)
        layers = [("conv1", Conv2d(channels, width, 3, activation="relu", rng=rng))]
        for i in range(2, depth):
            layers.append(("conv%d" % i, Conv2d(width, width, 3, activation="relu", rng=rng)))
        layers.append(("conv%d" % depth, Conv2d(width, channels, 3, rng=rng)))
        self.body = Sequential(layers)
        self.named = [("", self.body)]

    def forward(self, x):
        """x (N, C, H, W) -> x - noise (N, C, H, W)."""
        return x - self.body.forward(x)

    def backward(self, dy):
        """y = x - body(x): the body receives -dy (so its parameter gradients have the
        right sign), and dx = dy + body^T(-dy) (None when conv1 skips its input's
        gradient: :meth:`backward_params`)."""
        dbody = self.body.backward(-dy)
        return None if dbody is None else dy + dbody

    def input_layers(self):
        return [self.body.named[0][1]]

    def config(self):
        return {"arch": self.arch, "depth": self.depth, "width": self.width,
                "channels": self.channels, "seed": self.seed}
