"""Losses: ``<loss>_forward(pred, target) -> (loss, cache)``, ``<loss>_backward(cache) -> dpred``.

The loss is a 0-d array on the inputs' device (no host synchronisation per step); the
backward takes the gradient of the loss itself as 1.
"""

from .l1 import l1_backward, l1_forward
from .mse import mse_backward, mse_forward

LOSSES = {"mse": (mse_forward, mse_backward), "l1": (l1_forward, l1_backward)}

__all__ = ["LOSSES", "mse_forward", "mse_backward", "l1_forward", "l1_backward"]
