"""Adam (Kingma & Ba 2015, Algorithm 1) with optional decoupled weight decay
(AdamW; Loshchilov & Hutter 2019), over the flat parameter buffer.

Two implementations of one update: a readable NumPy/CuPy reference, one comment per line,
and one fused CuPy ElementwiseKernel (``cupyden.kernels.adam``) that reads and writes each
parameter, gradient and moment once (Chainer v1's fused Adam did the same).
"""

import numpy

from ..backend import get_array_module


class Adam:
    """Adam over a :class:`~cupyden.optim.params.Parameters` buffer.

    Parameters
    ----------
    params : Parameters
    lr : float
        Learning rate (step size alpha).
    beta1, beta2 : float
        Decay rates of the first and second moment estimates.
    eps : float
        Added to sqrt(v_hat) in the denominator.
    weight_decay : float
        Decoupled weight decay per unit learning rate (AdamW); 0 disables it.
    fused : bool or None
        Use the fused GPU kernel; None means "on the GPU, yes".

    Attributes
    ----------
    m, v : 1-D arrays like ``params.data``
        First and second moment estimates; ``params.named(m)`` gives them by name.
    t : int
        Steps taken.
    """

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 fused=None):
        self.params = params
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay = weight_decay
        xp = get_array_module(params.data)
        self.m = xp.zeros_like(params.trained)
        self.v = xp.zeros_like(params.trained)
        self._t, self._pending = 0, None
        self.fused = (xp is not numpy) if fused is None else fused

    @property
    def t(self):
        """Steps taken (a skipped float16 step does not count)."""
        self._settle()
        return self._t

    @t.setter
    def t(self, value):
        self._settle()
        self._t = int(value)

    def _settle(self):
        """Take back the count of the last step if its verdict says it was skipped (the
        verdict was queued a step ago: by now it is on the host, or nearly)."""
        if self._pending is not None:
            if not self._pending.applied():
                self._t -= 1
            self._pending = None

    def step(self, grad_scale=1.0, verdict=None):
        """One update of every parameter from ``params.grad / grad_scale``.

        ``grad_scale`` is the loss scale of mixed-precision training (the gradients are
        unscaled inside the update, in float32). Master weights, when the parameters have
        them, are updated and then rounded into the model's float16 weights.

        ``verdict`` (a :class:`~cupyden.optim.loss_scale.Verdict`) replaces ``grad_scale``:
        its control vector, on the device, holds 1 / grad_scale and whether the gradients
        were finite; the fused kernel reads both and leaves p, m, v unchanged after an
        overflow, so the host never waits for the check. The step count learns the
        outcome at the next step (or when ``t`` is read).
        """
        self._settle()
        self._t += 1
        p = self.params.trained
        if verdict is not None and self.fused:
            from ..kernels.adam import adam_step_controlled
            adam_step_controlled(p, self.params.grad, self.m, self.v, verdict.control, self.lr,
                                 self.beta1, self.beta2, self.eps, self.weight_decay, self._t)
            self._pending = verdict
            self.params.sync()
            return
        if verdict is not None:                    # reference path: decide on the host
            if not verdict.applied():
                self._t -= 1
                return
            grad_scale = 1.0 / verdict.inverse_scale()
        if self.fused:
            from ..kernels.adam import adam_step
            adam_step(p, self.params.grad, self.m, self.v, self.lr, self.beta1,
                      self.beta2, self.eps, self.weight_decay, self._t, grad_scale)
        else:
            adam_step_reference(p, self.params.grad, self.m, self.v, self.lr,
                                self.beta1, self.beta2, self.eps, self.weight_decay, self._t,
                                grad_scale)
        self.params.sync()

    def state(self):
        """{"step": t, "m": {name: array}, "v": {name: array}} on the host."""
        return {"step": self.t, "m": self.params.named(self.m), "v": self.params.named(self.v)}

    def load_state(self, state):
        """Restore from :meth:`state`'s output (moments matched by name)."""
        self.t = int(state["step"])
        self.params.load_named(self.m, state["m"])
        self.params.load_named(self.v, state["v"])


def adam_step_reference(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t, grad_scale=1.0):
    """One Adam step in place on flat arrays p, g, m, v (same shape and dtype).

    Parameters
    ----------
    p, g, m, v : array (P,)
        Parameters, gradients, first and second moments; p, m, v updated in place.
    lr, beta1, beta2, eps, weight_decay : float
    t : int
        The step number, starting at 1 (for the bias corrections).
    grad_scale : float
        The gradients are ``g / grad_scale`` (the loss scale of mixed precision; 1 = none).
    """
    xp = get_array_module(p)
    if grad_scale != 1.0:
        g = g * (1.0 / grad_scale)               # unscale: g <- g / S
    m *= beta1
    m += (1 - beta1) * g                         # m_t = beta1 m_{t-1} + (1 - beta1) g
    v *= beta2
    v += (1 - beta2) * g * g                     # v_t = beta2 v_{t-1} + (1 - beta2) g^2
    m_hat = m / (1 - beta1 ** t)                 # bias-corrected first moment
    v_hat = v / (1 - beta2 ** t)                 # bias-corrected second moment
    if weight_decay:
        p -= (lr * weight_decay) * p             # decoupled decay: p <- p - lr * wd * p
    p -= lr * m_hat / (xp.sqrt(v_hat) + eps)     # p <- p - lr * m_hat / (sqrt(v_hat) + eps)
