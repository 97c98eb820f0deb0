"""Train a denoiser on a whole dataset: sources -> pair views -> a patch store -> training.

    options
      -> resolve_options() the one place a run's options are decided: train()'s keywords,
                         the recipe's values for those left None (cupyden/recipes.py:
                         plain, topaz-finetune, ...; "auto" looks at the device and the
                         data), then the automatic values
    inputs (files, folders, globs)
      -> sources()       the one place the inputs are expanded into files
      -> make_view()     one micrograph: read, split or pair (count split, even/odd frame
                         sums of a movie with its gain reference, half micrographs,
                         synthetic noise), Fourier-bin; on the device when there is one
      -> build_store()   normalise (one statistic per micrograph, kept in the store), cut
                         patches one row of origins at a time and append them: one
                         micrograph in memory at a time, whatever the number of inputs
      -> fit()           on one device, or one process per GPU with the gradients summed
                         by NCCL (cupyden.distributed)
      -> held-out rows   of the first micrograph: corr(f(A), B) against corr(A, B)

Tomograms (``pairs="halves"`` on even/odd half tomograms, MRC or TIFF volumes, or a RELION 5
tomograms STAR file): the same steps in 3-D. Each pair of volumes is normalised by the
even half's statistic, cut into subvolumes of ``patch_size``^3 (training slab, then
validation slab along y, the tilt axis; the held-out slab at the far end of y is not
stored), streamed from the store with rotations about y and flips, and a 3-D U-Net
(``models.UNet3d``, cryoCARE-like) is trained; the evaluation scores the first tomogram's
held-out slab.

:func:`train` is the Python API (``cupyden.train``); ``cupyden-train`` parses its command
line into the same call. The random draws (count split, synthetic noise) are NumPy's on
the host with the seed of each micrograph (seed + its index), so a store is the same on a
CPU and a GPU and as earlier versions built it.
"""

import contextlib
import inspect
import os
import time
from typing import NamedTuple

import numpy

from .. import backend, f2fd as f2fd_mod, recipes, report
from ..data import k2_crop
from ..errors import InputError
from ..functional.conv import PRECISIONS, set_precision
from ..infer import denoise_array
from ..io.atomic import atomic_output, output_folder, refuse_to_overwrite
from ..io.checkpoint import load_checkpoint
from ..io.movies import even_odd_sums, open_movie, read_gain
from ..io.mrc import read_mrc, write_mrc
from ..io.pairs import check_distinct_views, count_split, expand, pair_halves, synthetic_pair
from ..io.patches import fourier_bin, normalization, patch_origins, patch_rows
from ..io.star import is_tomograms_star, read_tomogram_halves
from ..io.store import PatchStore, PatchStoreWriter
from ..io.tiff import image_shape, read_image
from ..metrics import halves_gain, to_json
from ..models import build_model
from ..training import fit, initial_weights, read_history

SOURCES = ("count-split", "movie", "halves", "gaussian", "poisson", "f2fd")
TWO_VIEWS = ("count-split", "movie", "halves")        # sources with two noisy halves
ARCHS = ("dncnn", "unet", "topaz", "unet3d")
VOLUME_ARCHS = ("unet3d",)                              # archs for tomograms (3-D)
NORMALIZATIONS = ("robust", "percentile", "meanstd")
SCHEDULES = ("constant", "step", "cosine", "plateau")
#: Keywords of :func:`train` that say where and how a run executes, not what it trains.
RUN_OPTIONS = ("output_dir", "device", "gpus", "rendezvous", "rank", "world_size",
               "nccl_timeout", "resume", "overwrite", "progress", "log")
#: F2Fd's options (names as in F2Fd; cupyden/f2fd.py) and the denoising K x T.
F2FD_DEFAULTS = {"p": 0.1, "Vmask_pct": 0.5, "volumetric_scale_factor": 8, "dropout_p": 0.3,
                 "total_samples": 20, "n_bernoulli_samples": 1, "features": 48,
                 "samples": 4, "passes": 4}


class View(NamedTuple):
    """Two views of one micrograph, binned.

    name : str
    a, b : float32 arrays (H, W) of the device's array module
        Input and target.
    pixel_size : float
        Å/px after binning.
    info : dict
        What the pair source measured (e.g. the count split's scale), for the store.
    """
    name: str
    a: object
    b: object
    pixel_size: float
    info: dict


def _choice(name, value, choices):
    if value not in choices:
        raise InputError("%s must be one of %s, got %r" % (name, ", ".join(choices), value))
    return value


