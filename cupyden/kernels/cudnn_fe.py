"""cuDNN convolutions through NVIDIA's cuDNN Frontend, executed on CuPy buffers.

CuPy 14 has no cuDNN bindings. The frontend (PyPI ``nvidia-cudnn-frontend``, imported as
``cudnn``) builds cuDNN graphs and executes them on raw device pointers. This is the only
module that imports ``cudnn``, and it is imported only on the GPU path.

Three graphs per convolution (Chetlur et al. 2014, "cuDNN: efficient primitives for deep
learning"), for x (N, C, *S), w (F, C, *K), y (N, F, *S'), S = 2 or 3 spatial axes:

    fprop   y  = act(conv(x, w) + b)      conv_fprop -> bias -> relu | leaky_relu, one graph
    dgrad   dx = conv_dgrad(dz, w)        the convolution's adjoint in x
    wgrad   dw = conv_wgrad(x, dz)        its adjoint in w (float32 output for float16 data)

where dz = dy * act'(y) and the bias gradient (the sum of dz over N and space) come from
``functional.conv_cudnn`` beforehand. The activation's backward is not fused
into dgrad: cuDNN fuses dReLU after dgrad (the *previous* layer's activation, applied to this
layer's dx), which would tie each layer to its neighbour.

Plans. A graph is keyed by (op, shapes, strides, data type, stride, padding, activation,
TF32 allowed). Engines that reduce in less than float32 (numerical note
REDUCED_PRECISION_REDUCTION) are used for float16 data only (as PyTorch allows by default;
float16 wgrad without them ran 5 ms per layer); loss scaling catches their overflows. The
forward pass has two routes, timed once per shape (:func:`conv_forward`): the fused graph,
or the convolution's graph alone followed by bias and activation in one pass (the only
route when cuDNN has no engine for the fused graph: float64 before Blackwell, whose
runtime-fusion engines do not take doubles). The first time a key is seen, up to
``SETTINGS.tune_plans`` candidate plans (``cupyden.settings``) from the
heuristics (mode A, then the fallback list) are built and timed on the real buffers (one
warm-up and ``TUNE_REPEATS`` timed runs each, CUDA events, the repeats skipped for a
candidate whose warm-up is ``GIVE_UP`` times slower than the best so far; ``WIDE_TUNING``
times as many candidates when the best is slower than ``SLOW_PLAN_MS``, also when the plan
cache holds a narrower search's choice), and the fastest is kept: the
heuristics' first plan can be several times slower than the best (PERFORMANCE.md: 6x for a
float16 wgrad). Engines that need run-time compilation (NVRTC, seconds per plan) are tried
only when no precompiled engine supports the graph: with them, tuning the 3-D U-Net's
graphs cost about 50 s per process (F2Fd inference of 256^3 took 61 s, not 7). The
winner's name is kept on disk (``kernels.plan_cache``): a later process builds that plan
alone, untimed, and every process sharing the file runs the same kernels. One workspace
buffer, grown as needed, serves every plan.

Math. float16 data: tensor cores, float32 accumulation. float32 data: strict float32 unless
the precision setting is "tf32" (``cupyden.settings``); strict mode deselects the engines whose numerical notes say TENSOR_CORE or
DOWN_CONVERT_INPUTS, which for float32 data are the TF32 engines (inputs rounded to 10
mantissa bits; PyTorch's ``allow_tf32`` filter does the same). float64 data (gradient checks)
uses double-precision engines.

Layout. Tensors are declared with their logical dims (N, C, *S) and the physical strides of
the CuPy array. Every tensor is channels-last (NHWC / NDHWC memory behind the logical view:
tensor-core kernels read that layout); outputs are allocated so, and an input or filter in
another layout is copied (:func:`operand`) - the models' other ops keep channels-last, so
between convolutions nothing is.

Library. ``libcudnn.so.9`` is loaded from the ``lib`` folder of an installed nvidia-cudnn-cu12
or nvidia-cudnn-cu13 wheel when there is one, else from the system's library path; a probe
(one small fused convolution checked against a direct sum) decides whether cuDNN is usable.
``CUPYDEN_CUDNN=0`` turns it off.
"""

