"""cupyden-denoise: apply a trained model to micrographs of any size, MRC in, MRC out.

Each micrograph is binned as the model was trained (auto), normalised with one statistic
of the whole micrograph, denoised in tiles with a halo equal to half the model's
receptive field (so tiled output equals a whole-image pass), and written in the input's
units to DIR with the input's basename (plus --suffix), its pixel size times the binning.
Inputs are never opened for writing; each output is written to a temporary file in DIR
and renamed when complete.

A model trained with --pairs f2fd denoises tomograms (3-D) or micrographs (2-D), MRC or
TIFF, as F2Fd does: the mean over K Fourier-sample inputs x T passes with dropout on, in
overlapping tiles averaged where they overlap (cupyden/f2fd.py).

Usage:
  cupyden-denoise [options] MODEL INPUT...
  cupyden-denoise -h | --help

Arguments:
  MODEL               A model.h5 (or checkpoint.h5) written by cupyden-train, or
                      topaz:NAME for a pretrained Topaz-Denoise model run in cupyden
                      (NAME: unet, unet-small, unet-v0.2.1, fcnn; needs the topaz-em
                      package installed; its micrographs are normalised by mean and
                      standard deviation, as Topaz does).
  INPUT               Micrographs (tomograms for a 3-D F2Fd model): MRC files (or
                      TIFF for F2Fd), folders or globs.

Options:
  -o, --output DIR    Output folder (created) [default: denoised]
  --suffix S          Text added to each output's basename before .mrc [default: ]
  --patch-size PX     Tile core size in pixels (after binning); auto = 2048, or for an
                      F2Fd model its training patch (tiles overlap by a quarter)
                      [default: auto]
  --samples K         F2Fd: Fourier-sample inputs averaged [default: 4]
  --passes T          F2Fd: dropout passes per input (1 = no dropout) [default: 4]
  --batch-size N      Tiles per forward pass [default: 4]
  --precision P       fp32, tf32 or fp16: the convolutions' arithmetic; tf32 and fp16
                      need a GPU with cuDNN [default: fp32]
  --bin B             Fourier-crop binning factor; auto = the model's [default: auto]
  --float16           Write float16 (MRC mode 12) instead of float32 (mode 2), after a
                      range check.
  --only-unfinished   Skip inputs whose output already exists.
  -d, --device N      GPU number, -1 for the CPU, or auto; when not given,
                      CUPYDEN_DEVICE, else auto (the first GPU if any).
  --threads N         CPU threads for cupyden's kernels and BLAS; auto = the CPUs this
                      process may use (affinity, cgroup quota), or OMP_NUM_THREADS or
                      OPENBLAS_NUM_THREADS when set [default: auto]
  --no-progress       No progress bar.
  -h, --help          Show this help.
"""

import os
import time

import numpy

from .. import backend, f2fd
from ..errors import InputError
from ..functional.conv import PRECISIONS, set_precision
from ..infer import denoise_array
from ..io.checkpoint import load_checkpoint
from ..io.mrc import read_mrc, write_mrc
from ..io.pairs import expand
from ..io.patches import fourier_bin, normalization
from ..io.tiff import read_image
from ..io.torch_pickle import read_state_dict, topaz_pretrained
from ..models import build_model
from ..models.topaz import PRETRAINED, from_topaz_state
from .common import as_choice, as_int, output_folder, run


def load_model(path, xp, dtype=numpy.float32):
    """A model in evaluation mode on ``xp`` with weights of ``dtype``, and its config.

    ``path`` is a cupyden checkpoint, or ``topaz:NAME`` for a pretrained Topaz-Denoise
    model (weights read from the installed topaz-em; no binning, mean/std normalisation).
    """
    if path.startswith("topaz:"):
        name = path[len("topaz:"):]
        if name not in PRETRAINED:
            raise InputError("unknown Topaz model %r (known: %s)" % (name, ", ".join(PRETRAINED)))
        filename, model_config = PRETRAINED[name]
        model = build_model(model_config).to(xp, dtype).eval()
        model.load_state(from_topaz_state(read_state_dict(topaz_pretrained(filename))))
        return model, {"model": dict(model_config), "bin": 1, "normalize": "meanstd"}
    ck = load_checkpoint(path)
    model = build_model(ck["config"]["model"]).to(xp, dtype).eval()
    model.load_state(ck["weights"])
    return model, ck["config"]


