"""Denoising as a library: load a model, denoise an array, denoise a whole dataset.

Three calls, re-exported as ``cupyden.load_model``, ``cupyden.denoise`` and
``cupyden.denoise_files``; ``cupyden-denoise`` is a thin command over them.

The file pipeline (:func:`denoise_files`) overlaps the disk with the device::

    reader thread     file k+1: read-only memory map of the MRC file -> host buffer
                      (page-locked on a GPU, so the copy to the device runs at full rate)
    calling thread    file k: host -> device, value checks, Fourier binning, one
                      normalisation, the network in tiles (``cupyden.infer``), the inverse
                      normalisation, device -> host buffer
    writer threads    files k-1, k-2, ...: temporary file in the output folder, renamed when
                      whole

On a GPU the calling thread's work runs on the device; on a CPU the same code runs with
NumPy and the threads overlap the reads and writes with the network. Queues hold at most
``QUEUE_DEPTH`` files each way and host buffers are reused, so memory stays bounded
whatever the number of files.

Batch semantics. A file that cannot be denoised (anything :class:`InputError` covers: a
file a STAR file lists but that is missing, a truncated file, an unsupported mode, NaN/Inf,
a constant image, a stack where a micrograph is needed, a full disk) is reported on one
line, nothing is written for it, and the batch goes on; the failures are listed in
``failed.txt`` in the output folder. A path given by name that does not exist, and
outputs that would clash, are refused before anything starts (:func:`plan_jobs`).
An interrupt (Ctrl-C) lets the writers finish the file each is writing and drops the
rest; no partial file is left (outputs are renamed into place only when complete), and
``only_unfinished=True`` then completes the batch.
"""

import contextlib
import os
import queue
import sys
import threading
import time
from typing import NamedTuple

import numpy

from .. import backend
from ..errors import InputError
from ..functional.conv import PRECISIONS, cudnn_problem, set_precision
from ..infer import TTA, denoise_array
from ..io.atomic import atomic_output, output_folder
from ..io.mrc import check_image, read_mrc_into, write_mrc
from ..io.pairs import expand_sources
from ..io.patches import fourier_bin, normalization

