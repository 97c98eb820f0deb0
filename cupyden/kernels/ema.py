"""Fused update of the weights' exponential moving average: one ElementwiseKernel over
the flat float32 buffer.

Per element, the arithmetic of ``cupyden.optim.ema.ema_step_reference`` in the same order
(``a <- d a``, then ``a <- a + (1 - d) w``), reading w and a once and writing a once; the
constants d and 1 - d are computed in double precision on the host and rounded once, as
NumPy does with them, and the kernel is compiled without fused multiply-adds, so it rounds
where the reference rounds.
"""

from ..backend import elementwise_kernel

_ema_kernel = elementwise_kernel(
    "T w, T d, T omd", "T a",
    "a = d * a; a = a + omd * w;",
    "cupyden_ema_step", options=("--fmad=false",))


def ema_step(a, w, decay):
    """Fused ``a <- decay a + (1 - decay) w`` in place; arguments as in
    ``ema_step_reference``."""
    T = a.dtype.type
    _ema_kernel(w, T(decay), T(1 - decay), a)
