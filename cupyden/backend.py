"""Array backend: the only module that imports CuPy.

Everything else asks this module for the array module of its inputs
(:func:`get_array_module`) and writes code that runs on NumPy and CuPy alike
(idea from DeZero's ``get_array_module`` and Chainer v1's ``cuda.get_array_module``).

Device choice
-------------
A device is a GPU ordinal ``N >= 0`` or ``-1`` for the CPU. Command-line tools take
``-d/--device``; when it is not given, the environment variable ``CUPYDEN_DEVICE`` is read;
when neither is set, ``auto`` picks GPU 0 if CuPy sees one and the CPU otherwise, and
says which. Asking for a GPU that cannot be used raises :class:`~cupyden.errors.InputError`
with the reason: cupyden never falls back to the CPU when a GPU was asked for.
"""

import os

import numpy

from .errors import InputError

try:  # CuPy is an optional extra (cupy-cuda12x or cupy-cuda13x, CuPy 13 or 14)
    import cupy
    _CUPY_IMPORT_ERROR = None
except Exception as exc:  # ImportError, or a CUDA library that fails to load
    cupy = None
    _CUPY_IMPORT_ERROR = exc


def gpu_count():
    """Number of CUDA devices CuPy can use (0 when CuPy is absent or sees none).

    Returns
    -------
    int
    """
    if cupy is None:
        return 0
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def why_no_gpu():
    """One line that says why no GPU can be used here, for error messages.

    Returns
    -------
    str
    """
    if cupy is None:
        return ("CuPy is not installed or failed to import (%s); install "
                "'cupyden[cuda12]' or 'cupyden[cuda13]'" % _CUPY_IMPORT_ERROR)
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return "CuPy found no usable CUDA driver (%s)" % exc
    return "CuPy sees %d CUDA device(s)" % n


class Device:
    """Where arrays live and kernels run.

    Parameters
    ----------
    ordinal : int
        GPU ordinal (>= 0) or -1 for the CPU.

    Attributes
    ----------
    xp : module
        ``numpy`` for the CPU, ``cupy`` for a GPU.
    ordinal : int
    name : str
        Human-readable, e.g. ``"cpu (numpy)"`` or ``"gpu 0: NVIDIA H100 80GB HBM3"``.
    """

    def __init__(self, ordinal):
        self.ordinal = int(ordinal)
        if self.ordinal < 0:
            self.xp = numpy
            self.name = "cpu (numpy %s)" % numpy.__version__
            return
        self.xp = cupy
        cupy.cuda.Device(self.ordinal).use()
        props = cupy.cuda.runtime.getDeviceProperties(self.ordinal)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        self.name = "gpu %d: %s (cupy %s)" % (self.ordinal, gpu, cupy.__version__)

    @property
    def is_gpu(self):
        return self.ordinal >= 0

    def __repr__(self):
        return "Device(%s)" % self.name


def select_device(spec=None):
    """Choose the device from a CLI value, ``CUPYDEN_DEVICE`` or ``auto``.

    Parameters
    ----------
    spec : str or int or None
        ``"auto"``, ``"-1"`` (CPU) or a GPU ordinal ``"0"``, ``"1"``, ... ``None`` reads
        ``CUPYDEN_DEVICE`` and falls back to ``"auto"``.

    Returns
    -------
    Device

    Raises
    ------
    InputError
        When the value is not an integer >= -1 or ``auto``, or a GPU was asked for and
        cannot be used (CuPy missing, no driver, ordinal out of range, or a test kernel fails).
    """
    if spec is None:
        spec = os.environ.get("CUPYDEN_DEVICE", "auto")
    spec = str(spec).strip().lower()
    if spec == "auto":
        return Device(0 if gpu_count() > 0 and _gpu_works(0) is None else -1)
    try:
        ordinal = int(spec)
    except ValueError:
        raise InputError("device must be 'auto', -1 (CPU) or a GPU number, got %r" % spec)
    if ordinal < -1:
        raise InputError("device must be 'auto', -1 (CPU) or a GPU number >= 0, got %d"
                         % ordinal)
    if ordinal == -1:
        return Device(-1)
    n = gpu_count()
    if ordinal >= n:
        raise InputError("GPU %d was asked for but cannot be used: %s; pass --device -1 "
                         "to run on the CPU" % (ordinal, why_no_gpu()))
    problem = _gpu_works(ordinal)
    if problem is not None:
        raise InputError("GPU %d was asked for but a test kernel failed on it (%s); pass "
                         "--device -1 to run on the CPU" % (ordinal, problem))
    return Device(ordinal)


