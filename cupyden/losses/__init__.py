"""Losses: ``<loss>_forward(pred, target) -> (loss, cache)``, ``<loss>_backward(cache) -> dpred``.

The loss is a 0-d array on the inputs' device (no host synchronisation per step); the
backward takes the gradient of the loss itself as 1. :class:`Objective` sums weighted
terms, e.g. MSE + 0.1 x Fourier.
"""

from .fourier import fourier_backward, fourier_forward
from .gradient import gradient_backward, gradient_forward
from .l1 import l1_backward, l1_forward
from .mse import mse_backward, mse_forward
from .ssim import msssim_backward, msssim_forward, ssim_backward, ssim_forward

LOSSES = {"mse": (mse_forward, mse_backward), "l1": (l1_forward, l1_backward),
          "fourier": (fourier_forward, fourier_backward),
          "ssim": (ssim_forward, ssim_backward),
          "msssim": (msssim_forward, msssim_backward),
          "gradient": (gradient_forward, gradient_backward)}


class Objective:
    """A weighted sum of losses: L = sum_i weight_i * loss_i(pred, target).

    Parameters
    ----------
    terms : list of (str, float)
        Loss names (keys of LOSSES) and weights, e.g. [("mse", 1.0), ("fourier", 0.1)].
    fourier_weights : array (H, W // 2 + 1) or None
        Per-frequency weights of the Fourier term (FRC weighting), on the device.
    """

    def __init__(self, terms, fourier_weights=None):
        self.terms = [(name, float(w)) for name, w in terms if float(w) != 0]
        self.fourier_weights = fourier_weights

    def forward(self, pred, target):
        """Returns the total loss (0-d array) and a cache for :meth:`backward`."""
        total, caches = 0.0, []
        for name, w in self.terms:
            if name == "fourier" and self.fourier_weights is not None:
                value, cache = fourier_forward(pred, target, self.fourier_weights)
            else:
                value, cache = LOSSES[name][0](pred, target)
            total = total + w * value
            caches.append(cache)
        return total, caches

    def backward(self, caches):
        """dL/dpred = sum_i weight_i * dloss_i/dpred."""
        grad = None
        for (name, w), cache in zip(self.terms, caches):
            g = LOSSES[name][1](cache) * w
            grad = g if grad is None else grad + g
        return grad


__all__ = ["LOSSES", "Objective"]
