"""Dynamic loss scaling for float16 training (Micikevicius et al. 2018, "Mixed precision
training", sec. 3.2).

Float16 has 5 exponent bits: gradients below 2^-24 flush to zero. The loss gradient is
multiplied by a scale S before the backward pass, so every gradient is S times larger in
float16, and divided by S again (in float32) inside the optimizer's update. When a step
produces Inf or NaN anywhere in the gradients, the step is skipped and S is halved; after
``growth_interval`` clean steps in a row S is doubled. PyTorch's GradScaler follows the
same rule with the same defaults (S = 2^16, x2 / x0.5, 2000 steps).
"""

from ..backend import get_array_module


class LossScaler:
    """The loss scale S and its update rule.

    Parameters
    ----------
    scale : float
        Initial S.
    growth_interval : int
        Clean steps after which S doubles.
    min_scale : float
        S never drops below this (a model whose gradients overflow at S = 1 is broken).

    Attributes
    ----------
    scale : float
    clean : int
        Clean steps since the last change.
    skipped : int
        Steps skipped so far (Inf/NaN gradients).
    """

    def __init__(self, scale=2.0 ** 16, growth_interval=2000, min_scale=1.0):
        self.scale, self.growth_interval, self.min_scale = float(scale), growth_interval, min_scale
        self.clean, self.skipped = 0, 0

    def finite(self, grad):
        """True when every gradient is finite (one reduction and one synchronisation).

        Parameters
        ----------
        grad : 1-D array
            The flat (scaled) gradient buffer.
        """
        xp = get_array_module(grad)
        return bool(xp.isfinite(grad).all())

    def update(self, finite):
        """Halve S after an overflow (the step was skipped), double it after
        ``growth_interval`` clean steps."""
        if not finite:
            self.scale = max(self.min_scale, self.scale / 2)
            self.clean = 0
            self.skipped += 1
            return
        self.clean += 1
        if self.clean >= self.growth_interval:
            self.scale *= 2
            self.clean = 0

    def state(self):
        """{"scale", "clean", "skipped"} for checkpoints."""
        return {"scale": self.scale, "clean": self.clean, "skipped": self.skipped}

    def load_state(self, state):
        """Restore from :meth:`state`'s output."""
        self.scale = float(state["scale"])
        self.clean, self.skipped = int(state["clean"]), int(state["skipped"])
