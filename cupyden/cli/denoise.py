"""cupyden-denoise: apply a trained model to micrographs of any size, MRC in, MRC out.

Each micrograph is binned as the model was trained (auto), normalised with one statistic
of the whole micrograph, denoised in tiles with a halo equal to half the model's
receptive field (so tiled output equals a whole-image pass), and written in the input's
units to DIR with the input's basename (plus --suffix), its pixel size times the binning.
Reading, the device and writing overlap (a reader thread, the GPU, writer threads).
Inputs are never opened for writing; each output is written to a temporary file in DIR
and renamed when complete.

A file that cannot be denoised is reported on one line and skipped; the run goes on, ends
with a summary line, lists the failures in DIR/failed.txt and exits with 2 (0 when every
file was denoised). After Ctrl-C no partial file is left: the same command with
the option --only-unfinished completes the batch.

A RELION STAR file as INPUT stands for the micrographs it lists (rlnMicrographName, paths
relative to the project folder, i.e. the current directory); the run then also writes
DIR/denoised_micrographs.star: the same tables (optics kept) pointing at the denoised
files.

Several GPUs: --gpus 0,1 starts one Dask worker per GPU on this machine (dask-cuda), and
the option --scheduler ADDRESS sends the work to a running Dask cluster, e.g. many nodes:
    dask scheduler                              # on one node; prints tcp://HOST:8786
    dask cuda worker tcp://HOST:8786            # on every GPU node (one worker per GPU)
    cupyden-denoise MODEL 'mics/*.mrc' -o out --scheduler tcp://HOST:8786
The output folder must be reachable from every worker (a shared file system).

A model trained with --pairs f2fd denoises tomograms (3-D) or micrographs (2-D), MRC or
TIFF, as F2Fd does: the mean over K Fourier-sample inputs x T passes with dropout on, in
overlapping tiles averaged where they overlap (cupyden/f2fd.py).

A model trained with --pairs halves on half tomograms (3-D U-Net) denoises tomograms (MRC
or TIFF) in tiles with the receptive field's halo, one normalisation per volume, the
tile from a GPU memory budget (512 x 1024 x 1024 in 256^3 cores in float16):
    cupyden-denoise MODEL tomo.mrc -o DIR                     # the volume alone
    cupyden-denoise MODEL 'even/*.mrc' --odd 'odd/*.mrc' -o DIR
      # each pair of half tomograms denoised and averaged, as cryoCARE does, written
      # under the name the halves share (TS_01_half1.mrc -> DIR/TS_01.mrc)
    cupyden-denoise MODEL Tomograms/job009/tomograms.star -o DIR
      # RELION 5: each row's two halves (rlnTomoReconstructedTomogramHalf1/Half2)
      # averaged into DIR/<rlnTomoName>.mrc, and DIR/denoised_tomograms.star: the same
      # tables with rlnTomoReconstructedTomogramDenoised added

Usage:
  cupyden-denoise [options] MODEL INPUT...
  cupyden-denoise -h | --help

Arguments:
  MODEL               A model.h5 (or checkpoint.h5) written by cupyden-train, or
                      topaz:NAME for a pretrained Topaz-Denoise model run in cupyden
                      (NAME: unet, unet-small, unet-v0.2.1, fcnn; needs the topaz-em
                      package installed; its micrographs are normalised by mean and
                      standard deviation, as Topaz does).
  INPUT               Micrographs (tomograms for a 3-D model): MRC files (or TIFF for
                      3-D models), folders, globs, or RELION STAR files.

Options:
  -o, --output DIR    Output folder (created) [default: denoised]
  --suffix S          Text added to each output's basename before .mrc [default: ]
  --format F          mrc, or png for an 8-bit preview per micrograph (binned to at
                      most 1024 px, 0.5-99.5 percentile contrast) [default: mrc]
  --odd PATTERN       Odd half tomograms (files, folder or glob), paired with INPUT by
                      name: each pair is denoised and averaged (3-D U-Net models).
  --patch-size PX     Tile core size in pixels (after binning); auto = 2048, for an
                      F2Fd model its training patch (tiles overlap by a quarter), for a
                      3-D U-Net from the GPU memory budget [default: auto]
  --samples K         F2Fd: Fourier-sample inputs averaged [default: 4]
  --passes T          F2Fd: dropout passes per input (1 = no dropout) [default: 4]
  --batch-size N      Tiles per forward pass [default: 4]
  --tta N             Test-time augmentation of micrographs: the mean of the network's
                      output over N flips and rotations of each micrograph, each turned
                      back: 1 none, 2 and the left-right flip, 4 the four flips, 8 those
                      and their transposes (all 90-degree rotations and reflections);
                      N times the network time (Lim et al. 2017, EDSR+'s
                      self-ensemble). Not for tomograms or F2Fd models [default: 1]
  --precision P       auto, fp32, tf32 or fp16: the convolutions' arithmetic; auto =
                      fp16 on a GPU with cuDNN when the weights fit float16, else tf32;
                      fp32 on a GPU without cuDNN and on the CPU; tf32 and fp16 need a
                      GPU with cuDNN [default: auto]
  --bin B             Fourier-crop binning factor; auto = the model's [default: auto]
  --float16           Write float16 (MRC mode 12) instead of float32 (mode 2), after a
                      range check.
  --only-unfinished   Skip inputs whose output already exists (the summary says how
                      many).
  --star-column C     STAR column naming the input files [default: rlnMicrographName]
  --gpus LIST         Denoise on these GPUs of this machine, one Dask worker each
                      (comma-separated ordinals, e.g. 0,1; needs cupyden[dask]).
  --scheduler ADDR    Send the work to a running Dask cluster (e.g. tcp://host:8786;
                      needs cupyden[dask]); each worker uses --device.
  -d, --device N      GPU number, -1 for the CPU, or auto; when not given,
                      CUPYDEN_DEVICE, else auto (the first GPU if any).
  -v, --verbose       A line per micrograph and, at the end, the seconds per micrograph
                      of each stage (read, h2d, bin+norm, network, d2h, write, wait).
  --threads N         CPU threads for cupyden's kernels and BLAS; auto = the CPUs this
                      process may use (affinity, cgroup quota), or OMP_NUM_THREADS or
                      OPENBLAS_NUM_THREADS when set [default: auto]
  --no-progress       No progress bar.
  -h, --help          Show this help.
"""