def _body(args):
    from tqdm import tqdm

    device = backend.select_device(args["--device"])
    batch = as_int(args, "--batch-size", 1)
    inputs = expand(args["INPUT"])
    out_dir = args["--output"]
    output_folder(out_dir)
    dtype = set_precision(as_choice(args, "--precision", PRECISIONS), device.xp)
    model, config = load_model(args["MODEL"], device.xp, dtype)
    is_f2fd = config.get("pairs") == "f2fd"
    if args["--patch-size"] == "auto":
        tile = config["patch_size"] if is_f2fd else 2048
    else:
        tile = as_int(args, "--patch-size", 16)
    factor = config.get("bin", 1) if args["--bin"] == "auto" else as_int(args, "--bin", 1)
    norm_method = config.get("normalize", "robust")
    print("device: %s; model %s (receptive field %d px), bin %d"
          % (device.name, config["model"]["arch"], model.receptive_field, factor))
    jobs = []
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem.endswith((".mrc", ".tif")):      # name.mrc.gz
            stem = stem[:-4]
        target = os.path.join(out_dir, stem + args["--suffix"] + ".mrc")
        if os.path.exists(target) and os.path.samefile(target, path):
            raise InputError("%s: the output would overwrite the input; choose another "
                             "--output or a --suffix" % path)
        if args["--only-unfinished"] and os.path.exists(target):
            continue
        jobs.append((path, target))
    t0 = time.perf_counter()
    for path, target in tqdm(jobs, unit="micrograph", disable=args["--no-progress"]):
        if is_f2fd:
            _denoise_f2fd(model, config, path, target, device.xp, tile, factor, args)
            continue
        mic = read_mrc(path, ndim=2)
        image = fourier_bin(numpy.asarray(mic.data, numpy.float32), factor)
        den, stats = denoise_array(model, image, device.xp, tile, batch,
                                   normalization(image, norm_method))
        write_mrc(target, den, mic.pixel_size * factor, float16=args["--float16"])
        tqdm.write("%s -> %s: %dx%d px, %d tiles, %d px processed (%.3fx)" % (
            path, target, image.shape[1], image.shape[0], stats["tiles"],
            stats["pixels_processed"], stats["ratio"]))
    print("%d micrograph(s) in %.1f s" % (len(jobs), time.perf_counter() - t0))


def _denoise_f2fd(model, config, path, target, xp, tile, factor, args):
    """One tomogram or micrograph through F2Fd's inference (module docstring)."""
    from tqdm import tqdm

    image = read_image(path, ndim=config["model"]["ndim"])
    data = image.data
    if data.ndim == 2 and factor > 1:
        data = fourier_bin(numpy.asarray(data, numpy.float32), factor)
    prm = config["f2fd"]
    prm = f2fd.F2FdParams(**dict(prm, sphere_fraction=tuple(prm["sphere_fraction"])))
    x, norm = f2fd.prepare(data)
    K, T = as_int(args, "--samples", 1), as_int(args, "--passes", 1)
    t0 = time.perf_counter()
    den = norm.invert(f2fd.denoise(model, x, prm, xp, K, T, tile))
    f2fd_seconds = time.perf_counter() - t0
    write_mrc(target, den, image.pixel_size * (factor if data.ndim == 2 else 1),
              float16=args["--float16"])
    tqdm.write("%s -> %s: %s voxels, %d x %d passes in %.1f s" % (
        path, target, " x ".join(map(str, x.shape)), K, T, f2fd_seconds))


def main(argv=None):
    """Entry point of cupyden-denoise; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-denoise")