def resolve_options(inputs=(), gpu_problem=None, resume=None, **options):
    """A run's options: :func:`train`'s keywords with its defaults filled in, the recipe
    applied and the automatic values resolved.

    Parameters
    ----------
    inputs : str or list of str
    gpu_problem : callable or None
        () -> None when the run trains on a GPU with cuDNN, else a few words why not; asked
        only when ``recipe`` is "auto" and the data are micrograph pairs
        (``recipes.choose``). None: ``recipes.device_problem()`` (the device that
        ``backend.select_device`` picks by default).
    resume : str or None
        The checkpoint a run resumes ("auto" keeps its recipe).
    **options
        Keywords of :func:`train` (those that describe the data and the training, not
        where it runs: ``output_dir``, ``device``, ``gpus``, ... are not taken).

    Returns
    -------
    dict
        Every such option, ``inputs`` as a list; "recipe" (its name, "auto" resolved) and
        "recipe_why" (why, and the recipe's values left out) with the recipe's values in
        the options left None (``cupyden.recipes``); ``lr``, ``steps``, ``bin``, ``arch``,
        ``base`` and ``stride`` resolved (an automatic stride of tomograms stays None:
        :func:`volume_stride` chooses it per tomogram), ``f2fd`` completed from
        ``F2FD_DEFAULTS``, "embedded" (no inputs and no store: the shipped K2 crop) and
        "volumes" (the inputs are half tomograms: 3-D training).

    Raises
    ------
    InputError
        An unknown choice or recipe, a topaz recipe for tomograms or f2fd, ``halves``
        without ``odd`` (or a tomograms STAR file), ``gain`` without movies, the embedded
        default with another pair source, a 2-D architecture for tomograms or the
        reverse, binning of tomograms.
    """
    o = {k: p.default for k, p in inspect.signature(train).parameters.items()
         if p.kind is p.KEYWORD_ONLY and k not in RUN_OPTIONS}
    unknown = sorted(set(options) - set(o))
    if unknown:
        raise TypeError("unknown option(s) %s" % ", ".join(unknown))
    o.update(options)
    o["inputs"] = list([inputs] if isinstance(inputs, str) else inputs or ())
    pairs = o["pairs"]
    o["volumes"] = _volumes(o)
    o["embedded"] = not o["inputs"] and not o["store"]
    o["bin"] = (4 if o["embedded"] else 1) if o["binning"] is None else int(o["binning"])
    # The recipe gives the options left None (the command leaves None those not given),
    # before the automatic values below are resolved from them.
    o["recipe"], why = recipes.choose(o["recipe"], o, gpu_problem or recipes.device_problem,
                                      resume)
    o["recipe_why"] = "; ".join([why] + recipes.apply(o["recipe"], o))
    if o["arch"] is None:
        o["arch"] = "unet3d" if o["volumes"] else "dncnn"
    if o["base"] is None:
        o["base"] = 16 if o["arch"] == "unet3d" else 32
    if o["stride"] is None and not o["volumes"]:
        o["stride"] = 32                    # tomograms: per tomogram (volume_stride)
    for name, choices in (("pairs", SOURCES), ("arch", ARCHS), ("loss", ("mse", "l1")),
                          ("normalize", NORMALIZATIONS),
                          ("lr_schedule", SCHEDULES), ("precision", PRECISIONS)):
        _choice(name, o[name], choices)
    o["lr"] = (1e-4 if pairs == "f2fd" else 1e-3) if o["lr"] is None else float(o["lr"])
    o["steps"] = (150 if o["embedded"] else 2000) if o["steps"] is None else int(o["steps"])
    o["f2fd"] = dict(F2FD_DEFAULTS, **(o["f2fd"] or {}))
    o["ema"] = float(o["ema"])
    if not 0.0 <= o["ema"] < 1.0:
        raise InputError("--ema must be 0 (off) or a decay in (0, 1), e.g. 0.999; got %g"
                         % o["ema"])
    if o["val_fraction"] + o["holdout_fraction"] > 0.9:
        raise InputError("--val-fraction plus --holdout-fraction leave under a tenth of the "
                         "rows for training; make them smaller")
    if pairs == "halves" and not o["odd"] and not o["embedded"] and not all(
            is_tomograms_star(p) for p in o["inputs"]):
        raise InputError("--pairs halves needs --odd (the odd half micrographs or "
                         "tomograms), or a RELION 5 tomograms STAR file as INPUT")
    if o["volumes"] != (o["arch"] in VOLUME_ARCHS) and not o["init"]:
        raise InputError("--arch %s is for %s; the inputs are %s (use --arch %s)" % (
            o["arch"], "tomograms" if o["arch"] in VOLUME_ARCHS else "micrographs",
            "tomograms" if o["volumes"] else "micrographs",
            "unet3d" if o["volumes"] else "dncnn, unet or topaz"))
    if o["volumes"] and o["bin"] != 1:
        raise InputError("--bin applies to micrographs; bin tomograms before training")
    if o["gain"] and pairs != "movie":
        raise InputError("--gain applies to movies (--pairs movie), not to --pairs %s" % pairs)
    if o["resplit"] and (pairs != "count-split" or o["bin"] != 1):
        raise InputError("--resplit draws new count splits: it needs --pairs count-split "
                         "and --bin 1 (binned halves are no longer counts)")
    if o["embedded"] and pairs != "count-split":
        raise InputError("the embedded default is a count split; give INPUT files for --pairs %s"
                         % pairs)
    return o


def _volumes(o):
    """Whether a run trains on tomograms: even/odd halves that are volumes (a RELION 5
    tomograms STAR file, or a first even half whose data is 3-D), or a 3-D store."""
    if o["store"] and not o["inputs"]:
        if not os.path.isfile(o["store"]):
            return False                        # (reported when the store is opened)
        store = PatchStore(o["store"])
        store.close()
        return store.ndim == 3
    if o["pairs"] != "halves" or not o["inputs"]:
        return False
    if any(is_tomograms_star(p) for p in o["inputs"]):
        return True
    first = [p for p in expand(o["inputs"]) if not p.lower().endswith(".star")]
    return bool(first) and len(image_shape(first[0])) == 3


def sources(o):
    """The micrographs (or movies, or pairs of halves) of a run, in order.

    The one place the inputs are expanded into files: folders, globs, and RELION STAR
    files, whose ``rlnMicrographMovieName`` column is read for movies and
    ``rlnMicrographName`` for micrographs (``cupyden.io.star``); a RELION 5 tomograms STAR
    file gives its rows' even/odd half tomograms (``rlnTomoReconstructedTomogramHalf1``,
    ``Half2``).

    Returns
    -------
    list of (str or None, str or None)
        (path, odd half's path or None); (None, None) for the embedded crop.
    """
    if o["embedded"]:
        return [(None, None)]
    if o["pairs"] == "halves":
        stars = [p for p in o["inputs"] if is_tomograms_star(p)]
        out = [(h1, h2) for p in stars for _, h1, h2 in read_tomogram_halves(p)]
        rest = [p for p in o["inputs"] if p not in stars]
        return out + (pair_halves(rest, o["odd"], o["volumes"]) if rest else [])
    column = "rlnMicrographMovieName" if o["pairs"] == "movie" else "rlnMicrographName"
    return [(p, None) for p in expand(o["inputs"], star_columns=(column,))]