import sys

from ..errors import InputError
from .common import as_choice, as_int, run


def _parse(args):
    """Options as Python values (InputError for bad ones)."""
    from ..pipeline.denoise import FORMATS, TTA_COUNTS

    o = {"model": args["MODEL"], "inputs": args["INPUT"], "output": args["--output"],
         "device": args["--device"], "precision": args["--precision"],
         "verbose": args["--verbose"], "progress": not args["--no-progress"],
         "scheduler": args["--scheduler"], "gpus": None}
    o["options"] = {
        "suffix": args["--suffix"], "fmt": as_choice(args, "--format", FORMATS),
        "tile": None if args["--patch-size"] == "auto" else as_int(args, "--patch-size", 16),
        "bin": None if args["--bin"] == "auto" else as_int(args, "--bin", 1),
        "batch_size": as_int(args, "--batch-size", 1), "samples": as_int(args, "--samples", 1),
        "passes": as_int(args, "--passes", 1), "float16": args["--float16"],
        "tta": int(as_choice(args, "--tta", tuple(map(str, TTA_COUNTS)))),
        "only_unfinished": args["--only-unfinished"],
        "star_columns": (args["--star-column"],)}
    if args["--odd"]:
        o["options"]["odd"] = args["--odd"]
    if args["--gpus"] is not None:
        try:
            o["gpus"] = [int(g) for g in args["--gpus"].split(",")]
        except ValueError:
            raise InputError("--gpus must be comma-separated GPU numbers such as 0,1, got %r"
                             % args["--gpus"])
        if o["scheduler"]:
            raise InputError("give --gpus (a cluster on this machine) or --scheduler (a "
                             "running cluster), not both")
    return o


def _body(args):
    from ..pipeline.denoise import denoise_files, load_model

    o = _parse(args)
    if (o["gpus"] is not None or o["scheduler"]) and "odd" in o["options"]:
        raise InputError("--odd runs on one device; drop --gpus/--scheduler")
    if o["gpus"] is not None or o["scheduler"]:
        from ..pipeline.dask_workers import denoise_files_dask
        result = denoise_files_dask(o["model"], o["inputs"], o["output"], gpus=o["gpus"],
                                    scheduler=o["scheduler"], device=o["device"],
                                    precision=o["precision"], progress=o["progress"],
                                    log=_log, **o["options"])
    else:
        model = load_model(o["model"], o["device"], o["precision"])
        print("device: %s; model %s (receptive field %d px), bin %d, precision %s" % (
            model.device.name, model.config["model"]["arch"], model.network.receptive_field,
            model.bin if o["options"]["bin"] is None else o["options"]["bin"],
            model.precision))
        result = denoise_files(model, o["inputs"], o["output"], progress=o["progress"],
                               callback=_said if o["verbose"] else None, log=_log,
                               **o["options"])
    if o["verbose"]:
        print(result.stage_line())
    print(result.summary(o["output"]))
    return 2 if result.failed else 0


def _log(line):
    from tqdm import tqdm
    tqdm.write("cupyden-denoise: " + line, file=sys.stderr)


def _said(job):
    from tqdm import tqdm
    tqdm.write("%s -> %s" % (job.source, job.target))


def main(argv=None):
    """Entry point of cupyden-denoise; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-denoise")
