"""cupyden-denoise: apply a trained model to micrographs of any size, MRC in, MRC out.

Each micrograph is binned as the model was trained (auto), normalised with one statistic
of the whole micrograph, denoised in tiles with a halo equal to half the model's
receptive field (so tiled output equals a whole-image pass), and written in the input's
units to DIR with the input's basename (plus --suffix), its pixel size times the binning.
Inputs are never opened for writing; each output is written to a temporary file in DIR
and renamed when complete.

Usage:
  cupyden-denoise [options] MODEL INPUT...
  cupyden-denoise -h | --help

Arguments:
  MODEL               A model.h5 (or checkpoint.h5) written by cupyden-train, or
                      topaz:NAME for a pretrained Topaz-Denoise model run in cupyden
                      (NAME: unet, unet-small, unet-v0.2.1, fcnn; needs the topaz-em
                      package installed; its micrographs are normalised by mean and
                      standard deviation, as Topaz does).
  INPUT               Micrographs: MRC files, folders or globs.

Options:
  -o, --output DIR    Output folder (created) [default: denoised]
  --suffix S          Text added to each output's basename before .mrc [default: ]
  --patch-size PX     Tile core size in pixels (after binning) [default: 2048]
  --batch-size N      Tiles per forward pass [default: 4]
  --bin B             Fourier-crop binning factor; auto = the model's [default: auto]
  --float16           Write float16 (MRC mode 12) instead of float32 (mode 2), after a
                      range check.
  --only-unfinished   Skip inputs whose output already exists.
  -d, --device N      GPU number, -1 for the CPU, or auto; when not given,
                      CUPYDEN_DEVICE, else auto (the first GPU if any).
  --no-progress       No progress bar.
  -h, --help          Show this help.
"""

import os
import time

import numpy

from .. import backend
from ..errors import InputError
from ..infer import denoise_array
from ..io.checkpoint import load_checkpoint
from ..io.mrc import read_mrc, write_mrc
from ..io.pairs import expand
from ..io.patches import fourier_bin, normalization
from ..io.torch_pickle import read_state_dict, topaz_pretrained
from ..models import build_model
from ..models.topaz import PRETRAINED, from_topaz_state
from .common import as_int, output_folder, run


def load_model(path, xp):
    """A model in evaluation mode on ``xp``, and its config.

    ``path`` is a cupyden checkpoint, or ``topaz:NAME`` for a pretrained Topaz-Denoise
    model (weights read from the installed topaz-em; no binning, mean/std normalisation).
    """
    if path.startswith("topaz:"):
        name = path[len("topaz:"):]
        if name not in PRETRAINED:
            raise InputError("unknown Topaz model %r (known: %s)" % (name, ", ".join(PRETRAINED)))
        filename, model_config = PRETRAINED[name]
        model = build_model(model_config).to(xp, numpy.float32).eval()
        model.load_state(from_topaz_state(read_state_dict(topaz_pretrained(filename))))
        return model, {"model": dict(model_config), "bin": 1, "normalize": "meanstd"}
    ck = load_checkpoint(path)
    model = build_model(ck["config"]["model"]).to(xp, numpy.float32).eval()
    model.load_state(ck["weights"])
    return model, ck["config"]


def _body(args):
    from tqdm import tqdm

    device = backend.select_device(args["--device"])
    tile = as_int(args, "--patch-size", 16)
    batch = as_int(args, "--batch-size", 1)
    inputs = expand(args["INPUT"])
    out_dir = args["--output"]
    output_folder(out_dir)
    model, config = load_model(args["MODEL"], device.xp)
    factor = config.get("bin", 1) if args["--bin"] == "auto" else as_int(args, "--bin", 1)
    norm_method = config.get("normalize", "robust")
    print("device: %s; model %s (receptive field %d px), bin %d"
          % (device.name, config["model"]["arch"], model.receptive_field, factor))
    jobs = []
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem.endswith(".mrc"):                 # name.mrc.gz
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
        mic = read_mrc(path, ndim=2)
        image = fourier_bin(numpy.asarray(mic.data, numpy.float32), factor)
        den, stats = denoise_array(model, image, device.xp, tile, batch,
                                   normalization(image, norm_method))
        write_mrc(target, den, mic.pixel_size * factor, float16=args["--float16"])
        tqdm.write("%s -> %s: %dx%d px, %d tiles, %d px processed (%.3fx)" % (
            path, target, image.shape[1], image.shape[0], stats["tiles"],
            stats["pixels_processed"], stats["ratio"]))
    print("%d micrograph(s) in %.1f s" % (len(jobs), time.perf_counter() - t0))


def main(argv=None):
    """Entry point of cupyden-denoise; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-denoise")
