"""Loss ablation on count-split K2 pairs: the same DnCNN, steps and seed for each loss.

Usage:
  ablate_losses.py [--mrc MRC] [--bin B] [--steps N] [--batch-size N] [--patch-size PX]
                   [--device N] [-o DIR]

Options:
  --mrc MRC          A counting-mode micrograph; default: the embedded K2 crop.
  --bin B            Binning after the split [default: 4]
  --steps N          Training steps per loss [default: 200]
  --batch-size N     [default: 16]
  --patch-size PX    [default: 64]
  --device N         GPU number or -1 [default: -1]
  -o DIR             Work folder [default: ablation]

For each configuration: train DnCNN-12/32 (Adam 1e-3, seed 0) on the top 75% of the rows,
then report on the held-out bottom 25%: the validation pixel MSE and Fourier loss of f(A)
against B (normalised units), and corr(f(A), B) with its SNR gain over corr(A, B) (Frank &
Al-Ali; Palovcak & Cheng 2020; DATA.md's protocol). Prints a Markdown table.
"""

import os
import time

import numpy
from docopt import docopt

from cupyden import backend
from cupyden.infer import denoise_array
from cupyden.io.patches import normalization
from cupyden.io.store import PatchStore
from cupyden.metrics import halves_gain
from cupyden.models import build_model
from cupyden.io.checkpoint import load_checkpoint
from cupyden.pipeline.train import build_store, make_view, resolve_options, sources
from cupyden.training import evaluate, fit

CONFIGS = [("MSE", {}, False), ("MSE + 0.05 Fourier", {"fourier": 0.05}, False),
           ("MSE + 0.1 Fourier", {"fourier": 0.1}, False),
           ("MSE + 0.2 Fourier", {"fourier": 0.2}, False),
           ("MSE + 0.1 FRC-weighted Fourier", {"fourier": 0.1}, True),
           ("MSE + 0.1 SSIM", {"ssim": 0.1}, False),
           ("MSE + 0.1 gradient", {"gradient": 0.1}, False)]


def main():
    args = docopt(__doc__)
    dev = backend.select_device(args["--device"])
    xp, out = dev.xp, args["-o"]
    os.makedirs(out, exist_ok=True)
    o = resolve_options([args["--mrc"]] if args["--mrc"] else [], pairs="count-split",
                        binning=int(args["--bin"]), patch_size=int(args["--patch-size"]),
                        stride=int(args["--patch-size"]) // 2, val_fraction=0.25)
    store_path = os.path.join(out, "patches.h5")
    build_store(store_path, o, xp)
    store = PatchStore(store_path)
    vx, vy = (xp.asarray(v) for v in store.read("val", numpy.arange(store.size("val"))))
    v = make_view(0, sources(o)[0], o, xp)
    v = v._replace(a=backend.to_host(v.a), b=backend.to_host(v.b))
    split = int(round(v.a.shape[0] * 0.75))
    rows = []
    for name, weights, frc in CONFIGS:
        folder = os.path.join(out, name.replace(" ", "_").replace("+", "p").replace(".", ""))
        os.makedirs(folder, exist_ok=True)
        config = {"model": {"arch": "dncnn", "depth": 12, "width": 32, "seed": 0}, "loss": "mse",
                  "loss_weights": weights, "fourier_frc": frc, "lr": 1e-3,
                  "batch_size": int(args["--batch-size"]), "steps": int(args["--steps"]),
                  "val_every": int(args["--steps"]), "val_patches": 256, "seed": 0}
        t0 = time.perf_counter()
        fit(store, folder, config, xp, progress=False, log=lambda *a: None)
        seconds = time.perf_counter() - t0
        model = build_model(config["model"]).to(xp, numpy.float32).eval()
        model.load_state(load_checkpoint(os.path.join(folder, "checkpoint.h5"))["weights"])
        mse, four = evaluate(model, "mse", vx, vy, 16), evaluate(model, "fourier", vx, vy, 16)
        den, _ = denoise_array(model, v.a[split:], xp, norm=normalization(v.a))
        g = halves_gain(den, v.a[split:], v.b[split:])
        rows.append((name, mse, four, g["cc_raw"], g["cc_denoised"], g["gain_db"], seconds))
        print("%-32s val MSE %.5f  val Fourier %.5f  corr %.4f -> %.4f  %+.2f dB  %.0f s"
              % rows[-1], flush=True)
    print("\ndevice: %s; %s steps of %s x %s px per loss\n" % (
        dev.name, args["--steps"], args["--batch-size"], args["--patch-size"]))
    print("| loss | val MSE | val Fourier loss | corr(A, B) | corr(f(A), B) | SNR gain | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %.5f | %.5f | %.4f | %.4f | %+.2f dB | %.0f |" % r)


if __name__ == "__main__":
    main()
