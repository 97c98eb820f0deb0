"""The seed's Siamese feature extractor for clustering particle images.

    ReflectionPad2d(1) -> Conv(1->4, 3x3) -> ReLU -> BatchNorm2d(4)
    -> ReflectionPad2d(1) -> Conv(4->8, 3x3) -> ReLU -> BatchNorm2d(8)
    -> ReflectionPad2d(1) -> Conv(8->8, 3x3) -> ReLU -> BatchNorm2d(8)
    -> Flatten -> Linear(8 H W -> 500) -> ReLU -> Linear(500 -> 100) -> ReLU -> Linear(100 -> 20)

sized from the particle box (the seed fixed it to 64 x 64). Two branches share these
weights: :meth:`Siamese.forward_pair` runs the extractor on each image of a pair and keeps
each branch's caches; :meth:`Siamese.backward_pair` runs the backward pass of branch 2,
then of branch 1, with the layers' gradients accumulating, so the shared weights receive
the sum of both branches' gradients.
"""

import numpy

from ..layers import BatchNorm2d, Conv2d, Flatten, Linear, ReflectionPad2d, ReLU, Sequential
from .base import Model


class Siamese(Model):
    """Siamese embedding network.

    Parameters
    ----------
    box : int
        Particle image side in pixels.
    embedding : int
        Output dimension (20).
    seed : int

    Input (N, 1, box, box); output (N, embedding).
    """

    arch = "siamese"

    def __init__(self, box=64, embedding=20, seed=0):
        self.box, self.embedding, self.seed = box, embedding, seed
        rng = numpy.random.default_rng(seed)
        self.body = Sequential([
            ("pad1", ReflectionPad2d(1)), ("conv1", Conv2d(1, 4, 3, padding=0, rng=rng)),
            ("relu1", ReLU()), ("bn1", BatchNorm2d(4)),
            ("pad2", ReflectionPad2d(1)), ("conv2", Conv2d(4, 8, 3, padding=0, rng=rng)),
            ("relu2", ReLU()), ("bn2", BatchNorm2d(8)),
            ("pad3", ReflectionPad2d(1)), ("conv3", Conv2d(8, 8, 3, padding=0, rng=rng)),
            ("relu3", ReLU()), ("bn3", BatchNorm2d(8)),
            ("flatten", Flatten()),
            ("fc1", Linear(8 * box * box, 500, rng=rng)), ("relu4", ReLU()),
            ("fc2", Linear(500, 100, rng=rng)), ("relu5", ReLU()),
            ("fc3", Linear(100, embedding, rng=rng))])
        self.named = [("", self.body)]

    def forward(self, x):
        """One branch: images (N, 1, box, box) -> embeddings (N, embedding)."""
        return self.body.forward(x)

    def backward(self, dy):
        return self.body.backward(dy)

    def _caches(self):
        return [layer.cache for _, layer in self.named_layers()]

    def _restore(self, caches):
        for (_, layer), cache in zip(self.named_layers(), caches):
            layer.cache = cache

    def forward_pair(self, x1, x2):
        """Both branches with the shared weights; returns (e1, e2)."""
        e1 = self.forward(x1)
        self._branch1 = self._caches()
        e2 = self.forward(x2)
        self._branch2 = self._caches()
        return e1, e2

    def backward_pair(self, de1, de2):
        """Backward of branch 2 then branch 1; parameter gradients are summed (accumulated).

        Returns
        -------
        (dx1, dx2)
        """
        self._restore(self._branch2)
        dx2 = self.backward(de2)
        self._restore(self._branch1)
        dx1 = self.backward(de1)
        return dx1, dx2

    def config(self):
        return {"arch": self.arch, "box": self.box, "embedding": self.embedding, "seed": self.seed}
