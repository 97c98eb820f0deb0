"""cupyden-train: train a denoiser on pairs of noisy views (Noise2Noise) or clean + noise.

With no INPUT and no --store, runs the embedded default: a 2048 x 2048 crop of a real K2
counting-mode micrograph (shipped in the package), split into two halves by a binomial
count split, binned by 4 (3.4 Å/px), DnCNN-12/32 trained on the top three quarters,
judged on the bottom quarter, then the crop denoised (denoised.mrc, before_after.png).

Usage:
  cupyden-train [options] [INPUT...]
  cupyden-train -h | --help

Pair sources (--pairs), INPUT being MRC files, folders or globs:
  count-split   each INPUT is one counting-mode micrograph; its counts are split
                binomially into two halves (needs Poisson-like noise; see --dose)
  movie         each INPUT is a movie (frames along Z): even/odd frame sums
  halves        INPUT are the even half micrographs, --odd the odd ones, paired by name
  gaussian      each INPUT is a clean image; Gaussian noise of sigma --noise-level
  poisson       each INPUT is a clean image; Poisson counts of mean --noise-level per px
  f2fd          one INPUT, a tomogram (MRC or TIFF volume) or a single micrograph (MRC
                or TIFF): F2Fd's Fourier-perturbed pairs of the one image, F2Fd's
                dropout U-Net (3-D or 2-D); ends by denoising the INPUT
                (denoised.mrc, central_slice.png)

Options:
  --pairs SOURCE      Pair source, as above [default: count-split]
  --odd PATTERN       Odd half micrographs (folder or glob) for --pairs halves.
  --store H5          Train from an existing patch store instead of building one.
  --arch ARCH         dncnn or unet (--pairs f2fd: always F2Fd's U-Net) [default: dncnn]
  --depth N           DnCNN conv layers [default: 12]
  --width N           DnCNN channels [default: 32]
  --base N            U-Net channels at the first level [default: 32]
  --loss LOSS         Base loss, mse or l1 [default: mse]
  --fourier-weight W  Weight of the Fourier loss (MSE of log power spectra, on the scale
                      of the pixel MSE); the seeds used 0.1 [default: 0]
  --fourier-frc       Weight the Fourier loss per ring by sqrt(2 FRC / (1 + FRC)) of the
                      two views (rings without signal weigh ~0).
  --ssim-weight W     Weight of the SSIM loss 1 - SSIM (11 px Gaussian window, sigma
                      1.5 px) [default: 0]
  --msssim-weight W   Weight of the multi-scale SSIM loss 1 - MS-SSIM (as many 2x
                      scales as fit the 11 px window, up to 5) [default: 0]
  --grad-weight W     Weight of the gradient loss (L1 of finite differences)
                      [default: 0]
  --lr LR             Adam learning rate (per step, unitless); auto = 0.001, and
                      0.0001 with --pairs f2fd (F2Fd's U-Net diverged at 0.001 on a
                      256^3 tomogram, benchmarks/RESULTS.md) [default: auto]
  --lr-schedule S     constant, step, cosine or plateau [default: constant]
  --warmup N          Steps of linear learning-rate warm-up [default: 0]
  --lr-step N         step: steps between reductions [default: 1000]
  --lr-gamma G        step and plateau: factor of each reduction [default: 0.5]
  --patience N        plateau: validations without improvement before a reduction
                      [default: 3]
  --batch-size N      Patch pairs per step [default: 16]
  --patch-size PX     Patch side in pixels (after binning) [default: 64]
  --stride PX         Step between training patch origins in pixels [default: 32]
  --steps N           Optimisation steps; auto = 150 for the embedded crop (under 3
                      minutes on 2 CPU cores), else 2000 [default: auto]
  --epochs E          Passes over the training patches; overrides --steps when given.
  --max-minutes M     Stop (after a last validation) once training has run this long,
                      in minutes; 0 = no limit [default: 0]
  --val-fraction F    Share of each micrograph's rows (the bottom ones) held out for
                      validation [default: 0.25]
  --val-every N       Validate, log and checkpoint every N steps [default: 50]
  --val-patches N     At most this many validation patches [default: 256]
  --bin B             Fourier-crop binning factor applied to both views after splitting;
                      auto = 4 for the embedded crop, else 1 [default: auto]
  --dose D            Dose in e/A^2 for the count split; auto = from the FEI extended
                      header, else estimated from the noise [default: auto]
  --drop-frames N     Movie frames to drop at the start [default: 0]
  --align             Align movie frames by whole-pixel shifts before summing.
  --noise-level L     Sigma (gaussian, image units) or mean counts per px (poisson)
                      [default: 1.0]
  --normalize M       robust (median, MAD) or percentile (95th percentile of |x - mean|)
                      [default: robust]
  --float16-store     Keep patches as float16 in the store (half the disk).
  --precision P       fp32, tf32 or fp16: the convolutions' arithmetic on a GPU with
                      cuDNN (fp16: float16 weights and activations, float32 master
                      weights, dynamic loss scaling); the CPU runs fp32 [default: fp32]
F2Fd (--pairs f2fd; names as in F2Fd; --patch-size is its subtomo_length, a
multiple of 32):
  --p P               Probability of inverting a Fourier coefficient's sign [default: 0.1]
  --Vmask-pct F       Probability of dropping a block of Fourier voxels [default: 0.5]
  --volumetric-scale-factor N  Side of those blocks, Fourier voxels [default: 8]
  --dropout-p F       Dropout probability of the U-Net's decoder [default: 0.3]
  --total-samples N   Fourier masks in the pool [default: 20]
  --n-bernoulli-samples N  Samples averaged into one input or target; 1 pairs single
                      samples as F2Fd's code does (cupyden/f2fd.py) [default: 1]
  --features N        U-Net features [default: 48]
  --samples K         Denoising: Fourier-sample inputs averaged [default: 4]
  --passes T          Denoising: dropout passes per input [default: 4]
  --seed N            Seed of the split, patches, batches and weights [default: 0]
  -d, --device N      GPU number, -1 for the CPU, or auto; when not given,
                      CUPYDEN_DEVICE, else auto (the first GPU if any).
  --threads N         CPU threads for cupyden's kernels and BLAS; auto = the CPUs this
                      process may use (affinity, cgroup quota), or OMP_NUM_THREADS or
                      OPENBLAS_NUM_THREADS when set [default: auto]
  -o, --output DIR    Output folder (created) [default: cupyden-out]
  --resume CKPT       Continue from a checkpoint.h5 of an earlier run (same options).
  --no-progress       No progress bar.
  -h, --help          Show this help.

Outputs in DIR: patches.h5 (the patch store), model.h5 (best validation loss),
checkpoint.h5 (latest, with Adam state), history.csv, loss_curve.png, and for pair sources
with two halves an evaluation on the held-out rows (printed, and in evaluation.json).
"""

