"""The K2 protocol of DATA.md through the commands: train on rows [0, 2816), judge on unseen rows.

Usage:
  k2_protocol.py MRC [--recipe NAME] [--minutes M] [--extra OPTS] [--tta N] [-o DIR]
                 [--panel PNG] [--pretrained P]
  k2_protocol.py --list

Options:
  --recipe NAME   Training options, by name (--list shows them) [default: topaz-finetune]
  --minutes M     Training budget in minutes (--max-minutes of cupyden-train) [default: 4]
  --extra OPTS    More cupyden-train options, one string (they replace the recipe's same
                  options).
  --tta N         Also score the trained model with cupyden-denoise --tta N (test-time
                  augmentation: the mean over N flips and rotations, N times the network
                  time; 1 skips that row) [default: 8]
  -o DIR          Output folder [default: k2-protocol]
  --panel PNG     Before/after panel of the held-out A half, shown Fourier-binned 4x
                  [default: docs/k2_protocol_before_after.png]
  --pretrained P  Precision of the Topaz pretrained row (fp32, tf32 or fp16), or none to
                  skip it (strict fp32 runs Topaz's network slowly) [default: fp32]
  --list          Print the recipes and exit.

Steps, as a user would run them:
1. rows [0, 2816) of the raw micrograph are written to DIR/train_rows.mrc, and
   ``cupyden-train DIR/train_rows.mrc --dose 47.6 --max-minutes M <recipe>`` trains on
   them (<recipe>: ``--recipe NAME`` and its options, --list; its own count split; its
   validation rows, which choose the checkpoint, are the bottom of these rows; it never
   sees rows 2816 and below);
2. the protocol's count split of the whole micrograph (counts = round(x / scale), scale =
   mean / (47.6 x 0.8538^2), A and B by Binomial(counts, 1/2), seed 0) gives the held-out
   halves of rows [2816, 3838); ``cupyden-denoise DIR/model.h5 DIR/heldout_A.mrc`` denoises
   the A half, once as it is and once with ``--tta N`` (the self-ensemble of Lim et al.
   2017; the panel shows the plain one);
3. corr(f(A), B) after a Gaussian high-pass at 1/200 px^-1, SNR = c / (1 - c), gain =
   20 log10(SNR_f / SNR_raw) (``cupyden.metrics.halves_gain``), beside: raw, the best
   Gaussian low-pass (sigma of the highest corr(G(A), B) on rows [2304, 2816), training
   rows; the least-squares choice of ``baselines.best_gaussian`` favours wide filters
   here, where the noise dwarfs the signal) and, when
   topaz-em is installed, Topaz-Denoise's pretrained ``unet`` (``topaz:unet`` in cupyden,
   equal to Topaz's output to 1e-5, benchmarks/RESULTS.md).

Targets (issue 15): +8.0 dB in at most 240 s of training; Topaz-Denoise trained by its own
CLI on the same rows for 240 s reached +7.6 dB (DATA.md).
"""

import json
import os
import shlex
import time

import numpy
from docopt import docopt

from cupyden import recipes, report
from cupyden.baselines import SIGMAS, gaussian_lowpass
from cupyden.cli import denoise, train
from cupyden.io.checkpoint import load_checkpoint
from cupyden.io.mrc import read_mrc, write_mrc
from cupyden.io.pairs import count_split
from cupyden.io.patches import fourier_bin
from cupyden.metrics import halves_gain
from cupyden.training import read_history

SPLIT_ROW = 2816
DOSE = 47.6

#: The protocol's own options: the budget decides the length (--max-minutes M, so a large
#: --steps), a larger validation share of the 2816 training rows, and no held-out rows of
#: cupyden-train's own (the protocol holds rows [2816, 3838) out itself).
PROTOCOL = "--steps 1000000 --val-fraction 0.14 --holdout-fraction 0"

