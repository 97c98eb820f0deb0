"""Noise2Noise on even/odd tomograms of a simulated tilt series, beside raw, Gaussian and F2Fd.

One tilt series is simulated (cupyden.simulate.simulate_tilt_series, seeded: GroEL 1MNF
copies in a slab, -60..+60 degrees in steps of 3, dose-symmetric, 120 e/Å^2 in 8 frames
per tilt, 30000 Å defocus with its gradient across tilted images, radiation damage;
weighted back-projection of the even frames (half1), the odd frames (half2) and all
frames (full)). Two truths: the Coulomb potential of the copies (the issue's measure),
and the noise-free tomogram (``SimulatedTiltSeries.expected``: the reconstruction of the
expected counts, with the tomograms' CTF and missing wedge; what a denoiser of the
halves estimates: N2N's minimiser is E[half2 | half1]).

Rows:
  raw       the full tomogram
  Gaussian  the full tomogram low-passed, sigma chosen against the potential (an
            oracle: the strongest Gaussian there is); a second row with the sigma
            chosen against the noise-free tomogram
  noise-free tomogram   no Poisson noise at all: a perfect denoiser's output, the
            ceiling of any denoiser of the halves on the potential's columns
  F2Fd      cupyden.train([full], pairs="f2fd"): one volume, no second view; its
            wall time includes its own K x T denoising of the volume
  N2N       cupyden.train([half1], pairs="halves", odd=[half2]) for the training budget,
            then cupyden.denoise of each half and their mean (as cryoCARE does); the
            row "N2N on full" denoises the full tomogram with the same model

Scores: the central 9 z slices (z = D/2 - 4 .. D/2 + 4, the xy planes through the
middle of the slab), without N2N's validation rows along y (the slab that chose its
checkpoint, ``cupyden.pipeline.train.row_split``): every row of the table is scored on
the same voxels, y rows [0, split) and [end, H). Each estimate is first matched to the
truth by least squares, a * estimate + b (the tomogram is image contrast with protein
dark, the truth a potential in V: the sign and the scale are arbitrary), over those
voxels; PSNR (range of the truth there) over them, SSIM (cupyden.metrics.ssim) averaged
over the slices and the two row blocks (weighted by rows). The affine match makes a
constant estimate score 20 log10(range / std) of the truth (about 17 dB on the
potential), the floor of every row. Training uses the tomograms only, never a truth.
(F2Fd draws its few validation patches from the whole volume, as its method trains on
the one volume it denoises.)

Writes OUT/sim/{half1,half2,full,clean}/tomo.mrc, OUT/results.json, OUT/central_slices.png
(z and y central slices of every row).

Usage:
  tomo_n2n.py [options]

Options:
  -o DIR            Output folder [default: tomo-n2n-run]
  -d, --device N    GPU number, -1 for the CPU, or auto [default: auto]
  --minutes M       Training budget of N2N, minutes [default: 10]
  --f2fd-minutes M  Training budget of F2Fd (its wall time adds its K x T denoising),
                    minutes; auto = --minutes [default: auto]
  --precision P     fp32, tf32 or fp16 (a GPU; the CPU runs fp32) [default: fp32]
  --methods LIST    Learned methods to run: n2n, f2fd [default: n2n,f2fd]
  --volume DxHxW    Tomogram size, voxels [default: 96x256x256]
  --voxel-size A    Å/voxel [default: 8]
  --seed S          Simulation and training seed [default: 0]
  --arch NAME       N2N network (cupyden.train's arch) [default: unet3d]
  --patch-size PX   Training patch side, voxels [default: 64]
  --batch-size N    Patches per step [default: 4]
  --quick           A tiny CPU-sized case (32x64x64 voxels, 0.2 minutes each, 16^3
                    patches, validation every 5 steps, F2Fd with 8 features and
                    K x T = 1 x 1): checks that everything runs, scores mean little.
"""

import json
import os
import time

import numpy
from docopt import docopt

import cupyden
from cupyden import backend
from cupyden.baselines import gaussian_lowpass
from cupyden.io.mrc import read_mrc, write_mrc
from cupyden.metrics import psnr, ssim
from cupyden.pipeline.train import row_split
from cupyden.simulate import DEFAULT_MODEL, Optics, read_atoms, simulate_tilt_series
from cupyden.training import read_history

SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
HALF_WIDTH = 4                       # scored slices: D/2 - 4 .. D/2 + 4


def central(volume):
    k = volume.shape[0] // 2
    return numpy.asarray(volume[k - HALF_WIDTH:k + HALF_WIDTH + 1], numpy.float64)


def affine_match(estimate, truth):
    """a * estimate + b closest to truth in the least-squares sense (a = cov / var)."""
    e = estimate - estimate.mean()
    a = float((e * (truth - truth.mean())).sum() / max((e * e).sum(), 1e-300))
    return a * e + truth.mean()