import json
import os
import time
from typing import NamedTuple

import numpy

from .. import backend, f2fd
from ..data import k2_crop
from ..errors import InputError
from ..functional.conv import PRECISIONS, set_precision
from ..infer import denoise_array
from ..io.checkpoint import load_checkpoint
from ..io.movies import even_odd_sums
from ..io.mrc import read_mrc, write_mrc
from ..io.pairs import count_split, expand, pair_halves, synthetic_pair
from ..io.patches import cut_patches, fourier_bin, normalization
from ..io.store import PatchStore, PatchStoreWriter
from ..io.tiff import read_image
from ..metrics import halves_gain
from ..models import build_model
from .. import report
from ..train import fit
from .common import as_choice, as_float, as_int, output_folder, run

SOURCES = ("count-split", "movie", "halves", "gaussian", "poisson", "f2fd")


class View(NamedTuple):
    """Two views of one micrograph: input a, target b (H, W) float32, at pixel_size Å/px."""
    name: str
    a: object
    b: object
    pixel_size: float
    raw: object


def _parse(args):
    o = {"pairs": as_choice(args, "--pairs", SOURCES),
         "arch": as_choice(args, "--arch", ("dncnn", "unet")),
         "loss": as_choice(args, "--loss", ("mse", "l1")),
         "normalize": as_choice(args, "--normalize", ("robust", "percentile")),
         "lr": ((1e-4 if args["--pairs"] == "f2fd" else 1e-3) if args["--lr"] == "auto"
                else as_float(args, "--lr", 0)),
         "val_fraction": as_float(args, "--val-fraction", 0.01, 0.9),
         "lr_schedule": as_choice(args, "--lr-schedule", ("constant", "step", "cosine", "plateau")),
         "loss_weights": {k: as_float(args, "--%s-weight" % a, 0)
                          for k, a in (("fourier", "fourier"), ("ssim", "ssim"),
                                       ("msssim", "msssim"), ("gradient", "grad"))},
         "lr_options": {"warmup": as_int(args, "--warmup", 0), "step_size": as_int(args, "--lr-step", 1),
                        "gamma": as_float(args, "--lr-gamma", 0, 1), "factor": as_float(args, "--lr-gamma", 0, 1),
                        "patience": as_int(args, "--patience", 1)},
         "noise_level": as_float(args, "--noise-level", 0),
         "precision": as_choice(args, "--precision", PRECISIONS)}
    for key in ("depth", "width", "base", "batch-size", "patch-size", "stride", "val-every", "val-patches", "drop-frames", "seed"):
        o[key.replace("-", "_")] = as_int(args, "--" + key, 0 if key in ("drop-frames", "seed") else 1)
    o["epochs"] = as_float(args, "--epochs", 0) if args["--epochs"] else None
    o["max_seconds"] = 60 * as_float(args, "--max-minutes", 0)
    o["inputs"] = args["INPUT"]
    o["embedded"] = not args["INPUT"] and not args["--store"]
    o["bin"] = (4 if o["embedded"] else 1) if args["--bin"] == "auto" else as_int(args, "--bin", 1)
    o["steps"] = ((150 if o["embedded"] else 2000) if args["--steps"] == "auto"
                  else as_int(args, "--steps", 1))
    o["dose"] = None if args["--dose"] == "auto" else as_float(args, "--dose", 0)
    if o["pairs"] == "halves" and not args["--odd"] and not o["embedded"]:
        raise InputError("--pairs halves needs --odd (the odd half micrographs)")
    if o["embedded"] and o["pairs"] != "count-split":
        raise InputError("the embedded default is a count split; give INPUT files for --pairs %s"
                         % o["pairs"])
    return o


