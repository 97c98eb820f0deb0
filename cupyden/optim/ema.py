"""An exponential moving average of the weights (``cupyden-train --ema DECAY``).

Averaging the iterates of stochastic gradient descent over the late steps (Polyak &
Juditsky 1992, "Acceleration of stochastic approximation by averaging") lowers the
variance of the weights that wander around a minimum. The exponential form keeps one
extra copy of the weights, updated after every optimiser step (as the "mean teacher" of
Tarvainen & Valpola 2017, and many image-restoration trainers):

    a_t = d_t a_{t-1} + (1 - d_t) w_t,        d_t = min(D, (1 + t) / (10 + t))

with w_t the float32 weights after step t (the master weights of a float16 model), a_0
the weights the run starts from, and D the decay asked for. The warm-up of d_t is
TensorFlow's ``tf.train.ExponentialMovingAverage`` with ``num_updates`` = t: early in a
run the average forgets the initial (random or pretrained) weights within a few steps,
later it reaches D (0.999 from step 8990 on; before that its horizon is about t / 9
steps). Since d_t is a function of the global step t, a resumed run continues the same
average from the copy saved in checkpoint.h5.

Data parallel: every rank holds the same weights, so every rank's average is the same
without communication.
"""

import contextlib

import numpy

from ..backend import get_array_module


def decay_at(decay, t):
    """d_t = min(D, (1 + t) / (10 + t)) of step t >= 1 (TensorFlow's warm-up)."""
    return min(decay, (1.0 + t) / (10.0 + t))


class WeightAverage:
    """The exponential moving average of a :class:`~cupyden.optim.params.Parameters`
    buffer's trained weights.

    Parameters
    ----------
    params : Parameters
    decay : float
        D, in (0, 1).
    fused : bool or None
        Use the fused GPU kernel (``kernels.ema``); None means "on the GPU, yes".

    Attributes
    ----------
    average : 1-D array like ``params.trained`` (float32 for float16 models)
        a_t; starts as a copy of the trained weights.

    Raises
    ------
    ValueError
        ``decay`` outside (0, 1).
    """

    def __init__(self, params, decay, fused=None):
        if not 0.0 < decay < 1.0:
            raise ValueError("the decay of a weight average is in (0, 1), got %r" % decay)
        self.params, self.decay = params, float(decay)
        self.average = params.trained.copy()
        self.fused = (get_array_module(self.average) is not numpy) if fused is None else fused

    def update(self, t):
        """a <- d_t a + (1 - d_t) w after optimiser step t (>= 1): one pass over the
        buffer."""
        d = decay_at(self.decay, t)
        if self.fused:
            from ..kernels.ema import ema_step
            ema_step(self.average, self.params.trained, d)
        else:
            ema_step_reference(self.average, self.params.trained, d)

    @contextlib.contextmanager
    def swapped(self):
        """Inside the ``with`` block the model computes with the average; afterwards with
        its own weights again, bit for bit.

        A float32 model's weights are kept in a copy and written back; a float16 model's
        ``data`` gets the average rounded to float16 and then its master weights rounded
        again (``Parameters.sync``), which is what ``data`` held.
        """
        p = self.params
        kept = p.data.copy() if p.master is None else None
        p.data[...] = self.average
        try:
            yield
        finally:
            if kept is None:
                p.sync()
            else:
                p.data[...] = kept

    def named(self):
        """{name: float32 host array} of the average (for model files and checkpoints)."""
        return self.params.named(self.average)

    def load_named(self, arrays):
        """Restore the average from :meth:`named`'s output."""
        self.params.load_named(self.average, arrays)


def ema_step_reference(a, w, decay):
    """One update of an exponential moving average, in place on flat arrays.

    Parameters
    ----------
    a : array (P,)
        The average, updated in place.
    w : array (P,) of a's dtype
        The weights after the optimiser step.
    decay : float
        d_t.
    """
    a *= decay                                   # a <- d a
    a += (1 - decay) * w                         # a <- d a + (1 - d) w