#: Named cupyden-train options. "topaz-finetune" and "topaz-scratch" are the library's
#: recipes (cupyden/recipes.py: what cupyden-train does by default on a GPU), written out in
#: full with --recipe NAME and the protocol's options. How topaz-finetune was found (all on
#: one H200, 240 s): Topaz's UDenoiseNet (receptive field 298 px) from Topaz's general
#: pretrained weights, fine-tuned in float16 on 384 px patches (Topaz trains on 800 px
#: crops), cosine learning rate. A first trial (2026-11-30, lr 2e-4, cosine over 10000
#: steps) ran 3410 steps of 12 x 384^2 in 240 s (14.1 steps/s) and its validation loss was
#: lowest at step 500, then rose: hence 1e-4 and validation every 250 steps. A cosine over a
#: fixed 4000 steps scored +7.56 dB but ended after 173 s of the 240 s: the step count
#: cannot fit a time budget on an unknown GPU, so the budget decides (--steps 1000000):
#: with --max-minutes, cupyden-train re-estimates the cosine's length at every validation so
#: it ends with the time (Li et al., ICLR 2020). Fine-tuning overfits the 459 training
#: patches after about 2000 steps (session 9: over 7023 steps in 240 s the training loss
#: kept falling while the validation loss rose from 0.98308 to 0.98348), so the best
#: validation checkpoint is kept (the default --keep best): the annealed end (--keep last)
#: scored +6.72 dB on the held-out rows, the best checkpoint of a 90 s budget +7.54 dB
#: (+7.78 dB with --tta 8). Session 10: --resplit (a new count split of every batch, drawn
#: on the GPU) removes the overfitting (the validation loss stays at its minimum to the
#: end) and allows lr 2e-4: +7.88 dB (+7.98 with --tta 8) at 34.4 steps/s; with lr 1e-4
#: +7.75 (+7.86), and lr 5e-5 without --resplit +7.54 (+7.75) (benchmarks/RESULTS.md,
#: session 10). Session 11: validating, keeping and denoising with the weights' moving
#: average (--ema 0.9995, about the last 2000 of ~10000 steps) scored +8.51 dB (+8.80 with
#: --tta 8), its validation loss still falling at the end of the cosine; --ema 0.999 +7.94
#: (+8.04), best at step 5000 of 10152; the recipe as committed, with this session's faster
#: float16 steps (11310 steps), +8.78 (+8.89); topaz-scratch +7.72 (+7.89). Session 12, on
#: a machine with 16 host cores instead of 32: "auto" +7.91 (+8.00) in 9243 steps (the
#: loader's host thread). Session 13, the training patches held on the GPU: "auto" +8.81
#: (+8.93) in 15456 steps with 16 host cores, +8.80 (+8.92) in 16679 with 32. "auto" is cupyden-train's own choice (on a GPU with cuDNN:
#: topaz-finetune, or topaz-scratch without topaz-em; its log's first line says which),
#: with the protocol's options alone. "unet-fp16" and "defaults" are the plain
#: recipe with options of their own.
RECIPES = {name: "--recipe %s %s %s" % (name, recipes.options_text(name), PROTOCOL)
           for name in ("topaz-finetune", "topaz-scratch")}
RECIPES.update({
    "auto": "--recipe auto " + PROTOCOL,
    "unet-fp16": "--recipe plain --arch unet --precision fp16 --patch-size 256 --stride 64 "
                 "--batch-size 32 --lr-schedule cosine --warmup 100 --steps 20000 "
                 "--val-fraction 0.1 --holdout-fraction 0 --val-every 500 --val-patches 128",
    "defaults": "--recipe plain --steps 1000000 --val-fraction 0.1 --holdout-fraction 0 "
                "--val-every 500",
})


def override(recipe, extra):
    """The recipe's options with those of ``extra`` replacing the same options (docopt
    refuses an option given twice), then extra's. Tokens: ``--name [value]``."""
    names = {t for t in extra if t.startswith("--")}
    kept, skip = [], False
    for t in recipe:
        if t.startswith("--"):
            skip = t in names
        if not skip:
            kept.append(t)
    return kept + extra