def load_views(o, odd=None, log=print):
    """Read the inputs and make two views of each, binned. Returns a list of View."""
    views = []
    if o["embedded"]:
        mics = [k2_crop()]
        log("embedded default: %s, %dx%d px, %.4f A/px, %.1f e/A^2 (cupyden/data/PROVENANCE.md)"
            % (os.path.basename(mics[0].path), mics[0].data.shape[1], mics[0].data.shape[0],
               mics[0].pixel_size, mics[0].dose))
        pairs = [(m, None) for m in mics]
    elif o["pairs"] == "halves":
        pairs = [(read_mrc(e, ndim=2), read_mrc(od, ndim=2)) for e, od in pair_halves(o["inputs"], odd)]
    elif o["pairs"] == "movie":
        pairs = [(read_mrc(p, ndim=3, mmap=True, check_values=False), None) for p in expand(o["inputs"])]
    else:
        pairs = [(read_mrc(p, ndim=2), None) for p in expand(o["inputs"])]
    for i, (mic, other) in enumerate(pairs):
        name = os.path.basename(mic.path)
        if o["pairs"] == "count-split":
            a, b, info = count_split(mic.data, mic.pixel_size, o["dose"] or mic.dose, o["seed"] + i, name)
            log("%s: count split at %.4g values per electron (from %s; noise power low/high "
                "band %.2f), %.1f counts per px" % (name, info.scale,
                                                   "the dose" if info.scale_dose else "the noise",
                                                   info.flatness, (a + b).mean()))
        elif o["pairs"] == "movie":
            a, b, shifts = even_odd_sums(mic.data, o["drop_frames"], o.get("align", False))
        elif o["pairs"] == "halves":
            a, b = mic.data.astype(numpy.float32), other.data.astype(numpy.float32)
        else:
            a, b = synthetic_pair(mic.data, o["pairs"], o["noise_level"], o["seed"] + i)
        raw = (a + b) if o["pairs"] in ("count-split", "movie", "halves") else a
        f = o["bin"]
        views.append(View(name, fourier_bin(a, f), fourier_bin(b, f), mic.pixel_size * f,
                          fourier_bin(raw, f)))
    return views