import ctypes
import functools
import glob
import importlib.util
import os
import sys

import numpy

from .. import backend
from ..backend import channels_last_strides, empty_channels_last
from ..settings import SETTINGS, using
from . import layout, plan_cache

#: Timed runs per candidate plan.
TUNE_REPEATS = 2
#: A graph whose best of ``SETTINGS.tune_plans`` candidates takes longer than this (ms) is
#: worth more tuning: up to ``WIDE_TUNING`` times as many candidates are timed. On an H200
#: (benchmarks/RESULTS.md, session 10) the U-Net's 3 x 3 96 -> 32 convolution of a 4096^2
#: image in tf32 took 14.2 ms with the best of 8 candidates and 6.94 ms with candidate 12
#: of 48; a few more candidates cost about a second for such a graph, once per process
#: (and never again with the plan cache).
SLOW_PLAN_MS = 4.0
WIDE_TUNING = 4
#: A candidate whose warm-up run is slower than this many times the best so far is not
#: timed further (some graphs offer pathological plans: a fused 5 x 5 128 -> 64 tf32 graph
#: at 4096^2 had an engine that took 14.5 s per run, session 10).
GIVE_UP = 4.0
#: Output dtype of float16 wgrad: float16 (cuDNN 9.19 on an H200 offered one 5 ms plan per
#: DnCNN layer for a float32 output); added to the float32 gradients.
WGRAD_FLOAT16_DTYPE = numpy.dtype(numpy.float16)

_STATE = {"probed": False, "problem": None, "cudnn": None, "handle": None, "library": None,
          "stream": None, "workspace": None}
_PLANS = {}
#: Keys of graphs cuDNN could not run, with the reason (a fused forward then runs unfused;
#: anything else falls back to im2col in ``functional.conv``).
UNSUPPORTED = {}


class Unsupported(Exception):
    """cuDNN has no working plan for this graph (the caller falls back to im2col)."""


# ----------------------------------------------------------------------------- library

def library_paths():
    """``libcudnn.so.9`` files of installed nvidia-cudnn-cu12/cu13 wheels (may be empty).

    Returns
    -------
    list of str
    """
    try:
        spec = importlib.util.find_spec("nvidia.cudnn")
    except (ImportError, ValueError):
        spec = None
    out = []
    for folder in (spec.submodule_search_locations or []) if spec else []:
        exact = os.path.join(folder, "lib", "libcudnn.so.9")
        out += [exact] if os.path.exists(exact) else sorted(
            glob.glob(os.path.join(folder, "lib", "libcudnn.so.9*")))
    return out


def _load():
    """Load libcudnn (a wheel's first), then import the frontend; returns (module, source)."""
    source = "the system library path"
    for path in library_paths():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)   # the frontend's dlopen then finds it
            source = path
            break
        except OSError:
            continue
    return _import_frontend(), source


def _import_frontend():
    """``import cudnn`` without PyTorch.

    The frontend's ``cudnn/wrapper.py`` imports torch when it is installed (measured on the
    H200, 2026-11-30: 3.7 s of a warm fresh process's 7.8 s, 5.9 s cold), only to accept
    torch tensors. cupyden hands the frontend device pointers (ints) and cuDNN data types, so
    torch is hidden while the frontend loads (``sys.modules["torch"] = None`` makes its
    ``import torch`` fail as if torch were absent) and visible again right after. If torch
    is already imported, nothing is hidden.
    """
    if "torch" in sys.modules:
        import cudnn
        return cudnn
    sys.modules["torch"] = None
    try:
        import cudnn
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return cudnn


