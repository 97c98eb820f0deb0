"""Fused Adam step: one ElementwiseKernel over the flat parameter buffer.

Per element, the same arithmetic as ``cupyden.optim.adam.adam_step_reference``, in the
same order, reading p, g, m, v once and writing p, m, v once. The constants (1 - beta1,
1 - beta2, the bias corrections, lr * weight decay) are computed in double precision on the
host and rounded once, as NumPy does with them, and the kernel is compiled without fused
multiply-adds, so it rounds where the reference rounds.
"""

from ..backend import elementwise_kernel

#: One element's update, given inv_scale = 1 / grad_scale (the arithmetic and order of
#: ``adam_step_reference``).
_STEP = """
    const T g = inv_scale == (T)1 ? g_scaled : g_scaled * inv_scale;
    m = beta1 * m + omb1 * g;
    v = beta2 * v + omb2 * g * g;
    const T m_hat = m / bc1;
    const T v_hat = v / bc2;
    if (lr_wd != 0) p -= lr_wd * p;
    p -= lr * m_hat / (sqrt(v_hat) + eps);
"""

_adam_kernel = elementwise_kernel(
    "T g_scaled, T inv_scale, T lr, T beta1, T beta2, T omb1, T omb2, T eps, T lr_wd, "
    "T bc1, T bc2",
    "T p, T m, T v",
    _STEP, "cupyden_adam_step", options=("--fmad=false",))


def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t, grad_scale=1.0):
    """Fused Adam step in place; arguments as in ``adam_step_reference``."""
    T = p.dtype.type
    _adam_kernel(g, T(1.0 / grad_scale), T(lr), T(beta1), T(beta2), T(1 - beta1), T(1 - beta2), T(eps),
                 T(lr * weight_decay), T(1 - beta1 ** t), T(1 - beta2 ** t), p, m, v)


_adam_controlled_kernel = elementwise_kernel(
    "T g_scaled, raw float32 control, T lr, T beta1, T beta2, T omb1, T omb2, T eps, T lr_wd, "
    "T bc1, T bc2",
    "T p, T m, T v",
    "if (control[1] != 0) { const T inv_scale = control[0];" + _STEP + "}",
    "cupyden_adam_step_controlled", options=("--fmad=false",))


def adam_step_controlled(p, g, m, v, control, lr, beta1, beta2, eps, weight_decay, t):
    """Fused Adam step in place, its unscaling and its skip read on the device:
    ``control`` = [1 / grad_scale, 1.0 to update or 0.0 to leave p, m, v unchanged]
    (float32, from ``LossScaler.check``); the other arguments as in ``adam_step``."""
    T = p.dtype.type
    _adam_controlled_kernel(g, control, T(lr), T(beta1), T(beta2), T(1 - beta1), T(1 - beta2),
                            T(eps), T(lr * weight_decay), T(1 - beta1 ** t), T(1 - beta2 ** t),
                            p, m, v)