def make_view(i, source, o, xp, gain=None, log=print):
    """Read micrograph ``i`` of the run and make its two views, binned, on ``xp``.

    Parameters
    ----------
    i : int
        Its index in :func:`sources` (the seed of its random draws is seed + i).
    source : (str or None, str or None)
    o : dict
        :func:`resolve_options`.
    xp : module
    gain : array (H, W) of xp or None
        The gain reference of a movie source.
    log : callable

    Returns
    -------
    View

    Raises
    ------
    InputError
        Unreadable input, noise that is not Poisson-like for a count split, too few frames.
    """
    path, other = source
    pairs, seed, info, mic = o["pairs"], o["seed"] + i, {}, None
    if o["embedded"]:
        mic = k2_crop()
        log("embedded default: %s, %dx%d px, %.4f A/px, %.1f e/A^2 (cupyden/data/PROVENANCE.md)"
            % (os.path.basename(mic.path), mic.data.shape[1], mic.data.shape[0],
               mic.pixel_size, mic.dose))
        path = mic.path
    name = os.path.basename(path)
    if pairs == "movie":
        with open_movie(path) as movie:
            a, b, _ = even_odd_sums(movie, o["drop_frames"], o["align"], gain, xp)
            pixel_size = movie.pixel_size
            info["frames"] = movie.shape[0]
    elif pairs == "halves":
        read = (lambda p: read_image(p, ndim=3)) if o["volumes"] else (
            lambda p: read_mrc(p, ndim=2))
        even, odd = read(path), read(other)
        a, b = (_on(xp, m.data).astype(numpy.float32) for m in (even, odd))
        pixel_size, info["odd"] = even.pixel_size, os.path.basename(other)
    else:
        mic = mic or read_mrc(path, ndim=2)
        pixel_size = mic.pixel_size
        if pairs == "count-split":
            a, b, c = count_split(_on(xp, mic.data), o["angpix"] or mic.pixel_size,
                                  o["dose"] or mic.dose, seed, name)
            info.update(count_scale=c.scale, count_scale_hf=c.scale_hf,
                        count_scale_dose=c.scale_dose, noise_flatness=c.flatness,
                        counts_per_px=float((a + b).mean()))
            log("%s: count split at %.4g values per electron (from %s; noise power low/high "
                "band %.2f), %.1f counts per px" % (name, c.scale, "the dose" if c.scale_dose
                                                   else "the noise", c.flatness,
                                                   info["counts_per_px"]))
        else:
            a, b = (xp.asarray(v) for v in synthetic_pair(mic.data, pairs, o["noise_level"], seed))
    check_distinct_views(a, b, name)
    f = o["bin"]
    pixel_size = o["angpix"] or pixel_size
    return View(name, fourier_bin(a, f), fourier_bin(b, f), pixel_size * f, info)


def _on(xp, data):
    """A host array on xp, in native byte order (CuPy has no big-endian arrays)."""
    return xp.asarray(numpy.asarray(data, data.dtype.newbyteorder("=")))


def _store_attrs(o, pixel_size):
    return {"pairs": o["pairs"], "bin": o["bin"], "normalize": o["normalize"],
            "pixel_size": pixel_size, "val_fraction": o["val_fraction"],
            "holdout_fraction": o["holdout_fraction"]}


def row_split(H, o):
    """(first validation row, first held-out row) of a micrograph of H rows (a tomogram of
    H voxels along y): training rows [0, split), validation rows [split, end) that choose
    the checkpoint, held-out rows [end, H) that neither training nor the checkpoint choice
    sees. The validation and held-out regions are their fractions of H, but at least one
    patch (``patch_size``) each when their fraction is not 0, so that a small tomogram
    (e.g. 256 voxels along y with 64^3 patches) keeps a region of each kind."""
    end = int(round(H * (1 - o["holdout_fraction"])))
    split = int(round(H * (1 - o["val_fraction"] - o["holdout_fraction"])))
    P = o.get("patch_size") or 0
    if o["holdout_fraction"] > 0 and H - end < P:
        end = H - P
    if o["val_fraction"] > 0 and end - split < P:
        split = end - P
    return split, end


#: Training subvolumes wanted from each tomogram when the stride is automatic: cryoCARE
#: draws about 1200 per tomogram (Buchholz et al. 2019); non-overlapping 64^3 subvolumes
#: of a 96 x 256 x 256 tomogram are only 8 (with the validation and held-out slabs).
VOLUME_PATCHES = 512


