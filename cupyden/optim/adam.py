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
        self.t = 0
        self.fused = (xp is not numpy) if fused is None else fused

    def step(self, grad_scale=1.0):
        """One update of every parameter from ``params.grad / grad_scale``.

        ``grad_scale`` is the loss scale of mixed-precision training (the gradients are
        unscaled inside the update, in float32). Master weights, when the parameters have
        them, are updated and then rounded into the model's float16 weights.
        """
        self.t += 1
        p = self.params.trained
        if self.fused:
            from ..kernels.adam import adam_step
            adam_step(p, self.params.grad, self.m, self.v, self.lr, self.beta1,
                      self.beta2, self.eps, self.weight_decay, self.t, grad_scale)
        else:
            adam_step_reference(p, self.params.grad, self.m, self.v, self.lr,
                                self.beta1, self.beta2, self.eps, self.weight_decay, self.t,
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
