"""The main job on the full real K2 micrograph: count-split Noise2Noise, judged on held-out rows.

Usage:
  k2_count_split.py MRC [--minutes M] [--bin B] [--batch-size N] [--patch-size PX] [-o DIR] [--panel PNG]

Options:
  --minutes M       Training budget in minutes [default: 7]
  --bin B           Binning after the split [default: 1]
  --batch-size N    [default: 32]
  --patch-size PX   [default: 128]
  -o DIR            Output folder [default: k2-run]
  --panel PNG       Before/after panel of the held-out rows, shown binned 4x
                    [default: docs/k2_heldout_before_after.png]

DATA.md's protocol: counts = round(x / scale), scale = mean / (47.6 x 0.8538^2); halves
A, B by Binomial(counts, 1/2) with seed 0; train on rows [0, 2816), evaluate on rows
[2816, 3838): corr(f(A), B) against corr(A, B) after a Gaussian high-pass at 1/200 px^-1.
"""

import json
import os

from docopt import docopt

from cupyden import backend, report
from cupyden.cli import train
from cupyden.cli.denoise import load_model
from cupyden.infer import denoise_array
from cupyden.io.mrc import read_mrc
from cupyden.io.pairs import count_split
from cupyden.io.patches import fourier_bin, normalization


def main():
    args = docopt(__doc__)
    out, b = args["-o"], int(args["--bin"])
    rc = train.main([args["MRC"], "--pairs", "count-split", "--val-fraction", "0.2663",
                     "--bin", str(b), "--batch-size", args["--batch-size"],
                     "--patch-size", args["--patch-size"], "--steps", "1000000",
                     "--max-minutes", args["--minutes"], "--val-every", "500",
                     "--val-patches", "512", "-d", "0", "-o", out, "--no-progress", "--overwrite"])
    assert rc == 0
    ev = json.load(open(os.path.join(out, "evaluation.json")))
    print("held-out rows %s: corr(A, B) %.4f, corr(f(A), B) %.4f, SNR gain %+.2f dB"
          % (ev["rows"], ev["cc_raw"], ev["cc_denoised"], ev["gain_db"]))
    # the panel: held-out A half, raw and denoised, both Fourier-binned 4x for display
    mic = read_mrc(args["MRC"], ndim=2)
    a, _, _ = count_split(mic.data, mic.pixel_size, mic.dose, seed=0)
    a = fourier_bin(a, b)
    split = ev["rows"][0]
    model, _ = load_model(os.path.join(out, "model.h5"), backend.select_device("0").xp)
    den, _ = denoise_array(model, a[split:], model.xp, norm=normalization(a))
    d = 4 // b if b < 4 else 1
    report.before_after(fourier_bin(a[split:], d), fourier_bin(den, d), args["--panel"],
                        ("held-out A half, raw", "held-out A half, cupyden DnCNN-12/32"),
                        mic.pixel_size * b * d)
    print("panel: %s" % args["--panel"])


if __name__ == "__main__":
    main()