def volume_stride(shape, rows, patch):
    """The automatic stride of a tomogram's training subvolumes: the largest of patch,
    patch / 2 and patch / 4 whose origins (``io.patches.patch_origins`` along z, the
    training rows of y and x) give at least :data:`VOLUME_PATCHES` subvolumes, else
    patch / 4. A 512 x 1024 x 1024 tomogram keeps non-overlapping 64^3 subvolumes (1536,
    3 GB in the store); a 96 x 256 x 256 one gets 195 at a stride of 16 instead of 8.

    Parameters
    ----------
    shape : (D, H, W)
    rows : (int, int)
        The training rows [r0, r1) along y.
    patch : int

    Returns
    -------
    int
    """
    D, _, W = shape
    lengths = (D, rows[1] - rows[0], W)
    for stride in (patch, patch // 2):
        if stride >= 1 and numpy.prod([len(patch_origins(n, patch, stride))
                                       for n in lengths]) >= VOLUME_PATCHES:
            return stride
    return max(1, patch // 4)


def append_view(writer, v, index, o):
    """Normalise one view pair (the statistic of the input view), cut its patches row by
    row (training rows at --stride, validation rows below them at the patch size; the
    held-out rows at the bottom are not stored) and append them; record the micrograph's
    statistics. A tomogram (D, H, W) is split the same way along y (H): slabs of the
    whole depth and width.

    Raises
    ------
    InputError
        The micrograph, or its training or validation rows, smaller than one patch
        (checked before anything is appended).
    """
    P = o["patch_size"]
    shape = tuple(v.a.shape)
    H = shape[-2]
    if min(shape) < P:
        raise InputError("%s: %s px after binning by %d is smaller than one %d px "
                         "patch; use a smaller --patch-size or --bin"
                         % (v.name, "x".join(map(str, shape[::-1])), o["bin"], P))
    split, end = row_split(H, o)
    if min(split, end - split) < P:
        raise InputError("%s: a region of %d px along y is smaller than one %d px patch; use "
                         "a smaller --patch-size" % (v.name, min(split, end - split), P))
    stride = o["stride"] or volume_stride(shape, (0, split), P)
    norm = normalization(v.a, o["normalize"], v.name)
    a, b = norm.apply(v.a), norm.apply(v.b)
    start = {s: writer.size(s) for s in ("train", "val")}
    for part, step, rows in (("train", stride, (0, split)), ("val", P, (split, end))):
        for pa, pb in patch_rows(a, b, P, step, rows):
            writer.append(part, backend.to_host(pa), backend.to_host(pb))
    info = dict(v.info, name=v.name, index=index, shape=list(shape), pixel_size=v.pixel_size,
                stride=stride, loc=norm.loc, scale=norm.scale, method=norm.method,
                val_rows=[split, end], heldout_rows=[end, H])
    for s in ("train", "val"):
        info[s] = [start[s], writer.size(s)]
    writer.add_micrograph(info)


def build_store(path, o, xp, log=print):
    """Build the patch store of a run, one micrograph at a time.

    A micrograph that cannot be used (unreadable, not Poisson-like, smaller than a patch)
    is reported and skipped; the store holds the others.

    Parameters
    ----------
    path : str
        The store (written to a temporary file beside it, renamed when complete).
    o : dict
        :func:`resolve_options`.
    xp : module
        numpy or cupy: where splitting, binning, normalisation and cutting run.
    log : callable

    Returns
    -------
    dict
        "micrographs" (used), "skipped" (list of messages), "train", "val" (patch pairs).

    Raises
    ------
    InputError
        No micrograph could be used (the first reason is given), or the inputs match no
        file.
    """
    srcs = sources(o)
    gain = _gain(o, xp)
    names, skipped = [], []
    with contextlib.ExitStack() as stack:
        writer = None                  # opened at the first view (its pixel size is needed)
        for i, src in enumerate(srcs):
            try:
                v = make_view(i, src, o, xp, gain, log)
                if writer is None:
                    writer = stack.enter_context(PatchStoreWriter(
                        path, o["patch_size"], "float16" if o["float16_store"] else "float32",
                        _store_attrs(o, v.pixel_size), ndim=v.a.ndim))
                append_view(writer, v, i, o)
                names.append(v.name)
            except InputError as exc:
                skipped.append(str(exc))
                log("skipped: %s" % exc)
            v = None                   # one micrograph's arrays alive at a time
        if not names:                  # (inside the with: a started store is removed)
            raise InputError("no usable micrograph among the %d input(s): %s"
                             % (len(srcs), skipped[0]))
        writer.set_attrs({"inputs": names})
        summary = {"micrographs": len(names), "skipped": skipped,
                   "train": writer.size("train"), "val": writer.size("val")}
    log("patch store %s: %d training and %d validation pairs of %d px from %d %s(s)%s"
        % (path, summary["train"], summary["val"], o["patch_size"], summary["micrographs"],
           "tomogram" if o["volumes"] else "micrograph",
           ", %d skipped" % len(skipped) if skipped else ""))
    return summary


def training_config(o, store):
    """The config of :func:`cupyden.training.fit` (saved in every checkpoint) for a store.

    Raises
    ------
    InputError
        Fewer training patches than one batch, no validation patch, SSIM on patches
        smaller than its window, --resplit on a store that holds no count split.
    """
    n_train, n_val = store.size("train"), store.size("val")
    if n_train < o["batch_size"] or n_val == 0:
        raise InputError("%s: %d training and %d validation patches; need at least one batch "
                         "(%d) and one validation patch: use more or larger micrographs, a "
                         "smaller --patch-size or --stride" % (store.path, n_train, n_val,
                                                              o["batch_size"]))
    steps = o["steps"]
    if o["epochs"]:
        steps = max(1, int(round(o["epochs"] * (n_train // o["batch_size"]))))
    model_cfg = {"dncnn": {"arch": "dncnn", "depth": o["depth"], "width": o["width"],
                           "seed": o["seed"]},
                 "unet": {"arch": "unet", "base": o["base"], "seed": o["seed"]},
                 "topaz": {"arch": "topaz-unet", "seed": o["seed"]},
                 "unet3d": {"arch": "unet3d", "base": o["base"], "depth": 3,
                            "seed": o["seed"]}}[o["arch"]]
    if not o["init"] and (o["arch"] in VOLUME_ARCHS) != (store.ndim == 3):
        raise InputError("%s holds %d-D patches; --arch %s needs %s" % (
            store.path, store.ndim, o["arch"], "subvolumes" if o["arch"] in VOLUME_ARCHS
            else "micrograph patches"))
    if o["arch"] == "unet3d" and store.patch < 8:
        raise InputError("--patch-size %d is smaller than the 3-D U-Net's pooling grid (8 "
                         "voxels); use 64 (or at least 8)" % store.patch)
    if o["init"]:                                   # the architecture is the weights'
        model_cfg = initial_weights(o["init"])[0]
    weights = _loss_weights(o)
    if store.ndim == 3 and any(weights.values()):
        raise InputError("the Fourier, SSIM and gradient losses are 2-D; use --loss alone "
                         "for tomograms")
    if o["resplit"] and store.count_units() is None:
        raise InputError("--resplit needs a store of count-split halves without binning; "
                         "this store holds %s pairs, binned %dx"
                         % (store.attr("pairs"), store.attr("bin", 1)))
    if (weights["ssim"] or weights["msssim"]) and store.patch < 11:
        raise InputError("--ssim-weight needs patches of at least 11 px (the SSIM window)")
    return {"model": model_cfg, "loss": o["loss"], "loss_weights": weights,
            "fourier_frc": bool(o["fourier_frc"]), "lr_schedule": o["lr_schedule"],
            "lr_options": _lr_options(o), "lr": o["lr"], "batch_size": o["batch_size"],
            "steps": steps, "val_every": o["val_every"], "val_patches": o["val_patches"],
            "seed": o["seed"], "max_seconds": 60 * o["max_minutes"], "precision": o["precision"],
            "keep": o["keep"], "ema": o["ema"], "resplit": bool(o["resplit"]),
            "patch_size": store.patch, "bin": store.attr("bin", 1),
            "pairs": store.attr("pairs"),
            "normalize": store.attr("normalize", "robust"),
            "pixel_size": store.attr("pixel_size", 0.0), "init": o["init"],
            "recipe": o["recipe"]}


def _loss_weights(o):
    return {"fourier": o["fourier_weight"], "ssim": o["ssim_weight"],
            "msssim": o["msssim_weight"], "gradient": o["grad_weight"]}


def _lr_options(o):
    return {"warmup": o["warmup"], "step_size": o["lr_step"], "gamma": o["lr_gamma"],
            "factor": o["lr_gamma"], "patience": o["patience"]}


#: Settings that checkpoints written before them do not record, and the value they ran with.
ABSENT_MEANS = {"ema": 0.0}


def check_resume(path, config):
    """Refuse to resume a checkpoint trained with other settings (steps, time, what
    model.h5 keeps and the recipe's name aside: the settings it gave are compared; a
    setting the checkpoint predates counts as its value then, :data:`ABSENT_MEANS`).

    Raises
    ------
    InputError
    """
    if not path:
        return
    saved = load_checkpoint(path)["config"]
    diff = sorted(k for k in set(saved) | set(config)
                  if k not in ("steps", "max_seconds", "keep", "recipe")
                  and saved.get(k, ABSENT_MEANS.get(k)) != config.get(k, ABSENT_MEANS.get(k)))
    if diff:
        raise InputError("%s was trained with other settings (%s); resume with the same "
                         "options" % (path, ", ".join(diff)))


def load_best(out_dir, xp, dtype):
    """The best model of a run (out_dir/model.h5), in evaluation mode on ``xp``."""
    ck = load_checkpoint(os.path.join(out_dir, "model.h5"))
    model = build_model(ck["config"]["model"]).to(xp, dtype).eval()
    model.load_state(ck["weights"])
    return model


def evaluate_heldout(model, v, out_dir, o, xp, log=print):
    """The held-out rows of one micrograph: corr(f(A), B) against corr(A, B)
    (``metrics.halves_gain``), written to evaluation.json, which names the rows and how
    they were used; for the embedded default, also the whole crop denoised (denoised.mrc,
    before_after.png).

    The rows scored are those below the validation rows (:func:`row_split`), which neither
    training nor the checkpoint choice saw; for a tomogram, the slab of those y rows (the
    whole depth and width). With ``holdout_fraction`` 0 there are none: the
    validation rows are scored instead, and the line and the file say that they chose the
    checkpoint (not a held-out score).

    Parameters
    ----------
    model : Model
        In evaluation mode, on ``xp``.
    v : View
        The micrograph's two views.
    out_dir : str
    o : dict
        :func:`resolve_options`.
    xp : module
    log : callable

    Returns
    -------
    dict
        ``halves_gain``'s numbers, with "micrograph", "recipe" (the run's), "rows"
        (scored), "rows_are" (how they were used), "training_rows", "validation_rows",
        "pixel_size".
    """
    a, b = backend.to_host(v.a), backend.to_host(v.b)
    H = a.shape[-2]
    split, end = row_split(H, o)
    first = end if end < H else split
    used = ("held out: neither training nor the checkpoint choice saw them" if end < H else
            "validation: they chose the checkpoint, so this is not a held-out score"
            if o.get("keep", "best") == "best" else
            "validation rows, unseen by training (the last weights were kept: they chose "
            "nothing)")
    rows = (Ellipsis, slice(first, H), slice(None))        # [first, H) along y
    den_a, _ = denoise_array(model, a[rows], xp, norm=normalization(a, o["normalize"]))
    g = halves_gain(den_a, a[rows], b[rows])
    g.update({"micrograph": v.name, "recipe": o["recipe"], "rows": [first, H],
              "rows_are": used,
              "training_rows": [0, split], "validation_rows": [split, end],
              "pixel_size": v.pixel_size})
    with atomic_output(os.path.join(out_dir, "evaluation.json"), ".json") as tmp, \
            open(tmp, "w") as f:
        f.write(to_json(g))                        # NaN and Inf as null
    log("rows %d:%d of %s (%s): corr(A, B) = %.4f, corr(f(A), B) = %.4f, SNR gain %+.1f dB"
        % (first, H, v.name, used, g["cc_raw"], g["cc_denoised"], g["gain_db"]))
    if o["embedded"]:
        raw = a + b
        den, stats = denoise_array(model, raw, xp, norm=normalization(raw, o["normalize"]))
        write_mrc(os.path.join(out_dir, "denoised.mrc"), den, v.pixel_size)
        report.before_after(raw, den, os.path.join(out_dir, "before_after.png"),
                            ("raw (count sum, binned %dx)" % o["bin"], "denoised (cupyden DnCNN)"),
                            v.pixel_size)
        log("denoised the crop: denoised.mrc, before_after.png (%d tiles, %.3fx pixels)"
            % (stats["tiles"], stats["ratio"]))
    return g


def train(inputs=(), output_dir="cupyden-out", *, recipe="plain", pairs="count-split",
          odd=None, store=None, arch=None, depth=12, width=32, base=None, loss="mse",
          fourier_weight=0.0, fourier_frc=False, ssim_weight=0.0, msssim_weight=0.0,
          grad_weight=0.0, lr=None, lr_schedule=None, warmup=None, lr_step=1000, lr_gamma=0.5,
          patience=3, batch_size=None, patch_size=None, stride=None, steps=None, epochs=None,
          max_minutes=None, val_fraction=0.125, holdout_fraction=0.125, init=None,
          val_every=None, keep="best", ema=None, val_patches=None, resplit=None, binning=None,
          dose=None, angpix=None, drop_frames=0, align=False, gain=None, gain_rot=0,
          gain_flip=0, noise_level=1.0, normalize=None, float16_store=False, precision=None,
          f2fd=None, seed=0, device=None, gpus=None, rendezvous=None, rank=None,
          world_size=None, nccl_timeout=600.0, resume=None, overwrite=False, progress=True,
          log=print):
    """Train a denoiser on pairs of noisy views (Noise2Noise; Lehtinen et al. 2018) or on
    clean images with synthetic noise, as ``cupyden-train`` does.

    Builds a patch store from the inputs, one micrograph at a time (or uses ``store``),
    trains, keeps the best model by validation loss, and for two-half sources scores the
    held-out rows of the first micrograph. With no ``inputs`` and no ``store``: the
    embedded default (a real K2 crop, count split, binned 4x).

    The keywords marked "(recipe)" default to None: the value of ``recipe``
    (``cupyden.recipes``); a value given always wins.

    Parameters
    ----------
    inputs : str or list of str
        Files, folders or globs: micrographs (MRC) for count-split, gaussian, poisson;
        movies (MRC stacks or TIFF, frames along Z) for movie; even half micrographs, or
        even half tomograms (MRC or TIFF volumes), or RELION 5 tomograms STAR files
        (``rlnTomoReconstructedTomogramHalf1``/``Half2``) for halves; one tomogram or
        micrograph (MRC or TIFF) for f2fd.
    output_dir : str
        Created if needed. Receives patches.h5 (the store), model.h5 (best validation
        loss), checkpoint.h5 (latest, with Adam's state), history.csv, loss_curve.png,
        evaluation.json (two-half sources), and for f2fd denoised.mrc, central_slice.png.
    recipe : str
        "plain" (DnCNN-12/32, fp32, 16 x 64^2 patches: the values given below),
        "topaz-finetune" (Topaz-Denoise's UDenoiseNet from its general model, fp16, 12 x
        384^2 patches, ``resplit``, ``ema`` 0.9995, a cosine over 4 minutes),
        "topaz-scratch" (the same without ``init``, lr 0.001) or "auto": topaz-finetune
        (topaz-scratch without Topaz's weights) on a GPU with cuDNN for micrograph pairs
        from ``inputs`` (count-split, movie, halves), else plain (``recipes.choose``;
        a resumed run keeps its checkpoint's). ``cupyden-train``'s default is "auto";
        this function's stays "plain".
    pairs : str
        "count-split" (binomial split of counting-mode micrographs), "movie" (even/odd
        frame sums), "halves" (with ``odd``), "gaussian", "poisson" (synthetic noise on
        clean images), "f2fd" (Fourier-perturbed pairs of one image).
    odd : str or list of str or None
        The odd half micrographs (or tomograms) for "halves", paired with ``inputs`` by
        basename (not needed for a tomograms STAR file).
    store : str or None
        Train from this existing patch store instead of building one.
    arch : str or None
        (recipe) "dncnn" (``depth`` conv layers of ``width`` channels), "unet" (``base``
        channels at the first level) or "topaz" (Topaz-Denoise's UDenoiseNet, Bepler et
        al. 2020: 48 features, 5 poolings, receptive field 298 px) for micrographs;
        "unet3d" (``models.UNet3d``, cryoCARE-like, ``base`` channels, 3 poolings,
        receptive field 96 voxels) for tomograms; None: "unet3d" for tomograms, else
        "dncnn". f2fd always uses F2Fd's dropout U-Net.
    depth, width : int
    base : int or None
        U-Net channels at the first level; None: 32 (unet), 16 (unet3d, cryoCARE's).
    loss : str
        Base loss, "mse" or "l1".
    fourier_weight, ssim_weight, msssim_weight, grad_weight : float
        Weights of the Fourier (log power spectra), SSIM, MS-SSIM and gradient losses.
    fourier_frc : bool
        Weight the Fourier loss per ring by sqrt(2 FRC / (1 + FRC)) of the two views.
    lr : float or None
        (recipe) Adam's learning rate; plain: 1e-3, and 1e-4 for f2fd.
    lr_schedule : str or None
        (recipe) "constant" (plain), "step", "cosine" or "plateau"; ``lr_step`` (steps),
        ``lr_gamma`` (factor) and ``patience`` (validations) as in
        ``cupyden.optim.schedules``.
    warmup : int or None
        (recipe) Steps of linear learning-rate warm-up; plain 0.
    batch_size : int or None
        (recipe) Patch pairs per step (the global batch over all GPUs); plain 16.
    patch_size : int or None
        (recipe) Patch side, pixels after binning (subvolume side for tomograms); plain 64.
    stride : int or None
        (recipe) Step between training patch origins, pixels after binning; plain: 32,
        and for each tomogram the largest of the patch size, its half and its quarter
        that cuts at least ``VOLUME_PATCHES`` (512) training subvolumes
        (:func:`volume_stride`: a 512 x 1024 x 1024 tomogram gives ~1500 non-overlapping
        subvolumes of 64^3, 3 GB in the store; a 96 x 256 x 256 one 195 at a stride of
        16).
    steps : int or None
        (recipe) Optimisation steps; plain: 150 for the embedded crop, else 2000.
    epochs : float or None
        Passes over the training patches; overrides ``steps``.
    max_minutes : float or None
        (recipe) Stop after a last validation once training has run this long (0: no
        limit, plain's; with several GPUs checked at each validation). A recipe's time
        budget applies when neither ``steps`` nor ``epochs`` is given.
    val_fraction : float
        Share of each micrograph's rows (a tomogram's y extent), below the training rows,
        that validate: they choose the best checkpoint.
    holdout_fraction : float
        Share of each micrograph's rows at the bottom that neither training nor the
        checkpoint choice sees; the evaluation at the end scores the first micrograph's
        (with 0, its validation rows, and says so).
    init : str or None
        (recipe) Initial weights (fine-tuning): a model.h5 of cupyden-train, or
        ``topaz:NAME`` for a pretrained Topaz-Denoise model read without PyTorch
        (``training.initial_weights``); the architecture is then the weights' (``arch``
        and its sizes are ignored; a recipe's ``init`` is left out when an ``arch`` other
        than its own is given).
    val_every, val_patches : int or None
        (recipe) Validate, log and checkpoint every N steps, on at most this many patches;
        plain 50 and 256.
    keep : str
        "best": model.h5 holds the weights with the lowest validation loss; "last": the
        weights at the last validation (with a time-budgeted cosine, the annealed end),
        and the validation rows then choose nothing.
    ema : float or None
        (recipe) 0 (plain): validation, model.h5 and the evaluation use the trained
        weights; a decay D in (0, 1), e.g. 0.999: they use the weights' exponential
        moving average, updated after every step with the decay min(D, (1 + t) / (10 +
        t)) at step t (``optim.ema``; Polyak & Juditsky 1992; TensorFlow's warm-up).
    resplit : bool or None
        (recipe; plain False) Draw a new count split of every training batch
        (``io.pairs.resplit``): new noise on the same signal at every step. Count-split
        pairs without binning only (a recipe's ``resplit`` is left out elsewhere).
    binning : int or None
        Fourier-crop binning factor, applied after splitting; None: 4 for the embedded
        crop, else 1.
    dose : float or None
        e⁻/Å² for the count split; None: from the FEI extended header, else estimated.
    angpix : float or None
        Pixel size of the inputs in Å/px (before binning); None: each file's header.
    drop_frames : int
        Movie frames dropped at the start.
    align : bool
        Align movie frames by whole-pixel shifts before summing.
    gain : str or None
        Gain reference (MRC or TIFF) multiplied into every movie frame, oriented by
        ``gain_rot`` (0-3, x 90 degrees clockwise) and ``gain_flip`` (0 none, 1 upside
        down, 2 left to right) as RELION's --gain_rot and --gain_flip (``io.movies``).
    noise_level : float
        Sigma (gaussian, image units) or mean counts per pixel (poisson).
    normalize : str or None
        (recipe) "robust" (median, MAD; plain), "percentile", or "meanstd" (Topaz's, for
        its weights).
    float16_store : bool
        Keep patches as float16 in the store.
    precision : str or None
        (recipe) "fp32" (plain), "tf32" or "fp16" (GPU with cuDNN); the CPU runs fp32.
    f2fd : dict or None
        F2Fd's options, overriding ``F2FD_DEFAULTS`` (p, Vmask_pct,
        volumetric_scale_factor, dropout_p, total_samples, n_bernoulli_samples, features,
        samples, passes).
    seed : int
        Seed of the split, patches, batches and weights.
    device : str or int or None
        GPU number, -1 for the CPU, "auto"; None: CUPYDEN_DEVICE, else auto.
    gpus : list of int or None
        Train data-parallel with one process per GPU on this host (``distributed``); the
        store is built and the model evaluated on the first.
    rendezvous : str or None
        Several nodes: a path on a shared file system where rank 0 writes the NCCL id
        (after building the store); this process is rank ``rank`` of ``world_size``
        (None: SLURM_PROCID, SLURM_NTASKS), on GPU ``device`` (None: SLURM_LOCALID).
    rank, world_size : int or None
    nccl_timeout : float
        Seconds without training progress after which a rank of a data-parallel run
        gives up (a peer died or hangs).
    resume : str or None
        A checkpoint.h5 of an earlier run with the same options.
    overwrite : bool
        Replace the model.h5 and checkpoint.h5 of an earlier run in ``output_dir``
        (refused otherwise, unless resuming).
    progress : bool
        Show a progress bar.
    log : callable
        Receives each report line (``print`` by default).

    Returns
    -------
    model : cupyden.models.base.Model or None
        The best model (lowest validation loss), in evaluation mode on the training
        device; None on ranks other than 0 of a multi-node run.
    history : list of dict
        One row per validation: "step", "train_loss", "val_loss", "lr", "seconds".

    Raises
    ------
    InputError
        Bad options or inputs (one line that says what and how to fix), identical views,
        an output folder that holds an earlier run's model (without ``overwrite``), a GPU
        that was asked for and cannot be used, a rank of a data-parallel run that died,
        training that diverged (the last good checkpoint is kept).

    Notes
    -----
    ``gpus`` starts processes with the "spawn" method: a script that calls this must
    guard its entry point with ``if __name__ == "__main__":``.
    """
    run_args = dict(locals())
    from .. import distributed

    plan = distributed.plan(gpus, rendezvous, rank, world_size, device)
    # The recipe "auto" asks for the device only when the data could take a topaz recipe:
    # the device the run will use (plan.device: -d, --gpus, rendezvous; None:
    # CUPYDEN_DEVICE, else the first GPU if any).
    o = resolve_options(gpu_problem=lambda: recipes.device_problem(plan.device), resume=resume,
                        **{k: v for k, v in run_args.items() if k not in RUN_OPTIONS})
    o["batch_size"], note = plan.check_batch(o["batch_size"], run_args["batch_size"] is not None)
    if note:
        o["recipe_why"] += "; " + note
    dev = backend.select_device(plan.device)
    dtype = set_precision(o["precision"], dev.xp)       # exit 2 now, not after a store
    output_folder(output_dir)
    if not resume and plan.rank == 0:
        refuse_to_overwrite(output_dir, ("model.h5", "checkpoint.h5"), overwrite)
    log("recipe %s (%s)" % (o["recipe"], o["recipe_why"]))
    log("device: %s; precision %s%s" % (dev.name, o["precision"], plan.describe()))
    t0 = time.perf_counter()
    if o["pairs"] == "f2fd":
        if plan.world > 1:
            raise InputError("--pairs f2fd trains on one GPU (its pairs are drawn per batch "
                             "on the device); drop --gpus/--rendezvous")
        return _train_f2fd(o, dev, dtype, output_dir, resume, progress, log, t0)
    store_path = o["store"] or os.path.join(output_dir, "patches.h5")
    builds = not o["store"] and not (resume and os.path.exists(store_path))
    if builds and plan.rank == 0:
        build_store(store_path, o, dev.xp, log)
    uid = distributed.rendezvous(plan, store_path)         # ranks > 0 wait for rank 0's store
    store = PatchStore(store_path)
    config = training_config(o, store)
    check_resume(resume, config)
    log("training %s on %d patch pairs, %s%d steps of %d%s" % (
        build_model(config["model"]).__class__.__name__, store.size("train"),
        "at most " if o["max_minutes"] else "", config["steps"], o["batch_size"],
        " or %.3g minutes, whichever ends first" % o["max_minutes"] if o["max_minutes"] else ""))
    if plan.world == 1:
        history = fit(store, output_dir, config, dev.xp, resume=resume, progress=progress,
                      log=log)
    elif plan.launch:
        history = distributed.launch(plan, uid, store_path, output_dir, config, resume,
                                     progress, nccl_timeout, log)
    else:
        history = distributed.run_rank(plan.rank, plan.world, uid, plan.device, store_path,
                                       output_dir, config, resume, progress, nccl_timeout, log)
    first = (store.micrographs() or [{"index": 0}])[0]["index"]
    store.close()
    if plan.rank != 0:
        return None, history
    distributed.finish(plan)
    model = load_best(output_dir, dev.xp, dtype)
    if not o["store"] and o["pairs"] in TWO_VIEWS:
        srcs = sources(o)
        evaluate_heldout(model, make_view(first, srcs[first], o, dev.xp, _gain(o, dev.xp),
                                          lambda *a: None), output_dir, o, dev.xp, log)
    log("done in %.0f s; outputs in %s" % (time.perf_counter() - t0, output_dir))
    return model, read_history(os.path.join(output_dir, "history.csv")) if plan.world > 1 else history


def _gain(o, xp):
    """The run's gain reference on xp (movies), or None."""
    if o["pairs"] != "movie" or not o["gain"]:
        return None
    return xp.asarray(read_gain(o["gain"], o["gain_rot"], o["gain_flip"]))


def f2fd_params(o):
    """F2FdParams from a run's options (``o["f2fd"]`` and the patch size)."""
    p = o["f2fd"]
    return f2fd_mod.F2FdParams(
        p=p["p"], Vmask_pct=p["Vmask_pct"], dropout_p=p["dropout_p"],
        volumetric_scale_factor=p["volumetric_scale_factor"], total_samples=p["total_samples"],
        n_bernoulli_samples=p["n_bernoulli_samples"], subtomo_length=o["patch_size"])


def _train_f2fd(o, dev, dtype, out, resume, progress, log, t0):
    """pairs="f2fd": train F2Fd's U-Net on one image's Fourier samples, then denoise it."""
    if len(o["inputs"]) != 1:
        raise InputError("--pairs f2fd trains on one tomogram or micrograph (INPUT), got %d"
                         % len(o["inputs"]))
    image = read_image(expand(o["inputs"])[0])
    name = os.path.basename(image.path)
    data = numpy.asarray(image.data, numpy.float32)
    if o["bin"] > 1:
        if data.ndim == 3:
            raise InputError("--bin applies to micrographs; bin volumes before training")
        data = fourier_bin(data, o["bin"])
    pixel_size = (o["angpix"] or image.pixel_size) * o["bin"]
    prm = f2fd_params(o)
    if o["patch_size"] % 32:
        raise InputError("--patch-size must be a multiple of 32 for F2Fd's U-Net (5 poolings),"
                         " got %d" % o["patch_size"])
    weights = _loss_weights(o)
    if data.ndim == 3 and any(weights.values()):
        raise InputError("the Fourier, SSIM and gradient losses are 2-D; use --loss alone "
                         "for a volume")
    x, norm = f2fd_mod.prepare(data)
    pairs = f2fd_mod.F2FdPairs(x, prm, dev.xp, o["seed"], n_val=min(o["val_patches"], 16))
    model_cfg = {"arch": "f2fd-unet", "ndim": x.ndim, "nf": o["f2fd"]["features"],
                 "depth": 5, "dropout_p": prm.dropout_p, "seed": o["seed"]}
    params = prm._asdict()
    params["sphere_fraction"] = list(params["sphere_fraction"])
    config = {"model": model_cfg, "loss": o["loss"], "loss_weights": weights,
              "lr_schedule": o["lr_schedule"], "lr_options": _lr_options(o), "lr": o["lr"],
              "batch_size": o["batch_size"], "steps": o["steps"], "val_every": o["val_every"],
              "val_patches": pairs.size("val"), "seed": o["seed"],
              "max_seconds": 60 * o["max_minutes"], "precision": o["precision"],
              "ema": o["ema"], "patch_size": prm.subtomo_length, "bin": o["bin"],
              "pairs": "f2fd", "f2fd": params,
              "normalize": "f2fd", "pixel_size": pixel_size, "input": name,
              "recipe": o["recipe"]}
    check_resume(resume, config)
    kind = "tomogram" if x.ndim == 3 else "micrograph"
    log("F2Fd on the %s %s (%s voxels, %.4g A/voxel): %d steps of %d patches of %d"
        % (kind, name, " x ".join(map(str, x.shape)), pixel_size, o["steps"], o["batch_size"],
           prm.subtomo_length))
    history = fit(pairs, out, config, dev.xp, resume=resume, progress=progress, log=log)
    ck = load_checkpoint(os.path.join(out, "model.h5"))
    model = build_model(ck["config"]["model"]).to(dev.xp, dtype)
    model.load_state(ck["weights"])
    t1 = time.perf_counter()
    den = norm.invert(f2fd_mod.denoise(model, x, prm, dev.xp, o["f2fd"]["samples"],
                                       o["f2fd"]["passes"]))
    t_den = time.perf_counter() - t1
    write_mrc(os.path.join(out, "denoised.mrc"), den, pixel_size)
    central_slice_png(data, den, os.path.join(out, "central_slice.png"), pixel_size)
    log("denoised %s in %.1f s: denoised.mrc, central_slice.png" % (name, t_den))
    log("done in %.0f s; outputs in %s" % (time.perf_counter() - t0, out))
    return model, history


def central_slice_png(raw, denoised, path, pixel_size):
    """Before/after panels of the central z slice of a volume (or of a micrograph)."""
    if raw.ndim == 3:
        k = raw.shape[0] // 2
        raw, denoised = raw[k], denoised[k]
        titles = ("raw, slice z = %d" % k, "F2Fd, slice z = %d" % k)
    else:
        titles = ("raw", "F2Fd")
    report.before_after(raw, denoised, path, titles, pixel_size or None)
