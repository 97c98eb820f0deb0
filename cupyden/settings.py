"""The engine's run-time settings, in one object: device, GPU convolution path, precision.

Every knob of the engine that is not an argument of a function lives here, documented in
:class:`Settings`; there are no module globals to flip and one environment variable only:

``CUPYDEN_CUDNN=0``
    cuDNN counts as unusable (``kernels.cudnn_fe.problem`` says why), so ``conv="auto"``
    runs im2col and ``conv="cudnn"``, ``precision="tf32"`` or ``"fp16"`` are refused with
    that reason. For comparing the two GPU paths from the shell.

(``CUPYDEN_DEVICE`` is the default of ``-d/--device``, read by ``backend.select_device``.)

Use :func:`configure` to set values, :func:`using` to set them for a ``with`` block, and
:func:`set_precision` to check and set the precision (it answers the model's dtype).
"""

import contextlib

import numpy

#: GPU convolution paths: "auto" (cuDNN when it passes its probe, else im2col), "cudnn"
#: (an error when unusable) or "im2col" (CuPy's im2col + cuBLAS, the readable path).
CONV_PATHS = ("auto", "cudnn", "im2col")
#: CPU convolution paths: "taps" (``functional/conv_cpu.py``: channels-last tiles, one
#: matrix product per kernel tap, Winograd or FFT where they measured faster) or "im2col"
#: (``functional/conv.py``'s readable path).
CPU_CONV_PATHS = ("taps", "im2col")
#: Numerical precisions of the convolutions (``--precision``).
PRECISIONS = ("fp32", "tf32", "fp16")


class Settings:
    """What the engine reads at run time.

    Attributes
    ----------
    device : cupyden.backend.Device or None
        The device chosen last by ``backend.select_device`` (None before). Informational:
        every op runs where its arrays live.
    conv : str
        One of :data:`CONV_PATHS`; decided for each convolution in one predicate
        (``functional.conv_cudnn.usable``).
    cpu_conv : str
        One of :data:`CPU_CONV_PATHS`: how NumPy arrays are convolved (the predicate
        ``functional.conv.use_conv_cpu``). The CPU threads are
        ``backend.set_cpu_threads``'s (``--threads``).
    precision : str
        One of :data:`PRECISIONS`. fp32: float32, strict (cuDNN's TF32 engines
        deselected). tf32: float32 data, cuDNN may round the convolutions' inputs to TF32
        (10-bit mantissa, float32 accumulation). fp16: float16 weights and activations
        (float32 master weights and loss scaling are the optimizer's business). Set it
        with :func:`set_precision`, which checks that cuDNN can deliver it.
    tune_plans : int
        cuDNN candidate plans built and timed for each new graph (``kernels.cudnn_fe``);
        8 by default (the heuristics' first plan was up to 6x slower than the best,
        PERFORMANCE.md), 1 keeps the heuristics' first choice.
    resident_gib : float
        On a GPU, a training split of micrograph patches up to this size (GiB, both views
        as float32) and up to half the free device memory is copied to the GPU once, and
        each batch is gathered and augmented there by one kernel (``io.loader.Loader``);
        larger ones, and 0, read every batch from the store on the host. 4 by default:
        one K2 micrograph's 459 pairs of 384 px are 0.5 GiB.
    """

    def __init__(self):
        self.device = None
        self.conv = "auto"
        self.cpu_conv = "taps"
        self.precision = "fp32"
        self.tune_plans = 8
        self.resident_gib = 4.0

    @property
    def tf32(self):
        """True when float32 convolutions may use TF32 tensor cores (precision tf32)."""
        return self.precision == "tf32"

    def as_dict(self):
        """The settings as a plain dict (for reports)."""
        return {"device": getattr(self.device, "name", None), "conv": self.conv,
                "cpu_conv": self.cpu_conv, "precision": self.precision,
                "tune_plans": self.tune_plans, "resident_gib": self.resident_gib}


#: The one settings object of the process.
SETTINGS = Settings()


def configure(**values):
    """Set attributes of :data:`SETTINGS`, checking names and choices.

    Raises
    ------
    ValueError
        For an unknown name, or a conv path / precision outside the choices.
    """
    for name, value in values.items():
        if not hasattr(SETTINGS, name) or name == "tf32":
            raise ValueError("unknown setting %r" % name)
        if name == "conv" and value not in CONV_PATHS:
            raise ValueError("GPU convolution must be auto, cudnn or im2col, got %r" % value)
        if name == "cpu_conv" and value not in CPU_CONV_PATHS:
            raise ValueError("CPU convolution must be taps or im2col, got %r" % value)
        if name == "precision" and value not in PRECISIONS:
            raise ValueError("precision must be one of %s, got %r" % (", ".join(PRECISIONS),
                                                                     value))
        if name == "resident_gib" and not float(value) >= 0:
            raise ValueError("resident_gib must be >= 0, got %r" % value)
        setattr(SETTINGS, name, value)


@contextlib.contextmanager
def using(**values):
    """Context manager: :func:`configure` inside the block, the previous values after."""
    old = {k: getattr(SETTINGS, k) for k in values}
    configure(**values)
    try:
        yield SETTINGS
    finally:
        for k, v in old.items():
            setattr(SETTINGS, k, v)


def set_precision(precision, xp):
    """Check and set the precision of the convolutions; return the model's dtype.

    Parameters
    ----------
    precision : str
        One of :data:`PRECISIONS` (see :class:`Settings`).
    xp : module
        numpy or cupy.

    Returns
    -------
    numpy.dtype
        float16 for fp16, else float32.

    Raises
    ------
    InputError
        For an unknown precision, or tf32/fp16 on the CPU or without a usable cuDNN (with
        the reason).
    """
    from .errors import InputError
    if precision not in PRECISIONS:
        raise InputError("precision must be one of %s, got %r" % (", ".join(PRECISIONS),
                                                                 precision))
    if xp is numpy and precision != "fp32":
        raise InputError("--precision %s needs a GPU with cuDNN; the CPU runs fp32" % precision)
    if xp is not numpy and precision != "fp32":
        why = cudnn_problem()
        if why is not None:
            raise InputError("--precision %s needs cuDNN, which cannot be used: %s"
                             % (precision, why))
    SETTINGS.precision = precision
    return numpy.dtype(numpy.float16 if precision == "fp16" else numpy.float32)


def cudnn_problem():
    """None when GPU convolutions run through cuDNN, else why not (one line): the
    convolution path chosen is "im2col", or ``kernels.cudnn_fe.problem()``.

    Returns
    -------
    str or None
    """
    if SETTINGS.conv == "im2col":
        return "im2col was chosen"
    from .kernels import cudnn_fe
    return cudnn_fe.problem()