def _gpu_works(ordinal):
    """Run one tiny kernel on GPU ``ordinal``; return None, or the error as a string."""
    try:
        with cupy.cuda.Device(ordinal):
            a = cupy.arange(4, dtype=cupy.float32)
            if float((a * 2).sum()) != 12.0:
                return "wrong result"
    except Exception as exc:
        return "%s: %s" % (type(exc).__name__, exc)
    return None


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy``.

    Parameters
    ----------
    *arrays : array_like or None

    Returns
    -------
    module
    """
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return numpy


def is_gpu_array(x):
    """True for a CuPy array."""
    return cupy is not None and isinstance(x, cupy.ndarray)


def to_device(x, xp):
    """Copy a host or device array to the array module ``xp`` (no copy when already there).

    Parameters
    ----------
    x : numpy.ndarray or cupy.ndarray
    xp : module
        ``numpy`` or ``cupy``.

    Returns
    -------
    array of ``xp``
    """
    if xp is numpy:
        return to_host(x)
    return cupy.asarray(x)


def to_host(x):
    """Return a NumPy array (copies a CuPy array to the host)."""
    if is_gpu_array(x):
        return cupy.asnumpy(x)
    return numpy.asarray(x)


def synchronize(xp=numpy):
    """Wait for all queued GPU work on the current device (no-op for NumPy)."""
    if xp is not numpy:
        cupy.cuda.get_current_stream().synchronize()


def default_rng(xp, seed):
    """A random generator for ``xp`` (``numpy.random.default_rng`` or CuPy's twin).

    Parameters
    ----------
    xp : module
    seed : int or None

    Returns
    -------
    Generator with at least ``random(size, dtype)`` and ``standard_normal(size, dtype)``.
    """
    return xp.random.default_rng(seed)


def elementwise_kernel(in_params, out_params, operation, name, preamble="", options=()):
    """Build a ``cupy.ElementwiseKernel`` (compiled lazily by CuPy at first call).

    ``cupyden.kernels`` builds its module-level kernels through this function, so that
    only this module imports CuPy. Raises ``RuntimeError`` when CuPy is absent (a
    programming error: kernels are imported only on the GPU path).
    """
    if cupy is None:
        raise RuntimeError("CuPy kernels requested but CuPy is not available")
    return cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=preamble,
                                  options=tuple(options))


def pinned_empty(shape, dtype):
    """A NumPy array in page-locked host memory (fast, asynchronous copies to the GPU).

    Parameters
    ----------
    shape : tuple
    dtype : numpy dtype

    Returns
    -------
    numpy.ndarray backed by ``cupy.cuda.alloc_pinned_memory``.
    """
    dtype = numpy.dtype(dtype)
    n = int(numpy.prod(shape))
    mem = cupy.cuda.alloc_pinned_memory(n * dtype.itemsize)
    return numpy.frombuffer(mem, dtype, n).reshape(shape)


def new_stream():
    """A non-blocking CUDA stream (for host-to-device copies beside the compute)."""
    return cupy.cuda.Stream(non_blocking=True)


def new_event():
    """A CUDA event (timing disabled: it only orders work)."""
    return cupy.cuda.Event(disable_timing=True)


def current_stream():
    """CuPy's current CUDA stream (the one kernels are queued on)."""
    return cupy.cuda.get_current_stream()


def dense_order(a):
    """Axes of ``a`` from the largest stride to the smallest: ``a.transpose(order)`` is
    C-contiguous when ``a`` is a permutation of contiguous memory (a channels-last view)."""
    return tuple(sorted(range(a.ndim), key=lambda i: (-a.strides[i], i)))


def empty_like_memory(a):
    """An uninitialised array with ``a``'s shape and dtype whose memory follows the same
    axis order as ``a``'s (``empty_like`` in CuPy 14 returns C order for a channels-last
    view; mixed layouts then made every elementwise kernel uncoalesced)."""
    xp = get_array_module(a)
    order = dense_order(a)
    phys = xp.empty([a.shape[i] for i in order], a.dtype)
    return phys.transpose(numpy.argsort(order))


def gpu_module():
    """The ``cupy`` module, or None when CuPy is absent (for GPU-only code that must
    allocate before it has an array in hand, such as the cuDNN probe)."""
    return cupy


def gpu_time_ms(fn, repeats=3):
    """Milliseconds per call of ``fn`` on the current stream, by CUDA events.

    One untimed call first (warm-up), then ``repeats`` calls between two events.

    Parameters
    ----------
    fn : callable
        Queues GPU work on the current stream.
    repeats : int

    Returns
    -------
    float
    """
    fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / repeats