#: Files waiting between the reader and the device, and between the device and the writers.
QUEUE_DEPTH = 2
#: Writer threads: an MRC write is mrcfile's header-statistics pass over the image (about
#: 50 ms for 4096^2 float32 on one core) and a copy into the page cache, longer than the
#: GPU's ~20 ms network pass, so several write at once (one per 4 cores, 1 to 4).
WRITERS = max(1, min(4, (os.cpu_count() or 1) // 4))
#: Default tile core in pixels for 2-D models (after binning).
TILE = 2048
#: Stages timed by :func:`denoise_files` (seconds summed over files; stages of different
#: threads overlap in time).
STAGES = ("read", "h2d", "bin+norm", "network", "d2h", "write", "wait")
#: Output formats: MRC (float32, or float16), or an 8-bit PNG preview.
FORMATS = ("mrc", "png")
#: The file listing the inputs that failed, written in the output folder.
FAILED_LIST = "failed.txt"
#: Longer side of a PNG preview, in pixels (after binning by an integer factor).
PREVIEW_SIDE = 1024


# --------------------------------------------------------------------------------- model

class DenoiseModel:
    """A network ready to denoise, with what it must know about its inputs.

    Attributes
    ----------
    network : cupyden.models.base.Model
        In evaluation mode, on ``device``, weights of the precision's dtype.
    config : dict
        The training configuration ("model", "bin", "normalize", "pairs", ...).
    device : cupyden.backend.Device
    precision : str
        "fp32", "tf32" or "fp16" (what "auto" resolved to).
    source : str
        The model file, or ``topaz:NAME``.
    """

    def __init__(self, network, config, device, precision, source):
        self.network, self.config, self.device = network, config, device
        self.precision, self.source = precision, source

    @property
    def bin(self):
        """Fourier-crop binning factor the model was trained with (1: none)."""
        return int(self.config.get("bin", 1))

    @property
    def normalize(self):
        """Normalisation method ("robust", "percentile" or "meanstd")."""
        return self.config.get("normalize", "robust")

    @property
    def is_f2fd(self):
        """True for a model trained with ``--pairs f2fd`` (averaged F2Fd inference)."""
        return self.config.get("pairs") == "f2fd"

    @property
    def ndim(self):
        """2 for micrographs, 3 for a volume model (F2Fd's 3-D U-Net, ``UNet3d``)."""
        return int(getattr(self.network, "ndim", 2))

    def __repr__(self):
        return "DenoiseModel(%s: %s on %s, %s, bin %d)" % (
            self.source, self.config["model"]["arch"], self.device.name, self.precision,
            self.bin)


def _weights(path):
    """(state dict, config) of a cupyden checkpoint or a ``topaz:NAME`` model
    (:func:`cupyden.training.read_model_file`)."""
    from ..training import read_model_file

    config, state = read_model_file(path)
    return state, config


def fp16_allowed(state):
    """Whether a model's weights can run in float16: every parameter and buffer finite and
    within float16's range (|v| <= 65504) after rounding.

    Parameters
    ----------
    state : dict name -> numpy array

    Returns
    -------
    bool
    """
    arrays = [numpy.asarray(v) for v in state.values()]
    return all(bool(numpy.isfinite(a).all()) and float(numpy.abs(a).max(initial=0)) <= 65504
               for a in arrays if a.dtype.kind == "f")


def resolve_precision(precision, xp, state):
    """The precision ``"auto"`` stands for, else ``precision`` itself.

    auto: fp16 on a GPU with cuDNN when the weights allow it (:func:`fp16_allowed`), tf32
    on a GPU with cuDNN otherwise, fp32 on a GPU without cuDNN and on the CPU.

    Parameters
    ----------
    precision : str
        "auto" or one of ``functional.conv.PRECISIONS``.
    xp : module
    state : dict name -> array
        The model's weights.

    Returns
    -------
    str
    """
    if precision != "auto":
        return precision
    if xp is numpy or cudnn_problem() is not None:
        return "fp32"
    return "fp16" if fp16_allowed(state) else "tf32"


def load_model(path, device=None, precision="auto"):
    """Load a denoising model onto a device.

    Parameters
    ----------
    path : str
        A ``model.h5`` or ``checkpoint.h5`` written by cupyden-train, or ``topaz:NAME``
        (unet, unet-small, unet-v0.2.1, fcnn) for Topaz-Denoise's pretrained weights read
        from an installed topaz-em (no binning, mean/std normalisation, as Topaz does).
    device : None, int, str or cupyden.backend.Device
        GPU ordinal, -1 for the CPU, "auto"; None reads ``CUPYDEN_DEVICE``, else auto.
    precision : str
        "auto" (:func:`resolve_precision`), "fp32", "tf32" or "fp16". The convolution
        settings are per process: the last model loaded sets TF32 on or off.

    Returns
    -------
    DenoiseModel

    Raises
    ------
    InputError
        Missing or unreadable model file, unknown Topaz model, a GPU that cannot be used,
        an unknown precision, or tf32/fp16 without cuDNN.
    """
    from ..models import build_model

    if precision != "auto" and precision not in PRECISIONS:
        raise InputError("precision must be auto or one of %s, got %r"
                         % (", ".join(PRECISIONS), precision))
    dev = device if isinstance(device, backend.Device) else backend.select_device(
        None if device is None else str(device))
    state, config = _weights(path)
    precision = resolve_precision(precision, dev.xp, state)
    dtype = set_precision(precision, dev.xp)
    network = build_model(config["model"]).to(dev.xp, dtype).eval()
    network.load_state(state)
    return DenoiseModel(network, config, dev, precision, path)


# --------------------------------------------------------------------------------- arrays

class StageTimes:
    """Seconds spent per stage (:data:`STAGES`), summed over files, from any thread."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage, seconds):
        with self._lock:
            self.seconds[stage] += seconds

    @contextlib.contextmanager
    def stage(self, name, xp=numpy):
        """Time the block; on a GPU, wait for its queued work first (so it is counted)."""
        t0 = time.perf_counter()
        yield
        backend.synchronize(xp)
        self.add(name, time.perf_counter() - t0)



def _bin_and_normalize(model, x, factor, times):
    xp = backend.get_array_module(x)
    with times.stage("bin+norm", xp):
        image = fourier_bin(x.astype(numpy.float32, copy=False), factor)
        norm = normalization(image, model.normalize)
    return image, norm


def _denoise_2d(model, x, factor, tile, batch_size, times, tta):
    """One micrograph already on the model's device -> (denoised on the device, stats)."""
    image, norm = _bin_and_normalize(model, x, factor, times)
    with times.stage("network", model.device.xp):
        return denoise_array(model.network, image, model.device.xp, tile, batch_size, norm,
                             tta)


def _denoise_f2fd(model, data, factor, tile, samples, passes, times):
    """F2Fd's averaged inference (``cupyden.f2fd``) of a volume or micrograph (host)."""
    from .. import f2fd

    data = backend.to_host(data)
    if data.ndim == 2 and factor > 1:
        data = fourier_bin(numpy.asarray(data, numpy.float32), factor)
    prm = model.config["f2fd"]
    prm = f2fd.F2FdParams(**dict(prm, sphere_fraction=tuple(prm["sphere_fraction"])))
    with times.stage("bin+norm"):
        x, norm = f2fd.prepare(data)
    with times.stage("network", model.device.xp):
        den = norm.invert(f2fd.denoise(model.network, x, prm, model.device.xp, samples,
                                       passes, tile))
    return den.astype(numpy.float32, copy=False)


def _denoise_volume(model, x, tile, times):
    """One tomogram already on the model's device -> (denoised on the device, stats): one
    normalisation for the volume, tiles with the receptive field's halo (``infer``)."""
    xp = model.device.xp
    with times.stage("bin+norm", xp):
        norm = normalization(x, model.normalize)
    with times.stage("network", xp):
        return denoise_array(model.network, x, xp, tile, 1, norm)


def _tile(model, tile):
    """The tile core: given, or an F2Fd model's training patch, or None for a 3-D model
    (``infer.volume_tile``: from the GPU memory budget), else ``TILE``."""
    if tile is not None:
        return int(tile)
    if model.is_f2fd:
        return model.config["patch_size"]
    return None if model.ndim == 3 else TILE


#: Test-time augmentation counts (``infer.TTA``): 1 (none), 2, 4, 8.
TTA_COUNTS = tuple(sorted(TTA))


def check_tta(model, tta):
    """Refuse a test-time augmentation the model cannot take.

    Parameters
    ----------
    model : DenoiseModel or None
        None checks the count only (a Dask client, which does not load the model).
    tta : int

    Raises
    ------
    InputError
        ``tta`` not in :data:`TTA_COUNTS`; above 1 for a tomogram model (the missing
        wedge has an orientation) or an F2Fd model (its own averaged inference).
    """
    if tta not in TTA_COUNTS:
        raise InputError("tta must be one of %s, got %r" % (", ".join(map(str, TTA_COUNTS)),
                                                            tta))
    if model is not None and tta > 1 and (model.ndim == 3 or model.is_f2fd):
        what = ("an F2Fd model (it averages its own samples)" if model.is_f2fd else
                "a tomogram model (a missing wedge cannot be rotated)")
        raise InputError("test-time augmentation (tta %d) flips and rotates micrographs; %s "
                         "is %s: use tta 1" % (tta, model.source, what))


def denoise(model, image, bin=None, tile=None, batch_size=4, samples=4, passes=4, odd=None,
            tta=1):
    """Denoise one micrograph, a stack of micrographs, or a tomogram (a 3-D model).

    The image is binned as the model was trained (Fourier cropping), normalised with one
    statistic of the whole image, denoised in tiles whose halo covers the receptive field
    (so the result equals a whole-image pass), and returned in the input's units.

    Tomograms (a model trained on half tomograms, ``UNet3d``): the volume alone is
    denoised; with ``odd`` (the other half tomogram), both halves are denoised, each with
    its own normalisation, and averaged, as cryoCARE does (Buchholz et al. 2019): the
    average is the denoised full tomogram.

    Parameters
    ----------
    model : DenoiseModel
        From :func:`load_model`.
    image : numpy or cupy array (H, W), (N, H, W) or (D, H, W), any real dtype
        A micrograph; a stack of N micrographs for a 2-D model (each denoised on its own);
        a volume for a 3-D model (F2Fd's or ``UNet3d``; for the latter the even half).
    bin : int or None
        Fourier-crop binning factor; None = the model's. Pixel size grows by this factor.
    tile : int or None
        Tile core in pixels after binning; None = 2048, an F2Fd model's training patch, or
        for a tomogram model cores chosen from a GPU memory budget
        (``infer.volume_tile``: 256^3 for UNet3d in float16).
    batch_size : int
        Tiles per forward pass (2-D models).
    samples, passes : int
        F2Fd only: K Fourier-sample inputs x T dropout passes averaged.
    odd : numpy or cupy array (D, H, W) or None
        Tomogram models only: the odd half tomogram, denoised and averaged with ``image``.
    tta : int
        Test-time augmentation of micrographs (2-D models other than F2Fd's): the mean of
        the network's output over 1, 2, 4 or 8 flips and rotations of each micrograph,
        each transformed back (``infer.denoise_array``; Lim et al. 2017, EDSR+'s
        self-ensemble); ``tta`` times the network time.

    Returns
    -------
    float32 array, of the input's array module
        (H // bin, W // bin), (N, H // bin, W // bin), or (D, H, W).

    Raises
    ------
    InputError
        NaN/Inf or constant images, a volume for a 2-D model or the reverse, an image
        smaller than the network's size multiple, ``odd`` of another shape or for a model
        other than a tomogram model's, binning of a tomogram, ``tta`` not 1, 2, 4 or 8,
        or above 1 for a tomogram or an F2Fd model (:func:`check_tta`).
    """
    check_tta(model, tta)
    xp_in = backend.get_array_module(image)
    factor = model.bin if bin is None else int(bin)
    tile = _tile(model, tile)
    times = StageTimes()
    if image.ndim not in (2, 3) or (model.is_f2fd and image.ndim != model.ndim):
        raise InputError("the image has shape %s; this %d-D model takes %s" % (
            tuple(image.shape), model.ndim, "volumes (D, H, W)" if model.ndim == 3 else
            "micrographs (H, W)" if model.is_f2fd else "(H, W) or stacks (N, H, W)"))
    volume = model.ndim == 3 and not model.is_f2fd
    if volume and image.ndim != 3:
        raise InputError("the image has shape %s; this tomogram model takes volumes (D, H, W)"
                         % (tuple(image.shape),))
    if odd is not None and (not volume or tuple(odd.shape) != tuple(image.shape)):
        raise InputError("odd (%s) must be the other half tomogram, of the even half's shape "
                         "%s, for a tomogram model" % (tuple(odd.shape), tuple(image.shape)))
    if volume and factor != 1:
        raise InputError("binning applies to micrographs; bin the tomogram before denoising")
    x = backend.to_device(image, model.device.xp)
    check_image(x, "the image")
    if volume:
        out = _denoise_volume(model, x, tile, times)[0]
        if odd is not None:
            x = backend.to_device(odd, model.device.xp)
            check_image(x, "the odd half")
            out += _denoise_volume(model, x, tile, times)[0]
            out *= 0.5                             # the mean of the two denoised halves
    elif model.is_f2fd:
        out = _denoise_f2fd(model, x, factor, tile, samples, passes, times)
    elif x.ndim == 2:
        out = _denoise_2d(model, x, factor, tile, batch_size, times, tta)[0]
    else:
        out = model.device.xp.stack([_denoise_2d(model, s, factor, tile, batch_size, times,
                                                 tta)[0] for s in x])
    return backend.to_host(out) if xp_in is numpy else backend.to_device(out, xp_in)


def preview(image, max_side=PREVIEW_SIDE):
    """An 8-bit preview of a denoised micrograph (NumPy or CuPy).

    Binned by the smallest integer factor that brings the longer side to at most
    ``max_side`` (Fourier cropping, :func:`cupyden.io.patches.fourier_bin`), then the
    0.5th to 99.5th percentile mapped linearly to 0-255 (clipped).

    Parameters
    ----------
    image : array (H, W), float
    max_side : int
        Pixels.

    Returns
    -------
    uint8 array (H // b, W // b) of the input's array module
    """
    xp = backend.get_array_module(image)
    factor = max(1, -(-max(image.shape) // max_side))
    small = fourier_bin(image, factor)
    lo, hi = float(xp.percentile(small, 0.5)), float(xp.percentile(small, 99.5))
    scaled = (small - lo) * (255.0 / max(hi - lo, 1e-30))
    return xp.clip(xp.rint(scaled), 0, 255).astype(numpy.uint8)


# --------------------------------------------------------------------------------- files

class Job(NamedTuple):
    """One input file (with its odd half for a pair of half tomograms) and the output it
    becomes."""
    source: str
    target: str
    odd: object = None


class BatchResult(NamedTuple):
    """What :func:`denoise_files` did.

    written : list of Job
        Outputs written by this call, in input order.
    skipped : list of Job
        Inputs whose output existed (``only_unfinished``).
    failed : list of (str, str)
        (input, one-line reason), in input order; also in ``failed.txt``.
    stars : list of str
        STAR files written (``denoised_micrographs.star``).
    seconds : float
        Wall time of the call.
    times : dict str -> float
        Seconds per stage (:data:`STAGES`) summed over files.
    """
    written: list
    skipped: list
    failed: list
    stars: list
    seconds: float
    times: dict

    def stage_line(self):
        """One line: seconds per file of each stage (stages of different threads overlap)."""
        n = max(1, len(self.written) + len(self.failed))
        return "per micrograph (mean of %d; the threads' stages overlap): %s" % (
            n, ", ".join("%s %.3f s" % (k, self.times[k] / n) for k in STAGES))

    def summary(self, output_dir):
        """One line for the end of a run."""
        line = "%d micrograph(s) denoised, %d failed, %d skipped (output already there) in " \
               "%.1f s" % (len(self.written), len(self.failed), len(self.skipped), self.seconds)
        if self.failed:
            line += "; failures listed in %s" % os.path.join(output_dir, FAILED_LIST)
        return line


def _stem(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[:-4] if stem.endswith((".mrc", ".tif")) else stem       # name.mrc.gz


def plan_jobs(inputs, output_dir, suffix="", fmt="mrc", only_unfinished=False,
              star_columns=("rlnMicrographName",)):
    """Inputs -> (jobs to run, jobs skipped, STAR sources), refusing clashes up front.

    Parameters
    ----------
    inputs : str or list of str
        Files, folders, globs or STAR files (:func:`cupyden.io.pairs.expand`).
    output_dir : str
    suffix : str
        Added to each output's basename.
    fmt : "mrc" or "png"
        The output's extension.
    only_unfinished : bool
        Skip inputs whose output exists.
    star_columns : sequence of str
        STAR columns naming the inputs.

    Returns
    -------
    jobs, skipped : lists of Job
    stars : list of (str, list of str)
        Each STAR file given and the (resolved) inputs it named.

    Raises
    ------
    InputError
        A pattern matches nothing; two different inputs would be written to the same
        output (the same basename in two folders); an output would overwrite its input.
    """
    if fmt not in FORMATS:
        raise InputError("format must be one of %s, got %r" % (", ".join(FORMATS), fmt))
    sources = expand_sources(inputs, star_columns)
    by_target, jobs = {}, []
    for _, paths in sources:
        for path in paths:
            target = os.path.join(output_dir, _stem(path) + suffix + "." + fmt)
            key = os.path.realpath(path)
            if target in by_target:
                if by_target[target][0] != key:
                    raise InputError(
                        "%s and %s would both be written to %s; denoise them into separate "
                        "--output folders or rename one" % (by_target[target][1], path, target))
                continue                              # the same file named twice
            if os.path.exists(target) and os.path.exists(path) and os.path.samefile(target, path):
                raise InputError("%s: the output would overwrite the input; choose another "
                                 "--output or a --suffix" % path)
            by_target[target] = (key, path)
            jobs.append(Job(path, target))
    done = [only_unfinished and os.path.exists(j.target) for j in jobs]
    todo = [j for j, d in zip(jobs, done) if not d]
    return todo, [j for j, d in zip(jobs, done) if d], [(s, paths) for s, paths in sources if s is not None]


def plan_volume_jobs(inputs, output_dir, odd=None, suffix="", only_unfinished=False):
    """Inputs of a tomogram model -> (jobs to run, jobs skipped, tomograms STAR sources).

    A RELION 5 tomograms STAR file gives one job per row: its two half tomograms
    (``rlnTomoReconstructedTomogramHalf1``/``Half2``), averaged after denoising, written
    to ``<rlnTomoName><suffix>.mrc``. Other inputs are even half tomograms paired with
    ``odd`` by name (``cupyden.io.pairs.pair_halves``), written to the shared name without
    the half tag (``tomo_half1.mrc`` -> ``tomo.mrc``); without ``odd``, each volume is
    denoised alone under its own basename.

    Returns
    -------
    jobs, skipped : lists of Job
    stars : list of (str, dict)
        Each tomograms STAR file and {rlnTomoName: the input path of its job}.

    Raises
    ------
    InputError
        A pattern matching nothing, unmatched halves, two inputs with one output, an
        output that would overwrite its input.
    """
    from ..io.pairs import expand, half_key, pair_halves
    from ..io.star import is_tomograms_star, read_tomogram_halves

    patterns = [inputs] if isinstance(inputs, str) else list(inputs)
    stars = [p for p in patterns if is_tomograms_star(p)]
    rest = [p for p in patterns if p not in stars]
    planned, star_rows = [], []
    for star in stars:
        rows = read_tomogram_halves(star)
        star_rows.append((star, {name: h1 for name, h1, _ in rows}))
        planned += [(h1, name, h2) for name, h1, h2 in rows]
    if rest and odd:
        planned += [(e, half_key(e), o) for e, o in pair_halves(rest, odd, volumes=True)]
    elif rest:
        planned += [(p, _stem(p), None) for p in expand(rest)]
    by_target, jobs = {}, []
    for source, name, other in planned:
        target = os.path.join(output_dir, name + suffix + ".mrc")
        if target in by_target and by_target[target] != os.path.realpath(source):
            raise InputError("two inputs would both be written to %s; denoise them into "
                             "separate --output folders or rename one" % target)
        if target in by_target:
            continue
        for path in (source, other):
            if path and os.path.exists(target) and os.path.exists(path) and \
                    os.path.samefile(target, path):
                raise InputError("%s: the output would overwrite the input; choose another "
                                 "--output or a --suffix" % path)
        by_target[target] = os.path.realpath(source)
        jobs.append(Job(source, target, other))
    done = [only_unfinished and os.path.exists(j.target) for j in jobs]
    return ([j for j, d in zip(jobs, done) if not d], [j for j, d in zip(jobs, done) if d],
            star_rows)


class _HostBuffers:
    """Reused host buffers (page-locked on a GPU): one is taken for a file's input or output
    and given back when its copy or write is done.

    Parameters
    ----------
    allocate : callable (shape, dtype) -> numpy array
        ``backend.pinned_empty`` or ``numpy.empty``; called with a byte count.
    """

    def __init__(self, allocate):
        self._allocate = allocate
        self._free = []               # raw uint8 buffers
        self._lent = {}               # address -> raw buffer behind a view handed out
        self._lock = threading.Lock()

    def take(self, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` on a free buffer
        (the smallest that fits; a new one when none does)."""
        n = int(numpy.prod(shape)) * numpy.dtype(dtype).itemsize
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.nbytes >= n]
            raw = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes)) if fits else None
        if raw is None:
            raw = self._allocate((max(n, 1),), numpy.uint8)
        view = raw[:n].view(dtype).reshape(shape)
        with self._lock:
            self._lent[view.ctypes.data] = raw
        return view

    def give(self, array):
        """Return the buffer behind ``array`` (a view from :meth:`take`; others are ignored)."""
        with self._lock:
            raw = self._lent.pop(array.ctypes.data, None)
            if raw is not None:
                self._free.append(raw)


class Settings(NamedTuple):
    """How each file is denoised and written (:func:`denoise_files`'s options); a factor
    or tile of None means the model's (:meth:`resolved`)."""
    factor: object
    tile: object
    batch_size: int
    samples: int
    passes: int
    float16: bool
    fmt: str
    tta: int

    def resolved(self, model):
        """These settings with the model's binning and tile where they are None."""
        return self._replace(factor=model.bin if self.factor is None else int(self.factor),
                             tile=_tile(model, self.tile))


def _read_loop(model, jobs, buffers, inbox, stop, times):
    """Reader thread: each job's data into a host buffer, or the reason it failed."""
    model.device.bind()
    for job in jobs:
        if stop.is_set():
            break
        t0 = time.perf_counter()
        try:
            if model.is_f2fd or model.ndim == 3:
                from ..io.tiff import read_image
                mic = read_image(job.source, ndim=model.ndim)
                if job.odd:                   # [even, odd] half tomograms
                    mic = [mic, read_image(job.odd, ndim=3)]
            else:
                mic = read_mrc_into(job.source, buffers.take, ndim=2)
            item = (job, mic, None)
        except InputError as exc:
            item = (job, None, str(exc))
        except Exception as exc:                # a programming error: raised by the caller
            item = (job, None, exc)
        times.add("read", time.perf_counter() - t0)
        inbox.put(item)
    inbox.put(None)


def _write_loop(model, buffers, outbox, done, stop, times):
    """Writer thread: write each (job, array, pixel size) atomically; report to ``done``."""
    model.device.bind()
    while True:
        item = outbox.get()
        if item is None:
            return
        job, data, pixel_size, fmt, float16 = item
        if stop.is_set():                       # interrupted: drop what was not started
            buffers.give(data)
            continue
        t0 = time.perf_counter()
        error = None
        try:
            if fmt == "png":
                _write_png(job.target, data)
            else:
                write_mrc(job.target, data, pixel_size, float16=float16)
        except InputError as exc:
            error = str(exc)
        except Exception as exc:
            error = exc
        finally:
            buffers.give(data)
        times.add("write", time.perf_counter() - t0)
        done.put((job, error))


def _write_png(path, image):
    """An 8-bit grayscale PNG, written atomically (Pillow, which matplotlib brings)."""
    from PIL import Image

    with atomic_output(path, ".png") as tmp:
        Image.fromarray(numpy.ascontiguousarray(image)).save(tmp, format="PNG")


def _compute(model, job, mic, settings, buffers, times):
    """One file on the device: (host array to write, its pixel size in Å/px)."""
    xp = model.device.xp
    if model.ndim == 3 and not model.is_f2fd:
        return _compute_volume(model, job, mic, settings, buffers, times)
    with times.stage("h2d", xp):
        x = backend.to_device(mic.data, xp)     # on the CPU: the buffer itself
    check_image(x, job.source)
    if model.is_f2fd:
        out = _denoise_f2fd(model, x, settings.factor, settings.tile, settings.samples,
                            settings.passes, times)
        scale = settings.factor if out.ndim == 2 else 1
    else:
        out, _ = _denoise_2d(model, x, settings.factor, settings.tile, settings.batch_size,
                             times, settings.tta)
        scale = settings.factor
    if settings.fmt == "png":
        out = preview(out)
    with times.stage("d2h", xp):
        host = backend.to_host_into(out, buffers.take(out.shape, out.dtype))
    return host, mic.pixel_size * scale


def _compute_volume(model, job, mic, settings, buffers, times):
    """One tomogram, or the mean of its two denoised halves (:func:`denoise`)."""
    xp = model.device.xp
    even, odd = mic if isinstance(mic, list) else (mic, None)
    if odd is not None and odd.data.shape != even.data.shape:
        raise InputError("%s %s and %s %s: half tomograms of different shapes" % (
            job.source, even.data.shape, job.odd, odd.data.shape))
    if settings.factor != 1:
        raise InputError("binning applies to micrographs; bin the tomogram before denoising")
    out = None
    for half, path in ((even, job.source), (odd, job.odd)):
        if half is None:
            continue
        with times.stage("h2d", xp):
            x = backend.to_device(half.data, xp)
        check_image(x, path)
        den, _ = _denoise_volume(model, x, settings.tile, times)
        x = None
        if out is None:
            out = den
        else:
            out += den
            out *= 0.5                          # the mean of the two denoised halves
    if settings.fmt == "png":
        out = preview(out[out.shape[0] // 2])  # the central z slice
    with times.stage("d2h", xp):
        host = backend.to_host_into(out, buffers.take(out.shape, out.dtype))
    return host, even.pixel_size


def default_log(line):
    """Print a line to stderr without breaking a progress bar."""
    from tqdm import tqdm
    tqdm.write(line, file=sys.stderr)


def denoise_files(model, inputs, output_dir, suffix="", bin=None, tile=None, batch_size=4,
                  samples=4, passes=4, float16=False, fmt="mrc", only_unfinished=False,
                  star_columns=("rlnMicrographName",), progress=False, callback=None,
                  log=None, odd=None, tta=1):
    """Denoise many files, streaming: reads, device and writes overlap (module docstring).

    Each output has the input's basename (plus ``suffix``), in ``output_dir``; an MRC output
    is float32 (or float16) with the input's pixel size times the binning. A STAR file
    among the inputs (RELION's ``rlnMicrographName``) also gives
    ``denoised_micrographs.star`` in ``output_dir`` (MRC outputs only; see
    :func:`cupyden.io.star.write_denoised_star`). Inputs are never opened for writing.

    Parameters
    ----------
    model : DenoiseModel
        From :func:`load_model`.
    inputs : str or list of str
        MRC files (TIFF too for 3-D models), folders, globs, or STAR files. For a tomogram
        model (``UNet3d``): volumes, even half tomograms (with ``odd``), or RELION 5
        tomograms STAR files (:func:`plan_volume_jobs`), which also give
        ``denoised_tomograms.star`` (``cupyden.io.star.write_denoised_tomograms_star``).
    output_dir : str
        Created if needed.
    suffix : str
        Text added to each output's basename.
    bin, tile, batch_size, samples, passes
        As in :func:`denoise`.
    float16 : bool
        Write MRC mode 12 (float16) after a range check, instead of float32.
    fmt : "mrc" or "png"
        "png": an 8-bit preview per micrograph instead (:func:`preview`).
    only_unfinished : bool
        Skip inputs whose output exists (counted in ``BatchResult.skipped``).
    star_columns : sequence of str
        STAR columns naming the inputs.
    progress : bool
        Show a progress bar (tqdm) on stderr.
    callback : callable (Job) -> None, or None
        Called in the calling thread after each output is complete (e.g. to start picking
        on it); an exception it raises stops the batch as an interrupt does.
    log : callable (str) -> None, or None
        Receives one line per failed file; None prints it to stderr.
    odd : str or list of str or None
        Tomogram models: the odd half tomograms, paired with ``inputs`` by name; each pair
        is denoised and averaged into one output (:func:`denoise`).
    tta : int
        Test-time augmentation of micrographs: 1, 2, 4 or 8 transforms (:func:`denoise`).

    Returns
    -------
    BatchResult

    Raises
    ------
    InputError
        Before anything is written: a pattern matching nothing, outputs that would clash
        (:func:`plan_jobs`), an unwritable output folder, an unreadable STAR file, a
        ``tta`` the model cannot take (:func:`check_tta`).
    KeyboardInterrupt
        After the writers finished the files they were writing (no partial file).
    """
    t_start = time.perf_counter()
    check_tta(model, tta)
    volume = model.ndim == 3 and not model.is_f2fd
    if odd and not volume:
        raise InputError("--odd pairs half tomograms for a tomogram model (trained with "
                         "--pairs halves on volumes); %s is not one" % model.source)
    tomo_stars = []
    if volume:
        jobs, skipped, tomo_stars = plan_volume_jobs(inputs, output_dir, odd, suffix,
                                                     only_unfinished)
        stars = []
    else:
        jobs, skipped, stars = plan_jobs(inputs, output_dir, suffix, fmt, only_unfinished,
                                         star_columns)
    output_folder(output_dir)
    settings = Settings(bin, tile, int(batch_size), int(samples), int(passes), bool(float16),
                        fmt, int(tta)).resolved(model)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), unit="micrograph", file=sys.stderr)
    try:
        written, failed, times = run_jobs(model, jobs, settings, callback, log,
                                          bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    result = finish_batch(jobs, written, skipped, failed, times, stars, output_dir, settings,
                          star_columns, time.perf_counter() - t_start)
    if tomo_stars and fmt == "mrc":
        result = result._replace(stars=_write_tomogram_stars(tomo_stars, result.written +
                                                             result.skipped, output_dir))
    return result


def finish_batch(jobs, written, skipped, failed, times, stars, output_dir, settings,
                 star_columns, seconds):
    """Sort the outcome into input order, write ``failed.txt`` and the STAR files.

    Returns
    -------
    BatchResult
    """
    order = {j.source: i for i, j in enumerate(jobs)}
    written = sorted(written, key=lambda j: order[j.source])
    failed = sorted(failed, key=lambda f: order[f[0]])
    _failed_list(output_dir, failed)
    star_files = []
    if settings.fmt == "mrc":
        star_files = _write_stars(stars, written + skipped, output_dir, star_columns,
                                  settings.factor)
    return BatchResult(written, skipped, failed, star_files, seconds, times)


def run_jobs(model, jobs, settings, callback=None, log=None, advance=None):
    """The streaming pipeline over planned jobs (module docstring).

    Parameters
    ----------
    model : DenoiseModel
    jobs : list of Job
    settings : Settings
    callback : callable (Job) -> None, or None
        After each output is complete, in the calling thread.
    log : callable (str) -> None, or None
        One line per failed file; None prints to stderr.
    advance : callable (int) -> None, or None
        Called with 1 per file finished (a progress bar's ``update``).

    Returns
    -------
    written : list of Job
    failed : list of (str, str)
        (input, one-line reason).
    times : dict str -> float
        Seconds per stage, summed.

    Raises
    ------
    InputError
        ``settings.tta`` the model cannot take (:func:`check_tta`).
    KeyboardInterrupt
        After the writers finished the files they were writing.
    """
    log = log or default_log
    settings = settings.resolved(model)
    check_tta(model, settings.tta)          # a Dask worker's model is known only here
    times = StageTimes()
    buffers = _HostBuffers(backend.pinned_empty if model.device.is_gpu else numpy.empty)
    inbox, outbox, done = queue.Queue(QUEUE_DEPTH), queue.Queue(QUEUE_DEPTH), queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=_read_loop, daemon=True,
                              args=(model, jobs, buffers, inbox, stop, times))
    writers = [threading.Thread(target=_write_loop, daemon=True,
                                args=(model, buffers, outbox, done, stop, times))
               for _ in range(WRITERS)]
    written, failed = [], []

    def finish(job, error):
        if isinstance(error, Exception):        # a programming error in a thread
            raise error
        if error is None:
            written.append(job)
            if callback is not None:
                callback(job)
        else:
            failed.append((job.source, " ".join(error.split())))
            log("error: %s" % failed[-1][1])
        if advance is not None:
            advance(1)

    def collect(block):
        while True:
            try:
                finish(*done.get(block=block))
            except queue.Empty:
                return
            if block:
                return

    reader.start()
    for w in writers:
        w.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = inbox.get()
            times.add("wait", time.perf_counter() - t0)
            if item is None:
                break
            job, mic, error = item
            if error is not None:
                finish(job, error)
                continue
            try:
                host, pixel_size = _compute(model, job, mic, settings, buffers, times)
            except InputError as exc:
                finish(job, str(exc))
                continue
            finally:
                if not model.is_f2fd and model.ndim == 2:
                    buffers.give(mic.data)      # the reader may reuse it now
            t0 = time.perf_counter()
            outbox.put((job, host, pixel_size, settings.fmt, settings.float16))
            times.add("wait", time.perf_counter() - t0)
            collect(block=False)
        for _ in writers:
            outbox.put(None)
        while len(written) + len(failed) < len(jobs):
            collect(block=True)
        for w in writers:
            w.join()
    except BaseException:
        stop.set()                              # writers finish their current file only
        _drain(inbox)
        for _ in writers:
            outbox.put(None)
        for w in writers:
            w.join()
        raise
    return written, failed, dict(times.seconds)


def _drain(q):
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _failed_list(output_dir, failed):
    """Write ``failed.txt`` (input TAB reason per line), or remove a stale one."""
    path = os.path.join(output_dir, FAILED_LIST)
    if failed:
        with atomic_output(path, ".txt") as tmp, open(tmp, "w") as f:
            f.writelines("%s\t%s\n" % pair for pair in failed)
    elif os.path.exists(path):
        os.remove(path)


def _write_stars(stars, done, output_dir, columns, factor):
    """One denoised STAR file per STAR input (``denoised_micrographs.star`` for one)."""
    from ..io.star import DENOISED_STAR, write_denoised_star

    outputs = {j.source: j.target for j in done}
    out = []
    for source, _ in stars:
        name = DENOISED_STAR if len(stars) == 1 else "denoised_%s" % os.path.basename(source)
        path = os.path.join(output_dir, name)
        write_denoised_star(source, outputs, path, columns, factor)
        out.append(path)
    return out


def _write_tomogram_stars(stars, done, output_dir):
    """One ``denoised_tomograms.star`` per tomograms STAR input (named after it when there
    are several)."""
    from ..io.star import DENOISED_TOMOGRAMS_STAR, write_denoised_tomograms_star

    outputs = {j.source: j.target for j in done}
    out = []
    for source, names in stars:
        path = os.path.join(output_dir, DENOISED_TOMOGRAMS_STAR if len(stars) == 1 else
                            "denoised_%s" % os.path.basename(source))
        write_denoised_tomograms_star(source, {n: outputs[p] for n, p in names.items()
                                               if p in outputs}, path)
        out.append(path)
    return out