def build_store(views, path, o, log=print):
    """Normalise each view pair (statistic of the input view), cut patches, split by rows."""
    P = o["patch_size"]
    attrs = {"pairs": o["pairs"], "bin": o["bin"], "normalize": o["normalize"],
             "pixel_size": views[0].pixel_size, "inputs": [v.name for v in views],
             "val_fraction": o["val_fraction"], "stats": {}}
    with PatchStoreWriter(path, P, "float16" if o.get("float16_store") else "float32", attrs) as w:
        for v in views:
            H = v.a.shape[0]
            if min(v.a.shape) < P:
                raise InputError("%s: %dx%d px after binning by %d is smaller than one %d px "
                                 "patch; use a smaller --patch-size or --bin"
                                 % (v.name, v.a.shape[1], H, o["bin"], P))
            norm = normalization(v.a, o["normalize"])
            a, b = norm.apply(v.a), norm.apply(v.b)
            split = int(round(H * (1 - o["val_fraction"])))
            w.append("train", *cut_patches(a, b, P, o["stride"], rows=(0, split)))
            w.append("val", *cut_patches(a, b, P, P, rows=(split, H)))
        n_train, n_val = w.f["train/input"].shape[0], w.f["val/input"].shape[0]
    log("patch store %s: %d training and %d validation pairs of %d px" % (path, n_train, n_val, P))


