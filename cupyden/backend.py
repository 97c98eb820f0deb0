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

CPU threads
-----------
:func:`set_cpu_threads` (called once when a command starts, ``--threads``) chooses how
many threads the CPU work uses: the CPUs this process may run on (its affinity mask and its
cgroup's CPU quota, not the machine's core count), or ``OMP_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` when set. cupyden's CPU kernels run their
blocks on a pool of that many threads (:func:`cpu_map`) whose idle threads sleep on a queue;
while they run, every BLAS library runs one thread per caller (through threadpoolctl), so
no BLAS worker thread busy-waits beside them (benchmarks/RESULTS.md, "Two jobs at once").
"""

import contextlib
import functools
import itertools
import os
import queue
import sys
import threading

import numpy

from .errors import InputError
from .settings import SETTINGS

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

    def bind(self):
        """Make this device current in the calling thread (CUDA's current device is per
        thread: a new thread starts on GPU 0, and a page-locked allocation there would
        create a context on GPU 0). No-op for the CPU."""
        if self.is_gpu:
            cupy.cuda.Device(self.ordinal).use()

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
    device = _select(spec)
    SETTINGS.device = device
    return device


def _select(spec):
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


def gpu_identity():
    """The current GPU's model and compute capability, e.g. ``"NVIDIA H200 (sm_90)"``
    (keys of caches that must not cross GPU models).

    Returns
    -------
    str
    """
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return "%s (sm_%d%d)" % (name, props["major"], props["minor"])


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


def to_host_into(x, out):
    """Copy ``x`` into the existing host array ``out`` (same shape and dtype) and return it.

    A copy from the GPU into page-locked memory (:func:`pinned_empty`) runs at the bus's
    full rate and allocates nothing. Blocks until the copy is done.

    Parameters
    ----------
    x : numpy.ndarray or cupy.ndarray
    out : numpy.ndarray, C-contiguous

    Returns
    -------
    numpy.ndarray
        ``out``.
    """
    if is_gpu_array(x):
        x.get(out=out)
    else:
        numpy.copyto(out, x)
    return out


def copy_to_host_async(x, out):
    """Queue a copy of the CuPy array ``x`` into ``out`` (page-locked, :func:`pinned_empty`)
    on the current stream, without waiting for it.

    Parameters
    ----------
    x : cupy.ndarray
    out : numpy.ndarray, C-contiguous, same shape and dtype

    Returns
    -------
    cupy.cuda.Event
        Recorded after the copy: ``out`` holds ``x`` once ``event.synchronize()`` returns.
    """
    cupy.asnumpy(x, out=out, blocking=False)
    event = cupy.cuda.Event(block=False, disable_timing=True)
    event.record()
    return event


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


def free_device_bytes():
    """Bytes the current GPU could still give: the driver's free memory plus what CuPy's
    pool holds unused (``cudaMemGetInfo``)."""
    pool = cupy.get_default_memory_pool()
    return int(cupy.cuda.runtime.memGetInfo()[0]) + pool.free_bytes()


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


def empty_like_memory(a, shape=None, dtype=None):
    """An uninitialised array whose memory follows the same axis order as ``a``'s, with
    ``a``'s shape and dtype unless given (``empty_like`` in CuPy 14 returns C order for a
    channels-last view; mixed layouts then made every elementwise kernel uncoalesced).

    Parameters
    ----------
    a : array
    shape : tuple or None
        Same number of axes as ``a``.
    dtype : dtype or None
    """
    xp = get_array_module(a)
    order = dense_order(a)
    shape = a.shape if shape is None else tuple(shape)
    phys = xp.empty([shape[i] for i in order], a.dtype if dtype is None else dtype)
    return phys.transpose(numpy.argsort(order))


def nccl_module():
    """``cupy.cuda.nccl`` (NCCL through CuPy) for data-parallel training.

    Raises
    ------
    InputError
        CuPy or its NCCL binding cannot be loaded (with the reason and the fix).
    """
    if cupy is None:
        raise InputError("several GPUs were asked for but %s" % why_no_gpu())
    try:
        from cupy.cuda import nccl
        if not nccl.available:
            raise ImportError("cupy.cuda.nccl.available is False")
    except Exception as exc:
        raise InputError("NCCL cannot be loaded through CuPy (%s); install it, e.g. "
                         "pip install nvidia-nccl-cu12 (or -cu13)" % exc)
    return nccl


@functools.lru_cache(maxsize=1024)
def contiguous_strides(shape):
    """Element strides of C-contiguous memory for ``shape``."""
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


@functools.lru_cache(maxsize=1024)
def channels_last_strides(shape):
    """Element strides, for logical dims (N, C, *S), of memory laid out as (N, *S, C)."""
    phys = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    s = contiguous_strides(phys)
    return (s[0], s[-1]) + s[1:-1]


def empty_channels_last(xp, shape, dtype):
    """An uninitialised (N, C, *S) array whose memory is laid out as (N, *S, C)."""
    phys = xp.empty((shape[0],) + tuple(shape[2:]) + (shape[1],), dtype)
    return xp.moveaxis(phys, -1, 1)


def in_memory_order(*arrays):
    """Views of ``arrays`` (one shape) with their axes in the memory order of the first,
    and the permutation that undoes it: ``(views, inverse)``.

    CuPy's elementwise kernels walk the logical (C) order, so on a channels-last array
    consecutive threads would touch addresses C elements apart; on these views they touch
    neighbours. ``view.transpose(inverse)`` is the original axis order.
    """
    order = dense_order(arrays[0])
    return [a.transpose(order) for a in arrays], tuple(numpy.argsort(order))


def copy_like(a, like):
    """``a`` copied into new memory laid out like ``like`` (same shape), walking memory
    order (coalesced on the GPU)."""
    out = empty_like_memory(like)
    (o, v), _ = in_memory_order(out, a)
    o[...] = v
    return out


def channels_last_copy(a):
    """``a`` (N, C, *S) copied into new dense channels-last memory."""
    out = empty_channels_last(get_array_module(a), a.shape, a.dtype)
    (o, v), _ = in_memory_order(out, a)
    o[...] = v
    return out


def channels_last_gpu(*arrays):
    """True when every array is a CuPy array of 2 or 3 spatial axes whose memory is
    channels-last with any pixel stride (``channels_last_span``): the layout cuDNN's
    outputs have, which ``kernels.layout``'s kernels take and keep."""
    return all(is_gpu_array(a) and a.ndim in (4, 5) and channels_last_span(a) is not None
               for a in arrays)


def channels_last_span(a):
    """``a`` (N, C, *S) as (flat, pixel stride) when its memory is channels-last with any
    pixel stride Cs >= C: element (n, c, s) at flat[(n * prod(S) + s) * Cs + c] (s the C
    order index over S). A dense channels-last array has Cs = C; a channel slice
    ``y[:, c0:c1]`` of one has Cs = y.shape[1]. None for any other layout.

    ``flat`` is a 1-D view of ``a``'s memory from its first element to its last (kernels
    index it directly).
    """
    layout = _span_layout(a.shape, a.strides, a.itemsize)
    if layout is None:
        return None
    span, Cs = layout
    if isinstance(a, numpy.ndarray):
        flat = numpy.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,))
    else:
        flat = cupy.ndarray((span,), a.dtype, a.data)
    return flat, Cs


@functools.lru_cache(maxsize=4096)
def _span_layout(shape, strides, isz):
    """(span, Cs) of :func:`channels_last_span` from the shape and byte strides alone, or
    None (cached: a training step asks about the same few layouts about 100 times)."""
    if len(shape) < 3 or 0 in shape or any(st % isz for st in strides):
        return None
    st = [s // isz for s in strides]
    C = shape[1]
    axes = list(range(len(shape) - 1, 1, -1)) + [0]   # last spatial axis first, then N
    # the pixel stride: the stride of the innermost axis of more than one element
    Cs = next((st[i] for i in axes if shape[i] > 1), C)
    if Cs < C or (C > 1 and st[1] != 1):
        return None
    acc = Cs
    for i in axes:                                   # each axis: Cs * (pixels inside it)
        if shape[i] > 1 and st[i] != acc:
            return None
        acc *= shape[i]
    size = 1
    for n in shape:
        size *= n
    return (size // C - 1) * Cs + C, Cs               # last element's offset + 1


def gpu_module():
    """The ``cupy`` module, or None when CuPy is absent (for GPU-only code that must
    allocate before it has an array in hand, such as the cuDNN probe)."""
    return cupy


def gpu_time_ms(fn, repeats=3, give_up_ms=None):
    """Milliseconds per call of ``fn`` on the current stream, by CUDA events.

    One untimed call first (warm-up), then ``repeats`` calls between two events.

    Parameters
    ----------
    fn : callable
        Queues GPU work on the current stream.
    repeats : int
    give_up_ms : float or None
        When the warm-up call alone takes longer than this, return its time without the
        repeats (a candidate that is clearly slower than one already timed).

    Returns
    -------
    float
    """
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    if give_up_ms is not None:
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        first = cupy.cuda.get_elapsed_time(start, stop)
        if first > give_up_ms:
            return first
    else:
        fn()
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / repeats


# ---------------------------------------------------------------------------------------
# CPU threads


def _cgroup_cpu_quota(cgroup_file="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """CPUs granted by the cgroup CPU quota of this process (a float), or None if unlimited.

    cgroup v2: ``cpu.max`` ("max 100000" or "QUOTA PERIOD"); v1: ``cpu.cfs_quota_us`` (-1 =
    unlimited) over ``cpu.cfs_period_us``. The process's cgroup and each of its ancestors
    are read (a parent's quota bounds its children); the smallest quota wins.

    Parameters
    ----------
    cgroup_file : str
        The process's cgroup membership (``/proc/self/cgroup``).
    root : str
        Where the cgroup file systems are mounted.

    Returns
    -------
    float or None
    """
    try:
        with open(cgroup_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            bases, v2 = [root, os.path.join(root, "unified")], True
        elif "cpu" in controllers.split(","):
            bases, v2 = [os.path.join(root, controllers), os.path.join(root, "cpu")], False
        else:
            continue
        chain = [path]
        while chain[-1] not in ("/", ""):
            chain.append(os.path.dirname(chain[-1]))
        for base in bases:
            for p in chain:
                d = os.path.join(base, p.lstrip("/"))
                try:
                    if v2:
                        with open(os.path.join(d, "cpu.max")) as f:
                            quota, period = (f.read().split() + ["100000"])[:2]
                        if quota != "max":
                            quotas.append(int(quota) / int(period))
                    else:
                        with open(os.path.join(d, "cpu.cfs_quota_us")) as f:
                            quota = int(f.read())
                        with open(os.path.join(d, "cpu.cfs_period_us")) as f:
                            period = int(f.read())
                        if quota > 0 and period > 0:
                            quotas.append(quota / period)
                except (OSError, ValueError):
                    continue
    return min(quotas) if quotas else None


def cpu_threads():
    """CPUs this process may use: its affinity mask, bounded by its cgroup CPU quota.

    ``os.cpu_count()`` counts the host's cores, which a container, a batch scheduler
    (``taskset``, Slurm's cpusets) or a quota may not grant; a BLAS sized by it
    oversubscribes the CPUs it has. The quota is rounded down (at least 1): 1.5 CPUs of
    quota run one thread.

    Returns
    -------
    int
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


#: Environment variables that set a thread count for BLAS / OpenMP, respected when set.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def env_threads():
    """The smallest positive thread count in :data:`THREAD_VARIABLES`, or None."""
    counts = []
    for name in THREAD_VARIABLES:
        try:
            v = int(os.environ.get(name, "").split(",")[0])
        except ValueError:
            continue
        if v > 0:
            counts.append(v)
    return min(counts) if counts else None


_CPU = {"threads": None, "pool": None, "blas": None}
_CPU_LOCK = threading.Lock()


def _blas_libraries():
    """threadpoolctl's controllers of the BLAS/OpenMP libraries loaded in this process,
    SciPy's BLAS (the one cupyden's CPU kernels call) loaded first."""
    if _CPU["blas"] is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)
        from threadpoolctl import ThreadpoolController
        _CPU["blas"] = ThreadpoolController().lib_controllers
    return _CPU["blas"]


def set_cpu_threads(n=None):
    """Set the threads of cupyden's CPU work and of every BLAS; return the count.

    Parameters
    ----------
    n : int or None
        None: :func:`env_threads` when one of its variables is set, else
        :func:`cpu_threads`.

    Returns
    -------
    int
        The thread count now in use.

    Raises
    ------
    InputError
        For n < 1.
    """
    if n is None:
        n = env_threads() or cpu_threads()
    n = int(n)
    if n < 1:
        raise InputError("--threads must be at least 1, got %d" % n)
    with _CPU_LOCK:
        for lib in _blas_libraries():
            lib.set_num_threads(n)
        if _CPU["pool"] is not None and _CPU["pool"].n != n:
            _CPU["pool"].close()
            _CPU["pool"] = None
        if _CPU["pool"] is None:
            _CPU["pool"] = _CpuPool(n)
        _CPU["threads"] = n
    return n


def get_cpu_threads():
    """The thread count of cupyden's CPU work (choosing it by :func:`set_cpu_threads`'s
    rules on first use)."""
    if _CPU["threads"] is None:
        set_cpu_threads()
    return _CPU["threads"]


_ONE_BLAS = {"depth": 0, "lock": threading.Lock()}


@contextlib.contextmanager
def one_blas_thread():
    """Inside, every BLAS library runs on its calling thread only (nested use is fine).

    cupyden's kernels parallelise over tiles themselves; a BLAS call that wakes BLAS
    worker threads costs more than the call: OpenBLAS's idle workers busy-wait for about
    2^28 cycles (0.1 s) before they sleep, on the cores that cupyden's threads (or another
    job) need. Measured: 12% more CPU time in a 2-thread U-Net training step from a few
    small matrix products per layer outside the pool (benchmarks/RESULTS.md).
    """
    with _ONE_BLAS["lock"]:
        _ONE_BLAS["depth"] += 1
        if _ONE_BLAS["depth"] == 1:
            for lib in _blas_libraries():
                lib.set_num_threads(1)
    try:
        yield
    finally:
        with _ONE_BLAS["lock"]:
            _ONE_BLAS["depth"] -= 1
            if _ONE_BLAS["depth"] == 0:
                for lib in _blas_libraries():
                    lib.set_num_threads(get_cpu_threads())


class _CpuPool:
    """n - 1 worker threads plus the caller, taking tasks from one shared counter.

    Dynamic scheduling: a thread takes the next task when it finishes one, so a thread that
    the OS deschedules (another job on the same cores) takes fewer tasks instead of holding
    the others at a barrier. Idle workers block on their queue (no polling).
    """

    def __init__(self, n):
        self.n = n
        self.inbox = [queue.SimpleQueue() for _ in range(n - 1)]
        self.done = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.local = threading.local()
        self.threads = [threading.Thread(target=self._work, args=(s,), daemon=True,
                                         name="cupyden-cpu-%d" % s) for s in range(1, n)]
        for t in self.threads:
            t.start()

    def _drain(self, job, slot):
        fn, counter, n_tasks = job
        self.local.inside = True
        try:
            for i in iter(counter.__next__, None):
                if i >= n_tasks:
                    return None
                fn(i, slot)
        except BaseException as exc:      # handed to the caller
            return exc
        finally:
            self.local.inside = False

    def _work(self, slot):
        while True:
            job = self.inbox[slot - 1].get()
            if job is None:
                return
            self.done.put(self._drain(job, slot))

    def map(self, fn, n_tasks):
        if n_tasks <= 1 or self.n == 1 or getattr(self.local, "inside", False):
            for i in range(n_tasks):             # inline (also for a call made by a task)
                fn(i, 0)
            return
        helpers = min(self.n - 1, n_tasks - 1)
        with self.lock, one_blas_thread():       # one BLAS thread per calling thread
            job = (fn, itertools.count(), n_tasks)
            for s in range(helpers):
                self.inbox[s].put(job)
            errors = [self._drain(job, 0)] + [self.done.get() for _ in range(helpers)]
        for e in errors:
            if e is not None:
                raise e

    def close(self):
        for q in self.inbox:
            q.put(None)


def cpu_map(fn, n_tasks):
    """Call ``fn(i, slot)`` for every task ``i`` in ``range(n_tasks)`` on the CPU threads.

    ``slot`` (0 .. threads - 1) names the thread running the task, so that a task can use
    per-thread scratch buffers and accumulators without locks; slot 0 is the caller. Tasks
    run in any order and must not write the same memory. NumPy copies and ufuncs and the
    BLAS calls of :mod:`cupyden.functional.blas_cpu` release the GIL, so the threads run
    at once. Returns when all tasks are done; the first exception a task raised is
    re-raised here.

    Parameters
    ----------
    fn : callable (int, int) -> None
    n_tasks : int
    """
    get_cpu_threads()
    _CPU["pool"].map(fn, n_tasks)


#: Accumulators of :func:`cpu_map_sum`: a fixed number, so that sums do not depend on
#: which thread ran which task.
SUM_CHUNKS = 8


def cpu_map_sum(fn, n_tasks, acc):
    """Call ``fn(i, slot, part)`` for every task ``i``, where ``part`` is a row of ``acc``
    that task ``i`` may add into; return ``acc.sum(axis=0)``: a sum over tasks that gives
    the same bits on every run with the same tasks, whichever thread runs which.

    Tasks are cut into ``len(acc)`` runs of consecutive tasks; each run is one
    :func:`cpu_map` task that calls ``fn`` in task order and adds into its own row, and the
    rows are summed in order at the end. (Adding into one row per *thread* made every
    weight gradient depend on which thread happened to take which tile: two identical
    training runs ended with different weights.)

    Parameters
    ----------
    fn : callable (int, int, array) -> None
        ``fn(i, slot, part)``; ``slot`` names the thread (for scratch buffers).
    n_tasks : int
    acc : numpy.ndarray (runs, ...)
        Zeroed accumulators, e.g. ``numpy.zeros((SUM_CHUNKS,) + shape)``.

    Returns
    -------
    numpy.ndarray
        ``acc.sum(axis=0)``.
    """
    runs = len(acc)

    def run(k, slot):
        for i in range(k * n_tasks // runs, (k + 1) * n_tasks // runs):
            fn(i, slot, acc[k])

    cpu_map(run, runs)
    return acc.sum(axis=0)


#: Elements per band of :func:`cpu_map_rows` (1 MiB of float32: a band stays in L2).
CPU_BAND_ELEMENTS = 256 * 1024


def cpu_map_rows(fn, N, H, row_elements):
    """Call ``fn(n, r0, r1, slot)`` over bands of rows [r0, r1) of N images of H rows.

    Bands hold about :data:`CPU_BAND_ELEMENTS` elements (``row_elements`` per row), and
    there are at least four per thread when the images allow; they run as
    :func:`cpu_map` tasks.

    Parameters
    ----------
    fn : callable (n, r0, r1, slot) -> None
    N, H : int
    row_elements : int
        Elements a row of a band touches (for the band size).
    """
    rows = max(1, CPU_BAND_ELEMENTS // max(1, row_elements))
    rows = max(1, min(rows, H, -(-N * H // (4 * get_cpu_threads()))))
    tasks = [(n, r0, min(H, r0 + rows)) for n in range(N) for r0 in range(0, H, rows)]
    cpu_map(lambda i, slot: fn(*tasks[i], slot), len(tasks))


#: Host arrays of at least this many bytes come from :func:`cpu_empty`'s pool.
CPU_POOL_MIN_BYTES = 1 << 20
#: Free pooled bytes kept for reuse at most (the oldest free buffers beyond are released).
CPU_POOL_BYTES = 1 << 30
_POOL = {"buffers": [], "lock": threading.Lock()}


def cpu_empty(shape, dtype):
    """An uninitialised host array, its memory reused from an earlier array once that one
    (and every view of it) is gone.

    A fresh large array costs page faults on first touch: the kernel zeroes and maps each
    page (measured: 10-20% of a CPU training step, as system time). Like CuPy's memory
    pool on the GPU, buffers are kept and handed out again; a buffer is free when only the
    pool refers to it (its reference count: every view of it refers to it through
    ``.base``). At most :data:`CPU_POOL_BYTES` of free buffers are kept.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype

    Returns
    -------
    numpy.ndarray
        C-contiguous.
    """
    dtype = numpy.dtype(dtype)
    nbytes = int(numpy.prod(shape)) * dtype.itemsize
    if nbytes < CPU_POOL_MIN_BYTES:
        return numpy.empty(shape, dtype)
    with _POOL["lock"]:
        buffers = _POOL["buffers"]
        # free: referred to by the list and getrefcount's argument only
        free = [i for i in range(len(buffers)) if sys.getrefcount(buffers[i]) == 2]
        pick = next((i for i in free if buffers[i].size == nbytes), None)
        if pick is not None:
            buf = buffers.pop(pick)
            buffers.append(buf)                        # most recently used last
        else:
            spare = sum(buffers[i].size for i in free) + nbytes - CPU_POOL_BYTES
            for i in free:                             # oldest free buffers first
                if spare <= 0:
                    break
                spare -= buffers[i].size
                buffers[i] = None
            buffers[:] = [b for b in buffers if b is not None]
            buf = numpy.empty(nbytes, numpy.uint8)
            buffers.append(buf)
    return buf.view(dtype).reshape(shape)