#: The validation and held-out fractions N2N trains with (train()'s defaults, passed
#: explicitly so that the scored rows below follow them).
VAL_FRACTION = HOLDOUT_FRACTION = 0.125


def scored_rows(H, patch):
    """[(start, stop)] of the y rows scored: all but N2N's validation rows."""
    split, end = row_split(H, {"val_fraction": VAL_FRACTION,
                               "holdout_fraction": HOLDOUT_FRACTION, "patch_size": patch})
    return [(a, b) for a, b in ((0, split), (end, H)) if b > a]


def score(volume, truth_slices, blocks):
    c = central(volume)
    truth = numpy.concatenate([truth_slices[:, a:b].ravel() for a, b in blocks])
    est = affine_match(numpy.concatenate([c[:, a:b].ravel() for a, b in blocks]), truth)
    r = float(truth.max() - truth.min())
    offset, ssims, weights = 0, [], []
    for a, b in blocks:
        n = truth_slices[:, a:b].size
        e = est[offset:offset + n].reshape(truth_slices[:, a:b].shape)
        ssims += [ssim(ei, ti, r) for ei, ti in zip(e, truth_slices[:, a:b])]
        weights += [b - a] * len(e)
        offset += n
    return {"psnr": psnr(est, truth, r), "ssim": float(numpy.average(ssims, weights=weights))}


def simulate(out, shape, voxel_size, seed, xp):
    xyz, z = read_atoms(DEFAULT_MODEL)
    t0 = time.perf_counter()
    sim = simulate_tilt_series(xyz, z, shape, voxel_size, optics=Optics(defocus=30000.0),
                               dose=120.0, frames=8, defocus_gradient=True, seed=seed, xp=xp)
    seconds = time.perf_counter() - t0
    os.makedirs(out, exist_ok=True)
    paths = {}
    # the halves share a basename in two folders: cupyden.train pairs halves by basename
    for name, volume in (("half1", sim.even), ("half2", sim.odd), ("full", sim.full),
                         ("clean", sim.clean)):
        os.makedirs(os.path.join(out, name), exist_ok=True)
        paths[name] = os.path.join(out, name, "tomo.mrc")
        write_mrc(paths[name], volume, voxel_size)
    return sim, paths, seconds


def run_f2fd(paths, out, o):
    t0 = time.perf_counter()
    cupyden.train([paths["full"]], out, pairs="f2fd", steps=10 ** 7,
                  max_minutes=o["f2fd_minutes"], batch_size=o["batch"], patch_size=o["patch"],
                  val_every=o["val_every"], seed=o["seed"], device=o["device"], overwrite=True,
                  progress=False, log=lambda line: None, f2fd=o["f2fd"],
                  precision=o["precision"])
    seconds = time.perf_counter() - t0
    return {"F2Fd": read_mrc(os.path.join(out, "denoised.mrc")).data}, {"train_s": seconds}


def run_n2n(paths, out, o):
    t0 = time.perf_counter()
    cupyden.train([paths["half1"]], out, pairs="halves", odd=[paths["half2"]], arch=o["arch"],
                  steps=10 ** 7, max_minutes=o["minutes"], batch_size=o["batch"],
                  patch_size=o["patch"], val_every=o["val_every"], seed=o["seed"],
                  val_fraction=VAL_FRACTION, holdout_fraction=HOLDOUT_FRACTION,
                  precision=o["precision"], device=o["device"], overwrite=True,
                  progress=False, log=lambda line: None)
    seconds = time.perf_counter() - t0
    history = read_history(os.path.join(out, "history.csv"))
    model = cupyden.load_model(os.path.join(out, "model.h5"), device=o["device"])
    t1 = time.perf_counter()
    halves = [cupyden.denoise(model, read_mrc(paths[h]).data) for h in ("half1", "half2")]
    t_den = time.perf_counter() - t1
    full = cupyden.denoise(model, read_mrc(paths["full"]).data)
    return ({"N2N (mean of denoised halves)": (halves[0] + halves[1]) / 2,
             "N2N on full": full}, {"train_s": seconds, "denoise_both_halves_s": t_den,
                                     "steps": history[-1]["step"],
                                     "val_loss_first": history[0]["val_loss"],
                                     "val_loss_best": min(h["val_loss"] for h in history)})


