"""Denoising quality with ground truth: simulated GroEL movies at two doses.

For each dose: N micrographs simulated by cupyden.simulate (GroEL 14-mer, 1 Å/px, defocus
uniform in 1.5-2.5 µm, 300 kV, 40 frames, ice 300 Å), even/odd frame sums; the first N - K
train, the last K are held out. Every method sees the held-out even sums binned by B
(Fourier cropping) and is scored against the truth, the clean image's expectation of an
even sum (half of it) binned the same way: PSNR (range of the truth), SSIM, correlation,
FRC 0.143 crossing.

Methods: the raw even sum; the best Gaussian low-pass (sigma minimising the squared error
to the truth over the training micrographs: an oracle choice); cupyden-train
(--pairs halves: even -> odd Noise2Noise on the training micrographs, the same binning)
for each architecture, for the same wall-clock budget; Topaz-Denoise's pretrained model
run in cupyden (topaz:NAME), when topaz-em is importable. Seconds per micrograph: the
method alone on the binned micrograph, the GPU synchronised, files excluded.

Usage:
  quality.py [options]

Options:
  --size PX         Simulated micrograph side at 1 Å/px [default: 2048]
  --micrographs N   Per dose [default: 10]
  --held-out K      [default: 2]
  --bin B           [default: 4]
  --doses LIST      e-/Å^2 [default: 40,20]
  --archs LIST      [default: dncnn,unet]
  --topaz NAME      Topaz pretrained model, or none [default: unet]
  --minutes M       Training budget per model [default: 1.0]
  --patch-size PX   [default: 96]
  -d N              Device [default: 0]
  -o DIR            [default: quality-run]
"""

import json
import os
import time

import numpy
from docopt import docopt

import cupyden
from cupyden import backend
from cupyden.baselines import SIGMAS, gaussian_lowpass
from cupyden.cli.denoise import load_model
from cupyden.errors import InputError
from cupyden.infer import denoise_array
from cupyden.io.mrc import write_mrc
from cupyden.io.patches import fourier_bin, normalization
from cupyden.metrics import compare
from cupyden.simulate import DEFAULT_MODEL, Optics, read_atoms, simulate_micrograph


def timed(fn, xp):
    backend.synchronize(xp)
    t0 = time.perf_counter()
    out = fn()
    backend.synchronize(xp)
    return out, time.perf_counter() - t0


def main():
    args = docopt(__doc__)
    size, n, k, b = (int(args[x]) for x in ("--size", "--micrographs", "--held-out", "--bin"))
    device = backend.select_device(args["-d"])
    xp = device.xp
    xyz, z = read_atoms(DEFAULT_MODEL)
    out = args["-o"]
    archs = args["--archs"].split(",")
    results = {}
    print("device %s; %d micrographs of %d px at 1 Å/px per dose, %d held out, bin %d"
          % (device.name, n, size, k, b))
    for dose in (float(d) for d in args["--doses"].split(",")):
        folder = os.path.join(out, "dose%g" % dose)
        for sub in ("even", "odd"):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        rng = numpy.random.default_rng(int(dose))
        train_pairs, held = [], []
        t0 = time.perf_counter()
        for i in range(n):
            optics = Optics(defocus=float(rng.uniform(15000, 25000)))
            sim = simulate_micrograph(xyz, z, (size, size), 1.0, optics, dose=dose, frames=40,
                                      seed=int(1000 * dose) + i, xp=xp)
            even = sim.movie[0::2].sum(0, dtype=numpy.float32)
            odd = sim.movie[1::2].sum(0, dtype=numpy.float32)
            truth = fourier_bin(sim.clean / 2, b)
            if i < n - k:
                for sub, img in (("even", even), ("odd", odd)):
                    write_mrc(os.path.join(folder, sub, "mic%02d.mrc" % i), img, 1.0)
                train_pairs.append((fourier_bin(even, b), truth))
            else:
                held.append((fourier_bin(even, b), truth))
        print("dose %g: simulated %d micrographs in %.1f s (%d particles in the first)"
              % (dose, n, time.perf_counter() - t0, sim.params["particles"]))
        err = [sum(float(((gaussian_lowpass(e, s) - t) ** 2).mean()) for e, t in train_pairs)
               for s in SIGMAS]
        sigma = SIGMAS[int(numpy.argmin(err))]
        methods = {"raw": lambda img: img,
                   "gaussian (sigma %.3g px, oracle)" % sigma:
                       lambda img: gaussian_lowpass(img, sigma)}
        for arch in archs:
            run_dir = os.path.join(folder, arch)
            model, hist = cupyden.train(os.path.join(folder, "even"), run_dir, pairs="halves",
                                        odd=os.path.join(folder, "odd"), arch=arch, binning=b,
                                        patch_size=int(args["--patch-size"]), stride=48,
                                        steps=1000000, max_minutes=float(args["--minutes"]),
                                        val_every=100, device=args["-d"], progress=False,
                                        overwrite=True)
            print("  %s: %s" % (arch, hist[-1]))
            methods["cupyden %s, N2N %s min" % (arch, args["--minutes"])] = (
                lambda img, m=model: denoise_array(m, img, xp, 2048, 4,
                                                   normalization(img, "robust"))[0])
        if args["--topaz"] != "none":
            try:
                tmodel, _ = load_model("topaz:" + args["--topaz"], xp)
                methods["Topaz %s pretrained (in cupyden)" % args["--topaz"]] = (
                    lambda img: denoise_array(tmodel, img, xp, 2048, 4,
                                              normalization(img, "meanstd"))[0])
            except InputError as exc:
                print("  Topaz skipped: %s" % exc)
        rows = {}
        for name, fn in methods.items():
            fn(held[0][0])                                     # warm-up
            scores, seconds = [], []
            for img, truth in held:
                est, t = timed(lambda: fn(img), xp)
                seconds.append(t)
                m, _ = compare({"raw": img, "x": backend.to_host(est)}, b, clean=truth)
                scores.append(m["x"])
            rows[name] = {key: float(numpy.mean([s[key] for s in scores]))
                          for key in ("psnr_db", "ssim", "cc_clean", "frc_0.143_A")}
            rows[name]["seconds"] = float(numpy.mean(seconds))
        results["%g" % dose] = rows
        print("\ndose %g e-/Å^2 (held-out even sums, %d x %d px at %g Å/px):"
              % (dose, held[0][0].shape[1], held[0][0].shape[0], b))
        print("| method | PSNR (dB) | SSIM | corr. with truth | FRC 0.143 (Å) | s / micrograph |")
        print("|---|---|---|---|---|---|")
        for name, r in rows.items():
            print("| %s | %.2f | %.3f | %.3f | %.1f | %.4f |" % (
                name, r["psnr_db"], r["ssim"], r["cc_clean"], r["frc_0.143_A"], r["seconds"]))
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
