"""Learning-rate schedules.

- constant:  lr(t) = lr0
- step:      lr(t) = lr0 * gamma ** floor(t / step_size)
- cosine:    linear warm-up from 0 over ``warmup`` steps, then
             lr(t) = min_lr + (lr0 - min_lr) (1 + cos(pi (t - warmup) / (T - warmup))) / 2
             (SGDR without restarts; Loshchilov & Hutter 2017, eq. 5; warm-up as in
             Goyal et al. 2017)
- plateau:   lr multiplied by ``factor`` when the validation loss has not improved by a
             relative 1e-4 for ``patience`` validations in a row (as Keras' and PyTorch's
             ReduceLROnPlateau)

``warmup`` applies to every kind. Steps t count from 1.

Cosine under a time budget (``fit``'s ``max_seconds``): a fixed T cannot fit a budget on
an unknown device (the curve ends early and the rest of the time trains at min_lr, or the
time ends mid-curve at a high rate). Annealing to the end of the budget is what Li, Yumer
& Ramanan find best for any budget ("Budgeted Training: Rethinking Deep Neural Network
Training Under Resource Constraints", ICLR 2020), so at every validation the training loop
re-estimates T (:meth:`LRSchedule.fit_budget`), from its second validation on:

    T = min(total_steps, t + floor(seconds_left x steps_per_second))

with t the current step, seconds_left the budget minus the run's training time so far and
steps_per_second the rate of the last validation interval (the first contains cuDNN plan
tuning). Between validations lr(t) is the formula above with that T, so it stays a pure
function of (t, T); T is part of :meth:`LRSchedule.state` so a resumed run continues the
same curve.
"""

import math

KINDS = ("constant", "step", "cosine", "plateau")


class LRSchedule:
    """Learning rate as a function of the step (and, for plateau, of validation losses).

    Parameters
    ----------
    kind : str
        One of KINDS.
    lr : float
        Base learning rate lr0.
    total_steps : int
        T, for cosine: its length, and its upper bound under a time budget
        (:meth:`fit_budget`).
    warmup : int
        Steps of linear warm-up.
    step_size : int
        For step.
    gamma : float
        Factor of step.
    patience : int
        Validations without improvement before plateau lowers the rate.
    factor : float
        Factor of plateau.
    min_lr : float
        Floor of cosine and plateau.

    Attributes
    ----------
    T : int
        The cosine's current length in steps: ``total_steps``, or what :meth:`fit_budget`
        set.
    """

    def __init__(self, kind="constant", lr=1e-3, total_steps=1, warmup=0, step_size=1000,
                 gamma=0.5, patience=3, factor=0.5, min_lr=0.0):
        if kind not in KINDS:
            raise ValueError("unknown schedule %r" % kind)
        self.kind, self.lr0, self.warmup = kind, lr, warmup
        self.total_steps = max(1, total_steps)
        self.T = self.total_steps
        self.step_size, self.gamma = step_size, gamma
        self.patience, self.factor, self.min_lr = patience, factor, min_lr
        self.scale, self.best, self.bad = 1.0, float("inf"), 0     # plateau state

    def at(self, t):
        """Learning rate for step t (>= 1)."""
        if t <= self.warmup:
            return self.lr0 * t / self.warmup
        if self.kind == "step":
            return self.lr0 * self.gamma ** ((t - 1) // self.step_size)
        if self.kind == "cosine":
            u = min(1.0, (t - self.warmup) / max(1, self.T - self.warmup))
            return self.min_lr + (self.lr0 - self.min_lr) * (1 + math.cos(math.pi * u)) / 2
        return max(self.min_lr, self.lr0 * self.scale)

    def observe(self, val_loss):
        """Tell the schedule a validation loss (only plateau uses it)."""
        if self.kind != "plateau":
            return
        if val_loss < self.best * (1 - 1e-4):
            self.best, self.bad = val_loss, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.scale *= self.factor
                self.bad = 0

    def fit_budget(self, step, steps_left):
        """End the cosine where a time budget ends (module docstring; Li et al. 2020):
        T = min(total_steps, step + steps_left).

        Parameters
        ----------
        step : int
            The current step.
        steps_left : int
            Steps the rest of the budget holds (seconds left x steps per second, rounded
            down; negative counts as 0).
        """
        self.T = max(1, min(self.total_steps, int(step) + max(0, int(steps_left))))

    def state(self):
        """JSON-serialisable state: plateau's counters and the cosine's length T."""
        return {"scale": self.scale, "best": self.best, "bad": self.bad, "T": self.T}

    def load_state(self, state):
        """Restore :meth:`state` (a state without T, from a checkpoint written before
        budgets, keeps ``total_steps``)."""
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]
        self.T = int(state.get("T", self.T))