def panel(volumes, truth, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["truth"] + list(volumes)
    D, H, W = truth.shape
    fig, axes = plt.subplots(2, len(names), figsize=(3 * len(names), 3 * (1 + D / H)),
                             gridspec_kw={"height_ratios": [H, D]}, squeeze=False)
    for i, name in enumerate(names):
        v = truth if name == "truth" else volumes[name]
        for row, image in enumerate((v[D // 2], v[:, H // 2])):
            lo, hi = numpy.percentile(image, (1, 99))
            axes[row, i].imshow(image, cmap="gray", vmin=lo, vmax=hi)
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
        axes[0, i].set_title(name, fontsize=9)
    axes[0, 0].set_ylabel("z = %d (xy)" % (D // 2))
    axes[1, 0].set_ylabel("y = %d (xz)" % (H // 2))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    args = docopt(__doc__, argv=argv)
    quick = args["--quick"]
    o = {"minutes": 0.2 if quick else float(args["--minutes"]),
         "precision": args["--precision"],
         "patch": 16 if quick else int(args["--patch-size"]),
         "batch": 2 if quick else int(args["--batch-size"]),
         "seed": int(args["--seed"]), "arch": args["--arch"],
         "val_every": 5 if quick else 50,
         "f2fd": {"samples": 1, "passes": 1, "features": 8} if quick else None}
    o["f2fd_minutes"] = (o["minutes"] if quick or args["--f2fd-minutes"] == "auto"
                         else float(args["--f2fd-minutes"]))
    shape = (32, 64, 64) if quick else tuple(int(v) for v in args["--volume"].split("x"))
    voxel = float(args["--voxel-size"])
    methods = [m for m in args["--methods"].split(",") if m]
    device = backend.select_device(args["--device"])
    o["device"] = device.ordinal
    out = args["-o"]
    os.makedirs(out, exist_ok=True)
    print("device: %s; volume %s voxels at %g Å; training budget %.2f min (N2N), %.2f min "
          "(F2Fd); precision %s" % (device.name, "x".join(map(str, shape)), voxel,
                                    o["minutes"], o["f2fd_minutes"], o["precision"]))

    sim, paths, t_sim = simulate(os.path.join(out, "sim"), shape, voxel, o["seed"], device.xp)
    print("simulated %d copies, %d tilts, in %.1f s" % (sim.params["particles"],
                                                      len(sim.angles), t_sim))
    truth, noise_free = central(sim.clean), central(sim.expected)
    volumes = {"raw (full tomogram)": sim.full}
    rows = {"raw (full tomogram)": {}}
    blocks = scored_rows(shape[1], o["patch"])
    for against, t in (("potential", truth), ("noise-free", noise_free)):
        best = max(SIGMAS, key=lambda s: score(gaussian_lowpass(sim.full, s, 3), t,
                                               blocks)["psnr"])
        name = "Gaussian (oracle sigma %.2f voxels vs %s)" % (best, against)
        volumes[name] = gaussian_lowpass(sim.full, best, 3).astype(numpy.float32)
        rows[name] = {"sigma": best}
    name = "noise-free tomogram (a perfect denoiser)"
    volumes[name], rows[name] = sim.expected, {}
    runners = {"f2fd": run_f2fd, "n2n": run_n2n}
    for method in methods:
        try:
            got, info = runners[method](paths, os.path.join(out, method), o)
        except Exception as exc:        # a method that cannot run yet is a row, not a crash
            rows["%s: failed" % method] = {"error": "%s: %s" % (type(exc).__name__, exc)}
            continue
        for key, volume in got.items():
            volumes[key] = numpy.asarray(volume, numpy.float32)
            rows[key] = info

    print("\n| method | PSNR vs potential (dB) | SSIM vs potential | PSNR vs noise-free (dB) | "
          "SSIM vs noise-free | training s | notes |\n|---|---|---|---|---|---|---|")
    results = {"params": sim.params, "simulation_s": t_sim, "device": device.name,
               "scored": "z slices %d..%d, y rows %s (not N2N's validation rows), affine "
                         "least-squares match to each truth (potential, noise-free tomogram)"
                         % (shape[0] // 2 - HALF_WIDTH, shape[0] // 2 + HALF_WIDTH, blocks),
               "rows": {}}
    for key, info in rows.items():
        if key in volumes:
            s = score(volumes[key], truth, blocks)
            n = score(volumes[key], noise_free, blocks)
            info = dict(info, **s, psnr_noise_free=n["psnr"], ssim_noise_free=n["ssim"])
            print("| %s | %.2f | %.3f | %.2f | %.3f | %s | %s |" % (
                key, s["psnr"], s["ssim"], n["psnr"], n["ssim"],
                "%.0f" % info["train_s"] if "train_s" in info else "",
                ", ".join(["%s %.1f" % (k, v) for k, v in info.items()
                           if k.endswith("_s") and k != "train_s"]
                          + (["%d steps" % info["steps"]] if "steps" in info else []))))
        else:
            print("| %s | | | | | | %s |" % (key, info["error"]))
        results["rows"][key] = info
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    panel(volumes, sim.clean, os.path.join(out, "central_slices.png"))
    print("\n%s, %s" % (os.path.join(out, "results.json"), os.path.join(out, "central_slices.png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
