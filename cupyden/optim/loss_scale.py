"""Dynamic loss scaling for float16 training (Micikevicius et al. 2018, "Mixed precision
training", sec. 3.2).

Float16 has 5 exponent bits: gradients below 2^-24 flush to zero. The loss gradient is
multiplied by a scale S before the backward pass, so every gradient is S times larger in
float16, and divided by S again (in float32) inside the optimizer's update. When a step
produces Inf or NaN anywhere in the gradients, the step is skipped and S is halved; after
``growth_interval`` clean steps in a row S is doubled. PyTorch's GradScaler follows the
same rule with the same defaults (S = 2^16, x2 / x0.5, 2000 steps).

On a GPU the whole rule runs on the device (:meth:`LossScaler.check`): S multiplies the
loss gradient as a device value, the verdict "all finite" and the new S are computed by
two small kernels, and the fused Adam kernel reads the verdict and skips the update by
itself. The host learns the verdict one step later, without waiting: a training step never
synchronises with the GPU, so the host can queue the next step while the GPU runs this one.
"""

import numpy

from .. import backend
from ..backend import get_array_module

_kernels = {}


def _check_kernel():
    """One thread: control = [1 / (S * ranks), all finite], then S, clean, skipped updated
    by the rule of :meth:`LossScaler.update`."""
    if "check" not in _kernels:
        _kernels["check"] = backend.elementwise_kernel(
            "bool ok, float64 ranks, float32 growth, float32 min_scale",
            "raw float32 state, raw float32 control",
            """
            const float S = state[0];
            control[0] = (float)(1.0 / ((double)S * ranks));
            control[1] = ok ? 1.0f : 0.0f;
            if (ok) {
                state[1] += 1.0f;
                if (state[1] >= growth) { state[0] = 2.0f * S; state[1] = 0.0f; }
            } else {
                state[0] = fmaxf(min_scale, 0.5f * S);
                state[1] = 0.0f;
                state[2] += 1.0f;
            }
            """, "cupyden_loss_scale_check")
    return _kernels["check"]


class Verdict:
    """The outcome of one step's overflow check, for the optimizer.

    Attributes
    ----------
    control : float32 array (2,), on the gradients' device
        [1 / (S * ranks), 1.0 if every gradient was finite else 0.0]: what the update
        multiplies the gradients by, and whether it runs.
    """

    def __init__(self, control, host=None, event=None):
        self.control, self._host, self._event = control, host, event

    def applied(self):
        """True when the step's gradients were finite (its update ran). On a GPU this waits
        for the check's result, copied to the host asynchronously when it was queued."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return bool((self.control if self._host is None else self._host)[1] != 0)

    def inverse_scale(self):
        """1 / (S * ranks) as a float (waits like :meth:`applied`)."""
        self.applied()
        return float((self.control if self._host is None else self._host)[0])


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
        S (read from the device when the rule runs there: a synchronisation).
    clean : int
        Clean steps since the last change.
    skipped : int
        Steps skipped so far (Inf/NaN gradients).
    """

    def __init__(self, scale=2.0 ** 16, growth_interval=2000, min_scale=1.0):
        self.growth_interval, self.min_scale = growth_interval, min_scale
        self._state = numpy.array([scale, 0, 0], numpy.float32)   # S, clean, skipped

    scale = property(lambda self: float(backend.to_host(self._state)[0]))
    clean = property(lambda self: int(backend.to_host(self._state)[1]))
    skipped = property(lambda self: int(backend.to_host(self._state)[2]))

    def scale_on(self, xp):
        """S as a 0-d float32 array of ``xp`` (moved to the device once; no synchronisation):
        the factor of the loss gradient."""
        if get_array_module(self._state) is not xp:
            self._state = xp.asarray(backend.to_host(self._state))
        return self._state[0]

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
        ``growth_interval`` clean steps (on the host)."""
        state = backend.to_host(self._state).copy()
        if not finite:
            state[:] = max(self.min_scale, state[0] / 2), 0, state[2] + 1
        else:
            state[1] += 1
            if state[1] >= self.growth_interval:
                state[:2] = state[0] * 2, 0
        self._state = get_array_module(self._state).asarray(state)

    def check(self, grad, ranks=1):
        """This step's verdict, and S updated for the next step, where ``grad`` lives.

        Parameters
        ----------
        grad : 1-D float32 array
            The flat gradient buffer, S * ranks times the mean loss's gradient.
        ranks : int
            Data-parallel ranks whose gradients were summed into ``grad``.

        Returns
        -------
        Verdict
            Its control vector is [1 / (S * ranks), finite] with the S that scaled this
            step. On a GPU nothing waits: the finite check and the rule run as two kernels,
            and the verdict reaches the host by an asynchronous copy.
        """
        xp = get_array_module(grad)
        if xp is numpy:
            S, ok = float(self._state[0]), self.finite(grad)
            control = numpy.array([1.0 / (S * ranks), float(ok)], numpy.float32)
            self.update(ok)
            return Verdict(control)
        self.scale_on(xp)
        control = xp.empty(2, numpy.float32)
        _check_kernel()(xp.isfinite(grad).all(), float(ranks), float(self.growth_interval),
                        float(self.min_scale), self._state, control)
        host = backend.pinned_empty((2,), numpy.float32)
        return Verdict(control, host, backend.copy_to_host_async(control, host))

    def state(self):
        """{"scale", "clean", "skipped"} for checkpoints."""
        return {"scale": self.scale, "clean": self.clean, "skipped": self.skipped}

    def load_state(self, state):
        """Restore from :meth:`state`'s output."""
        xp = get_array_module(self._state)
        self._state = xp.asarray(numpy.array([state["scale"], state["clean"], state["skipped"]],
                                             numpy.float32))