def problem():
    """None when cuDNN can be used on the current GPU, else why not (one line).

    The first call loads the library, creates the handle and runs the probe; later calls
    return the stored answer. ``CUPYDEN_CUDNN=0`` always gives a reason.

    Returns
    -------
    str or None
    """
    if os.environ.get("CUPYDEN_CUDNN", "").strip() == "0":
        return "cuDNN is turned off by CUPYDEN_CUDNN=0"
    if not _STATE["probed"]:
        _STATE["probed"] = True
        _STATE["problem"] = _probe()
    return _STATE["problem"]


def _probe():
    if backend.gpu_module() is None or backend.gpu_count() == 0:
        return "no GPU: %s" % backend.why_no_gpu()
    try:
        cudnn, source = _load()
    except Exception as exc:
        return ("the cuDNN Frontend package could not be imported (%s: %s); install "
                "'cupyden[cudnn]' (nvidia-cudnn-frontend)" % (type(exc).__name__, exc))
    try:
        version = cudnn.backend_version()
        handle = cudnn.create_handle()
    except Exception as exc:
        return ("no usable cuDNN 9 library (%s: %s); install nvidia-cudnn-cu12 or "
                "nvidia-cudnn-cu13" % (type(exc).__name__, exc))
    _STATE.update(cudnn=cudnn, handle=handle, library=source, version=version)
    xp = backend.gpu_module()
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 7)).astype(numpy.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(numpy.float32)
    b = rng.standard_normal(4).astype(numpy.float32)
    try:
        with using(precision="fp32"):
            y = backend.to_host(conv_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), 1, 1,
                                             0.0))
    except Exception as exc:
        return "the cuDNN probe convolution failed (%s: %s)" % (type(exc).__name__, exc)
    ref = numpy.maximum(_direct_conv(x, w, b, 1), 0)
    err = float(numpy.linalg.norm(y - ref) / numpy.linalg.norm(ref))
    if not err < 1e-4:
        return "the cuDNN probe convolution was wrong (relative error %.2g)" % err
    return None