def _body(args):
    o = _parse(args)
    o["align"], o["float16_store"] = args["--align"], args["--float16-store"]
    device = backend.select_device(args["--device"])
    o["dtype"] = set_precision(o["precision"], device.xp)     # exit 2 now, not after a store
    out = args["--output"]
    output_folder(out)
    print("device: %s; precision %s" % (device.name, o["precision"]))
    if o["pairs"] == "f2fd":
        return _train_f2fd(args, o, device, out)
    t0 = time.perf_counter()
    views = []
    if args["--store"]:
        store_path = args["--store"]
    else:
        views = load_views(o, args["--odd"])
        store_path = os.path.join(out, "patches.h5")
        if not (args["--resume"] and os.path.exists(store_path)):
            build_store(views, store_path, o)
    store = PatchStore(store_path)
    n_train = store.size("train")
    if n_train < o["batch_size"] or store.size("val") == 0:
        raise InputError("%s: %d training and %d validation patches; need at least one batch "
                         "(%d) and one validation patch: use more or larger micrographs, a "
                         "smaller --patch-size or --stride" % (store_path, n_train,
                                                              store.size("val"), o["batch_size"]))
    steps = o["steps"]
    if o["epochs"]:
        steps = max(1, int(round(o["epochs"] * (n_train // o["batch_size"]))))
    model_cfg = ({"arch": "dncnn", "depth": o["depth"], "width": o["width"], "seed": o["seed"]}
                 if o["arch"] == "dncnn" else {"arch": "unet", "base": o["base"], "seed": o["seed"]})
    if (o["loss_weights"]["ssim"] or o["loss_weights"]["msssim"]) and store.patch < 11:
        raise InputError("--ssim-weight needs patches of at least 11 px (the SSIM window)")
    config = {"model": model_cfg, "loss": o["loss"], "loss_weights": o["loss_weights"],
              "fourier_frc": bool(args["--fourier-frc"]), "lr_schedule": o["lr_schedule"],
              "lr_options": o["lr_options"], "lr": o["lr"], "batch_size": o["batch_size"],
              "steps": steps, "val_every": o["val_every"], "val_patches": o["val_patches"],
              "seed": o["seed"], "max_seconds": o["max_seconds"], "precision": o["precision"],
              "patch_size": store.patch, "bin": store.attr("bin", 1),
              "pairs": store.attr("pairs"), "normalize": store.attr("normalize", "robust"),
              "pixel_size": store.attr("pixel_size", 0.0)}
    _check_resume(args["--resume"], config)
    print("training %s on %d patch pairs, %d steps of %d" % (
        build_model(model_cfg).__class__.__name__, n_train, steps, o["batch_size"]))
    fit(store, out, config, device.xp, resume=args["--resume"], progress=not args["--no-progress"])
    store.close()
    if views and o["pairs"] in ("count-split", "movie", "halves"):
        _evaluate(views, out, device, o)
    print("done in %.0f s; outputs in %s" % (time.perf_counter() - t0, out))


def _check_resume(path, config):
    """Refuse to resume a checkpoint trained with other settings (steps and time aside)."""
    if not path:
        return
    saved = load_checkpoint(path)["config"]
    diff = sorted(k for k in set(saved) | set(config)
                  if k not in ("steps", "max_seconds") and saved.get(k) != config.get(k))
    if diff:
        raise InputError("%s was trained with other settings (%s); resume with the same "
                         "options" % (path, ", ".join(diff)))


def f2fd_params(args, patch_size):
    """F2FdParams from the command line's F2Fd options."""
    return f2fd.F2FdParams(
        p=as_float(args, "--p", 0, 1), Vmask_pct=as_float(args, "--Vmask-pct", 0, 1),
        dropout_p=as_float(args, "--dropout-p", 0, 0.99),
        volumetric_scale_factor=as_int(args, "--volumetric-scale-factor", 1),
        total_samples=as_int(args, "--total-samples", 2),
        n_bernoulli_samples=as_int(args, "--n-bernoulli-samples", 1), subtomo_length=patch_size)


def _train_f2fd(args, o, device, out):
    """--pairs f2fd: train F2Fd's U-Net on one image's Fourier samples, then denoise it."""
    t0 = time.perf_counter()
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
    pixel_size = image.pixel_size * o["bin"]
    prm = f2fd_params(args, o["patch_size"])
    if o["patch_size"] % 32:
        raise InputError("--patch-size must be a multiple of 32 for F2Fd's U-Net (5 poolings),"
                         " got %d" % o["patch_size"])
    if data.ndim == 3 and any(o["loss_weights"].values()):
        raise InputError("the Fourier, SSIM and gradient losses are 2-D; use --loss alone "
                         "for a volume")
    x, norm = f2fd.prepare(data)
    pairs = f2fd.F2FdPairs(x, prm, device.xp, o["seed"], n_val=min(o["val_patches"], 16))
    model_cfg = {"arch": "f2fd-unet", "ndim": x.ndim, "nf": as_int(args, "--features", 1),
                 "depth": 5, "dropout_p": prm.dropout_p, "seed": o["seed"]}
    params = prm._asdict()
    params["sphere_fraction"] = list(params["sphere_fraction"])
    config = {"model": model_cfg, "loss": o["loss"], "loss_weights": o["loss_weights"],
              "lr_schedule": o["lr_schedule"], "lr_options": o["lr_options"], "lr": o["lr"],
              "batch_size": o["batch_size"], "steps": o["steps"], "val_every": o["val_every"],
              "val_patches": pairs.size("val"), "seed": o["seed"], "max_seconds": o["max_seconds"],
              "precision": o["precision"],
              "patch_size": prm.subtomo_length, "bin": o["bin"], "pairs": "f2fd", "f2fd": params,
              "normalize": "f2fd", "pixel_size": pixel_size, "input": name}
    _check_resume(args["--resume"], config)
    kind = "tomogram" if x.ndim == 3 else "micrograph"
    print("F2Fd on the %s %s (%s voxels, %.4g A/voxel): %d steps of %d patches of %d"
          % (kind, name, " x ".join(map(str, x.shape)), pixel_size, o["steps"], o["batch_size"],
             prm.subtomo_length))
    fit(pairs, out, config, device.xp, resume=args["--resume"],
        progress=not args["--no-progress"])
    ck = load_checkpoint(os.path.join(out, "model.h5"))
    model = build_model(ck["config"]["model"]).to(device.xp, o["dtype"])
    model.load_state(ck["weights"])
    t1 = time.perf_counter()
    den = norm.invert(f2fd.denoise(model, x, prm, device.xp, as_int(args, "--samples", 1),
                                   as_int(args, "--passes", 1)))
    t_den = time.perf_counter() - t1
    write_mrc(os.path.join(out, "denoised.mrc"), den, pixel_size)
    central_slice_png(data, den, os.path.join(out, "central_slice.png"), pixel_size)
    print("denoised %s in %.1f s: denoised.mrc, central_slice.png" % (name, t_den))
    print("done in %.0f s; outputs in %s" % (time.perf_counter() - t0, out))


def central_slice_png(raw, denoised, path, pixel_size):
    """Before/after panels of the central z slice of a volume (or of a micrograph)."""
    if raw.ndim == 3:
        k = raw.shape[0] // 2
        raw, denoised = raw[k], denoised[k]
        titles = ("raw, slice z = %d" % k, "F2Fd, slice z = %d" % k)
    else:
        titles = ("raw", "F2Fd")
    report.before_after(raw, denoised, path, titles, pixel_size or None)


def _evaluate(views, out, device, o):
    """Held-out rows of the first micrograph: corr(f(A), B) against corr(A, B); for the
    embedded default, also denoise the whole crop and write the before/after panel."""
    ck = load_checkpoint(os.path.join(out, "model.h5"))
    model = build_model(ck["config"]["model"]).to(device.xp, o["dtype"]).eval()
    model.load_state(ck["weights"])
    v = views[0]
    split = int(round(v.a.shape[0] * (1 - o["val_fraction"])))
    a_val, b_val = v.a[split:], v.b[split:]
    den_a, _ = denoise_array(model, a_val, device.xp, norm=normalization(v.a, o["normalize"]))
    g = halves_gain(den_a, a_val, b_val)
    g.update({"micrograph": v.name, "rows": [split, v.a.shape[0]], "pixel_size": v.pixel_size})
    with open(os.path.join(out, "evaluation.json"), "w") as f:
        json.dump(g, f, indent=1)
    print("held-out rows %d:%d of %s: corr(A, B) = %.4f, corr(f(A), B) = %.4f, SNR gain %+.1f dB"
          % (split, v.a.shape[0], v.name, g["cc_raw"], g["cc_denoised"], g["gain_db"]))
    if o["embedded"]:
        den, stats = denoise_array(model, v.raw, device.xp, norm=normalization(v.raw, o["normalize"]))
        write_mrc(os.path.join(out, "denoised.mrc"), den, v.pixel_size)
        report.before_after(v.raw, den, os.path.join(out, "before_after.png"),
                            ("raw (count sum, binned %dx)" % o["bin"], "denoised (cupyden DnCNN)"),
                            v.pixel_size)
        print("denoised the crop: denoised.mrc, before_after.png (%d tiles, %.3fx pixels)"
              % (stats["tiles"], stats["ratio"]))


def main(argv=None):
    """Entry point of cupyden-train; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-train")
