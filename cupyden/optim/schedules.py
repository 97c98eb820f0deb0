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
        T, for cosine.
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
    """

    def __init__(self, kind="constant", lr=1e-3, total_steps=1, warmup=0, step_size=1000,
                 gamma=0.5, patience=3, factor=0.5, min_lr=0.0):
        if kind not in KINDS:
            raise ValueError("unknown schedule %r" % kind)
        self.kind, self.lr0, self.T, self.warmup = kind, lr, max(1, total_steps), warmup
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

    def state(self):
        """JSON-serialisable state (plateau's counters)."""
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state(self, state):
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]