def _direct_conv(x, w, b, p):
    """Reference for the probe: stride-1 2-D convolution as K*K sums of products (NumPy)."""
    N, C, H, W = x.shape
    F, _, K, _ = w.shape
    xpad = numpy.pad(x.astype(numpy.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    OH, OW = H + 2 * p - K + 1, W + 2 * p - K + 1
    y = numpy.zeros((N, F, OH, OW))
    for i in range(K):
        for j in range(K):
            y += numpy.einsum("fc,nchw->nfhw", w[:, :, i, j], xpad[:, :, i:i + OH, j:j + OW])
    return y + b[None, :, None, None]


def info():
    """Library source, cuDNN and frontend versions, TF32 setting, graphs (for reports).

    Returns
    -------
    dict
    """
    why = problem()
    c = _STATE["cudnn"]
    return {"usable": why is None, "problem": why, "library": _STATE["library"],
            "cudnn": _STATE.get("version"), "frontend": getattr(c, "__version__", None),
            "tf32": SETTINGS.tf32, "graphs": len(_PLANS), "unsupported": len(UNSUPPORTED)}


# ------------------------------------------------------------------------------ layout

@functools.lru_cache(maxsize=4096)
def _dense_channels_last(shape, strides, itemsize):
    """True when byte ``strides`` are those of dense channels-last memory for ``shape``
    (axes of one element may have any stride)."""
    return all(n == 1 or st == e * itemsize
               for n, st, e in zip(shape, strides, channels_last_strides(shape)))


def operand(a, count=True):
    """``a`` itself when its memory is dense channels-last with a 16-byte aligned start,
    else a channels-last copy. Copies of activations are counted in ``COPIES`` (the
    models' ops keep channels-last, so a training step makes none); filters are read in
    place when ``optim.Parameters`` stores them channels-last (on a GPU), else copied
    every call (a few MB at most), and not counted."""
    if a.data.ptr % 16 == 0 and _dense_channels_last(a.shape, a.strides, a.itemsize):
        return a
    COPIES[0] += count
    return backend.channels_last_copy(a)


#: Activation layout copies made by :func:`operand` (tests assert that a U-Net step makes
#: none).
COPIES = [0]


def _operand(a, count=True):
    """(channels-last array, its declared element strides)."""
    a = operand(a, count)
    return a, channels_last_strides(a.shape)


# -------------------------------------------------------------------------------- plans

def _data_type(dtype):
    T = _STATE["cudnn"].data_type
    return {numpy.float16: T.HALF, numpy.float32: T.FLOAT,
            numpy.float64: T.DOUBLE}[numpy.dtype(dtype).type]


def _new_graph(dtype):
    c = _STATE["cudnn"]
    acc = c.data_type.DOUBLE if numpy.dtype(dtype) == numpy.float64 else c.data_type.FLOAT
    return c.pygraph(io_data_type=_data_type(dtype), intermediate_data_type=acc,
                     compute_data_type=acc, handle=_STATE["handle"])


def _tensor(g, name, a, strides):
    return g.tensor(name=name, dim=list(a.shape), stride=list(strides),
                    data_type=_data_type(a.dtype))


def _workspace(nbytes):
    ws = _STATE["workspace"]
    if ws is None or ws.size < nbytes:
        ws = backend.gpu_module().empty(max(int(nbytes), 256), numpy.uint8)
        _STATE["workspace"] = ws
    return ws.data.ptr


def _bind_stream():
    ptr = backend.current_stream().ptr
    if ptr != _STATE["stream"]:
        _STATE["cudnn"].set_stream(handle=_STATE["handle"], stream=ptr)
        _STATE["stream"] = ptr


class _Plan:
    """A built graph, its tensors' uids, and the index and workspace of its fastest plan."""
    __slots__ = ("graph", "uids", "index", "workspace", "ms", "candidates")


def _plan(key, make, buffers, dtype):
    """The tuned plan for ``key``; builds and times the candidates on first use.

    ``make(g)`` adds the graph's nodes to the empty graph g and returns {name: tensor};
    ``buffers`` maps the same names to CuPy arrays.
    """
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    if key in UNSUPPORTED:
        raise Unsupported(UNSUPPORTED[key])
    c, handle = _STATE["cudnn"], _STATE["handle"]
    _bind_stream()
    try:
        for precompiled in (True, False):
            g = _new_graph(dtype)
            tensors = make(g)
            g.validate()
            g.build_operation_graph()
            g.create_execution_plans([c.heur_mode.A, c.heur_mode.B, c.heur_mode.FALLBACK])
            if numpy.dtype(dtype) == numpy.float32 and not SETTINGS.tf32:
                g.deselect_numeric_notes([c.numerical_note.TENSOR_CORE,
                                          c.numerical_note.DOWN_CONVERT_INPUTS,
                                          c.numerical_note.REDUCED_PRECISION_REDUCTION])
            elif numpy.dtype(dtype) != numpy.float16:
                g.deselect_numeric_notes([c.numerical_note.REDUCED_PRECISION_REDUCTION])
            if precompiled:     # NVRTC-compiled engines cost seconds each to build
                g.deselect_behavior_notes([c.behavior_note.RUNTIME_COMPILATION])
            try:
                g.check_support()
                break
            except Exception:
                if not precompiled:
                    raise
        uids = {name: t.get_uid() for name, t in tensors.items()}
        pack = {uids[k]: buffers[k].data.ptr for k in uids}
        n = g.get_execution_plan_count()
        best, built, tried = _recall(g, key, n), 0, 0   # an earlier process's choice, built
        limit = SETTINGS.tune_plans
        for i in range(0 if best else n):
            if built >= limit and best is not None and best[0] > SLOW_PLAN_MS:
                limit = _wide_limit()                        # a slow graph: look further
            if built >= limit:
                break
            tried = i + 1
            try:
                g.build_plan_at_index(i)
                built += 1
                ws = g.get_workspace_size_plan_at_index(i)
                wptr = _workspace(ws)
                ms = backend.gpu_time_ms(
                    lambda i=i, wptr=wptr: g.execute_plan_at_index(pack, wptr, i, handle=handle),
                    TUNE_REPEATS, give_up_ms=None if best is None else GIVE_UP * best[0])
            except Exception:
                continue
            if best is None or ms < best[0]:
                best = (ms, i, ws)
        if best is None:
            raise RuntimeError("none of %d candidate plans ran" % n)
        if built:
            _remember(g, key, best, built, tried)
    except Exception as exc:
        why = "%s: %s" % (type(exc).__name__, " ".join(str(exc).split())[:300])
        UNSUPPORTED[key] = why
        raise Unsupported("cuDNN has no plan for %s of %s: %s" % (key[0], key[1], why))
    plan = _Plan()
    plan.graph, plan.uids, plan.ms, plan.index, plan.workspace = g, uids, *best
    plan.candidates = built
    _PLANS[key] = plan
    return plan


def _cache_context():
    """GPU model and library versions: plan choices are reused only where these match."""
    return "%s|cudnn %s|frontend %s" % (backend.gpu_identity(), _STATE.get("version"),
                                        getattr(_STATE["cudnn"], "__version__", None))


def _wide_limit():
    """Candidates a slow graph may have timed: ``WIDE_TUNING`` times ``SETTINGS.tune_plans``
    (1 stays 1: the heuristics' first choice, untimed)."""
    n = SETTINGS.tune_plans
    return n if n <= 1 else WIDE_TUNING * n


def _recall(g, key, n):
    """(ms, index, workspace) of the plan ``plan_cache`` holds for ``key``, built, or None
    (no entry, no candidate of that name, it fails to build, or it is a slow graph's choice
    from a narrower search than this process would make: the caller tunes)."""
    try:
        entry = plan_cache.lookup(_cache_context(), repr(key))
        if entry and float(entry["ms"]) > SLOW_PLAN_MS and \
                entry.get("tried", entry["candidates"]) < min(n, _wide_limit()):
            return None
        for i in range(g.get_execution_plan_count() if entry else 0):
            if g.get_plan_name_at_index(i) == entry["plan"]:
                g.build_plan_at_index(i)
                return (float(entry["ms"]), i, g.get_workspace_size_plan_at_index(i))
    except Exception:               # the cache only saves time: never let it fail a graph
        return None
    return None


def _remember(g, key, best, built, tried):
    """Record the tuned plan's name in ``plan_cache`` (failures only cost time later):
    ``candidates`` built and timed, ``tried`` candidate indices visited."""
    try:
        plan_cache.remember(_cache_context(), repr(key), {
            "plan": g.get_plan_name_at_index(best[1]), "ms": best[0], "candidates": built,
            "tried": tried})
    except Exception:
        pass


def _run(plan, buffers):
    _bind_stream()
    pack = {uid: buffers[name].data.ptr for name, uid in plan.uids.items()}
    plan.graph.execute_plan_at_index(pack, _workspace(plan.workspace), plan.index,
                                     handle=_STATE["handle"])


def tuned_plans():
    """[(key, milliseconds of the chosen plan, its index, candidates timed)] (for reports)."""
    return [(k, p.ms, p.index, p.candidates) for k, p in _PLANS.items()]


def _key(op, arrays, dtype, *extra):
    shapes = tuple((a.shape, a.strides) for a in arrays)
    tf32 = SETTINGS.tf32 and numpy.dtype(dtype) == numpy.float32
    return (op, shapes, numpy.dtype(dtype).str, tf32) + extra


# -------------------------------------------------------------------------------- ops

def output_shape(x_shape, w_shape, stride, padding):
    """(N, F, *S') of a convolution: S' = (S + 2 padding - K) // stride + 1 per axis."""
    return (x_shape[0], w_shape[0]) + tuple(
        (s + 2 * padding - k) // stride + 1 for s, k in zip(x_shape[2:], w_shape[2:]))


def _pad_channels(a, channels):
    """``a`` (N, C, *S) with zero channels appended up to ``channels`` (``a`` itself when
    it has them), dense channels-last (``layout.pad_channels``: one pass over the output;
    the elementwise copy it replaced took 2.1 ms for a 97-channel 2048^2 float16 image
    on an H200, about 3x its memory time)."""
    return a if a.shape[1] == channels else layout.pad_channels(a, channels)


def _padded_channels(dtype, C):
    """C rounded up to a multiple of 32 for tensor-core data (float16, or float32 under
    tf32) with more than 8 channels that are not a multiple of 8 (Topaz's 97-channel
    decoder input), else C. cuDNN's tensor-core engines are slow on such channel counts:
    on an H200 (cuDNN 9.19, benchmarks/RESULTS.md, session 8) Topaz's 5 x 5 convolution
    97 -> 64 of a 2048^2 image took 27.95 ms in tf32 unpadded and 7.17 ms with 128
    channels; in float16 7.55 ms padded to 104 channels and 3.38 ms with 128 (the copy
    into the padded array comes on top). A 1-channel input is left alone: its
    convolution is small, and padding it would multiply its work."""
    dtype = numpy.dtype(dtype)
    tensor_cores = dtype == numpy.float16 or (dtype == numpy.float32 and SETTINGS.tf32)
    return -(-C // 32) * 32 if tensor_cores and C > 8 and C % 8 else C


def conv_forward(x, w, b, stride, padding, slope):
    """y = act(conv(x, w) + b), through the faster of two routes (tuned per shape).

    - fused: one cuDNN graph, conv_fprop -> bias -> (Leaky)ReLU;
    - split: the convolution's graph alone, then bias and activation in one in-place pass
      (``kernels.activation.bias_activation_kernel``), as PyTorch's eager mode does.

    The first call for a key times both (after their plans are tuned) and keeps the faster;
    the choice is kept on disk with the plans (``plan_cache``). On an H200 (cuDNN 9.19,
    benchmarks/RESULTS.md, session 9) the U-Net's 3 x 3 96 -> 32 convolution of a 4096^2
    image took 24.1 ms fused in tf32 and 7.3 ms without its bias; Topaz's 11 x 11 1 -> 48
    convolution of a 4096^2 image took 44.9 ms fused, 11.5 ms once the routes were timed
    (per-layer profiles). A graph cuDNN cannot fuse (float64 before Blackwell) takes the
    split route. float16 data keeps the fused graph untimed: the slow fused graphs
    measured were tf32's, and timing both routes doubles a fresh process's plan tuning
    (the K2 recipe's first 250 float16 training steps took 85 s with it, 59 s without).

    Parameters
    ----------
    x : cupy array (N, C, *S), float16/32/64, S = 2 or 3 axes
    w : cupy array (F, C, *K), dtype of x
    b : cupy array (F,) or None
    stride, padding : int
        The same on every spatial axis; zero padding.
    slope : None, 0.0 (ReLU) or the LeakyReLU slope

    Returns
    -------
    y : cupy array (N, F, *S'), dtype of x, dense channels-last memory

    Raises
    ------
    Unsupported
        When cuDNN has no working plan for the convolution itself.
    """
    Cp = _padded_channels(x.dtype, x.shape[1])
    if Cp != x.shape[1]:            # zero channels in input and filters: the same result
        return conv_forward(_pad_channels(x, Cp), _pad_channels(w, Cp), b, stride, padding,
                            slope)
    x = operand(x)
    if b is None and slope is None:
        return _fprop(x, w, None, stride, padding, None)
    if x.dtype == numpy.float16:    # fused: see the docstring
        return _fprop(x, w, b, stride, padding, slope)
    key = _key("epilogue", (x, w), x.dtype, stride, padding, b is not None, slope)
    split = _SPLIT.get(key)
    if split is None:
        split = _SPLIT[key] = _choose_route(key, x, w, b, stride, padding, slope)
    if not split:
        return _fprop(x, w, b, stride, padding, slope)
    y = _fprop(x, w, None, stride, padding, None)
    _bias_activation(y, b, slope)
    return y


#: key -> True when the split route (convolution, then bias and activation) is faster.
_SPLIT = {}


def _bias_activation(y, b, slope):
    """y = act(y + b) in place; ``y`` dense channels-last (N, F, *S), ``b`` (F,) or None."""
    from .activation import bias_activation_kernel
    xp = backend.get_array_module(y)
    F = y.shape[1]
    b = xp.zeros(F, y.dtype) if b is None else xp.ascontiguousarray(b, y.dtype)
    flat = backend.channels_last_span(y)[0]
    bias_activation_kernel(b, float(slope or 0.0), slope is not None, numpy.uint32(F),
                           flat.size < 2 ** 32, flat)


def _choose_route(key, x, w, b, stride, padding, slope):
    """True (split) or False (fused) for ``key``: the plan cache's choice when it has one,
    else both routes timed here (CUDA events, ``TUNE_REPEATS`` runs after a warm-up)."""
    try:
        entry = plan_cache.lookup(_cache_context(), repr(key))
        if entry is not None:
            return bool(entry["split"])
    except Exception:
        pass
    # gpu_time_ms's untimed first call of each route tunes that route's plans
    try:
        fused = backend.gpu_time_ms(lambda: _fprop(x, w, b, stride, padding, slope),
                                    TUNE_REPEATS)
    except Unsupported:
        return True
    y = empty_channels_last(backend.get_array_module(x),
                            output_shape(x.shape, w.shape, stride, padding), x.dtype)

    def split():
        _fprop(x, w, None, stride, padding, None, out=y)
        _bias_activation(y, b, slope)

    try:
        ms = backend.gpu_time_ms(split, TUNE_REPEATS)
    except Unsupported:
        return False
    try:
        plan_cache.remember(_cache_context(), repr(key),
                            {"split": ms < fused, "fused_ms": fused, "split_ms": ms})
    except Exception:
        pass
    return ms < fused


def _fprop(x, w, b, stride, padding, slope, out=None):
    """One fprop graph (with bias and activation fused when given) on a channels-last x;
    the output is allocated, or ``out`` (dense channels-last, the output's shape)."""
    xp = backend.get_array_module(x)
    nd = x.ndim - 2
    x, sx = _operand(x)
    w, sw = _operand(w, count=False)
    y = out if out is not None else empty_channels_last(
        xp, output_shape(x.shape, w.shape, stride, padding), x.dtype)
    sy = channels_last_strides(y.shape)
    buffers = {"x": x, "w": w, "y": y}
    F = w.shape[0]
    if b is not None:
        buffers["b"] = xp.ascontiguousarray(b).reshape((1, F) + (1,) * nd)
    key = _key("fprop", (x, w, y), x.dtype, stride, padding, b is not None, slope)

    def make(g):
        t = {"x": _tensor(g, "x", x, sx), "w": _tensor(g, "w", w, sw)}
        z = g.conv_fprop(image=t["x"], weight=t["w"], padding=[padding] * nd,
                         stride=[stride] * nd, dilation=[1] * nd, name="fprop")
        if b is not None:
            t["b"] = _tensor(g, "b", buffers["b"], channels_last_strides(buffers["b"].shape))
            z = g.bias(name="bias", input=z, bias=t["b"])
        if slope == 0.0:
            z = g.relu(name="relu", input=z)
        elif slope is not None:
            z = g.leaky_relu(name="leaky_relu", input=z, negative_slope=float(slope))
        z.set_output(True).set_dim(list(y.shape)).set_stride(list(sy)).set_data_type(
            _data_type(x.dtype))
        t["y"] = z
        return t

    _run(_plan(key, make, buffers, x.dtype), buffers)
    return y


def conv_dgrad(dz, w, x_shape, stride, padding):
    """dx = the adjoint of the convolution in x, applied to dz (cuDNN dgrad).

    Parameters
    ----------
    dz : cupy array (N, F, *S'), gradient at the convolution's output (after the
        activation's backward)
    w : cupy array (F, C, *K)
    x_shape : tuple (N, C, *S)
    stride, padding : int

    Returns
    -------
    dx : cupy array x_shape, dtype of dz

    Raises
    ------
    Unsupported
    """
    C = x_shape[1]
    Cp = _padded_channels(dz.dtype, C)
    if Cp != C:                     # as in conv_forward; dx: a view of the first C channels
        dx = conv_dgrad(dz, _pad_channels(w, Cp), (x_shape[0], Cp) + tuple(x_shape[2:]),
                        stride, padding)
        return dx[:, :C]
    xp = backend.get_array_module(dz)
    nd = dz.ndim - 2
    dz, sdz = _operand(dz)
    w, sw = _operand(w, count=False)
    dx = empty_channels_last(xp, tuple(x_shape), dz.dtype)
    sdx = channels_last_strides(dx.shape)
    buffers = {"dy": dz, "w": w, "dx": dx}

    def make(g):
        t = {"dy": _tensor(g, "dy", dz, sdz), "w": _tensor(g, "w", w, sw)}
        out = g.conv_dgrad(loss=t["dy"], filter=t["w"], padding=[padding] * nd,
                           stride=[stride] * nd, dilation=[1] * nd, name="dgrad")
        out.set_output(True).set_dim(list(dx.shape)).set_stride(list(sdx)).set_data_type(
            _data_type(dz.dtype))
        t["dx"] = out
        return t

    key = _key("dgrad", (dz, w, dx), dz.dtype, stride, padding)
    _run(_plan(key, make, buffers, dz.dtype), buffers)
    return dx


def conv_wgrad(x, dz, w_shape, stride, padding):
    """dw = the adjoint of the convolution in w (cuDNN wgrad).

    Parameters
    ----------
    x : cupy array (N, C, *S), the convolution's input
    dz : cupy array (N, F, *S')
    w_shape : tuple (F, C, *K)
    stride, padding : int

    Returns
    -------
    dw : cupy array w_shape; float32 for float16 data (it is accumulated into float32
        gradients), else the data's dtype

    Raises
    ------
    Unsupported
    """
    xp = backend.get_array_module(x)
    nd = x.ndim - 2
    F, C = w_shape[:2]
    if x.dtype == numpy.float16 and (F % 8 or C % 8):
        # cuDNN 9.19 has no float16 wgrad engine for 1 channel (the DnCNN's first and last
        # layers): zero channels up to a multiple of 8, keep the real filters' gradient
        Fp, Cp = -(-F // 8) * 8, -(-C // 8) * 8
        dw = conv_wgrad(_pad_channels(x, Cp), _pad_channels(dz, Fp),
                        (Fp, Cp) + tuple(w_shape[2:]), stride, padding)
        return dw[:F, :C]
    x, sx = _operand(x)
    dz, sdz = _operand(dz)
    out_dtype = WGRAD_FLOAT16_DTYPE if x.dtype == numpy.float16 else x.dtype
    dw = empty_channels_last(xp, tuple(w_shape), out_dtype)
    sdw = channels_last_strides(dw.shape)
    buffers = {"x": x, "dy": dz, "dw": dw}

    def make(g):
        t = {"x": _tensor(g, "x", x, sx), "dy": _tensor(g, "dy", dz, sdz)}
        out = g.conv_wgrad(image=t["x"], loss=t["dy"], padding=[padding] * nd,
                           stride=[stride] * nd, dilation=[1] * nd, name="wgrad")
        out.set_output(True).set_dim(list(dw.shape)).set_stride(list(sdw)).set_data_type(
            _data_type(out_dtype))
        t["dw"] = out
        return t

    key = _key("wgrad", (x, dz, dw), x.dtype, stride, padding)
    _run(_plan(key, make, buffers, x.dtype), buffers)
    return dw