def main():
    args = docopt(__doc__)
    if args["--list"]:
        for k, v in RECIPES.items():
            print("%s: %s" % (k, v))
        return
    out = args["-o"]
    os.makedirs(out, exist_ok=True)
    mic = read_mrc(args["MRC"], ndim=2)
    raw = numpy.asarray(mic.data, numpy.float32)
    H = raw.shape[0]
    train_mrc = os.path.join(out, "train_rows.mrc")
    write_mrc(train_mrc, raw[:SPLIT_ROW], mic.pixel_size)
    a, b, _ = count_split(mic.data, mic.pixel_size, DOSE, seed=0)
    held_a = os.path.join(out, "heldout_A.mrc")
    write_mrc(held_a, a[SPLIT_ROW:], mic.pixel_size)
    A, B = a[SPLIT_ROW:], b[SPLIT_ROW:]

    opts = override(shlex.split(RECIPES[args["--recipe"]]), shlex.split(args["--extra"] or ""))
    cmd = [train_mrc, "--pairs", "count-split", "--dose", str(DOSE), "--max-minutes",
           args["--minutes"], "-d", "0", "-o", out, "--no-progress"] + opts
    print("cupyden-train " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    assert train.main(cmd) == 0
    t_train = time.perf_counter() - t0
    trained = load_checkpoint(os.path.join(out, "model.h5"))["config"]
    precision = trained["precision"]                  # denoise as it trained (auto: chosen)
    rows = {}

    def score(name, model, precision, folder, extra=()):
        den_dir = os.path.join(out, folder)
        assert denoise.main([model, held_a, "-o", den_dir, "-d", "0", "--no-progress",
                             "--precision", precision] + list(extra)) == 0
        den = read_mrc(os.path.join(den_dir, "heldout_A.mrc"), ndim=2).data
        rows[name] = halves_gain(den, A, B)
        return den

    den = score("cupyden " + args["--recipe"], os.path.join(out, "model.h5"), precision,
                "den_cupyden")
    if args["--tta"] != "1":
        score("cupyden %s, --tta %s" % (args["--recipe"], args["--tta"]),
              os.path.join(out, "model.h5"), precision, "den_cupyden_tta",
              ["--tta", args["--tta"]])
    rows["raw"] = halves_gain(A, A, B)
    sa, sb = a[SPLIT_ROW - 512:SPLIT_ROW], b[SPLIT_ROW - 512:SPLIT_ROW]   # a training strip
    sigma = max(SIGMAS, key=lambda s: halves_gain(gaussian_lowpass(sa, s), sa, sb)["cc_denoised"])
    rows["best Gaussian (sigma %.3g px)" % sigma] = halves_gain(gaussian_lowpass(A, sigma), A, B)
    import importlib.util
    if importlib.util.find_spec("topaz") is not None and args["--pretrained"] != "none":
        score("topaz:unet pretrained (in cupyden, %s)" % args["--pretrained"], "topaz:unet",
              args["--pretrained"], "den_topaz_unet")
    history = read_history(os.path.join(out, "history.csv"))
    print("\nK2 protocol, held-out rows [%d, %d), %s, training %.0f s wall (budget %s min)"
          % (SPLIT_ROW, H, args["--recipe"], t_train, args["--minutes"]))
    print("| method on the held-out A half | corr(f(A), B) | SNR gain |")
    print("|---|---|---|")
    for name, g in rows.items():
        print("| %s | %.4f | %+.2f dB |" % (name, g["cc_denoised"], g["gain_db"]))
    with open(os.path.join(out, "k2_protocol.json"), "w") as f:
        json.dump({"recipe": args["--recipe"], "trained_recipe": trained.get("recipe"),
                   "options": opts, "tta": int(args["--tta"]),
                   "train_seconds": t_train, "rows": rows, "history": history}, f, indent=1)
    report.before_after(fourier_bin(A, 4), fourier_bin(den, 4), args["--panel"],
                        ("held-out A half, raw (shown binned 4x)",
                         "cupyden %s, %+.1f dB" % (args["--recipe"],
                                                   rows["cupyden " + args["--recipe"]]["gain_db"])),
                        mic.pixel_size * 4)
    print("panel: %s" % args["--panel"])


if __name__ == "__main__":
    main()
