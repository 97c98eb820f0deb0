"""The border of denoised images: the networks' zero padding against the mirrored halo.

Usage:
  border_frame.py MODEL [--tile PX]

Options:
  --tile PX   Tile core size of cupyden's inference, in pixels [default: 2048]

MODEL is a cupyden model.h5 trained on the embedded K2 crop (the default `cupyden-train`,
which bins by 4). Prints, for the binned count sum of the crop and for flat Poisson noise
of its mean, the standard deviation of the outermost rows and columns (k = 0, 1, 2 from
each side) over the median of the interior's, denoised two ways: one pass with the
networks' zero padding at the image border (cupyden before issue 20), and
``infer.denoise_array`` (the image mirrored into the halo); then the held-out SNR gain of
the default run (rows 384:512 of the binned crop's A half, judged by the B half; DATA.md's
metric) both ways. CPU (NumPy); quality only, no time is measured.
"""

import numpy
from docopt import docopt

from cupyden.data import k2_crop
from cupyden.infer import denoise_array
from cupyden.io.checkpoint import load_checkpoint
from cupyden.io.pairs import count_split
from cupyden.io.patches import fourier_bin, normalization
from cupyden.metrics import halves_gain
from cupyden.models import build_model


def border_ratios(image, k=3):
    """std of row/column j = 0..k-1 from each side over the median interior std."""
    rows, cols = image.std(axis=1), image.std(axis=0)
    interior = numpy.median(numpy.concatenate([rows[16:-16], cols[16:-16]]))
    sides = {"top": rows[:k], "bottom": rows[::-1][:k], "left": cols[:k], "right": cols[::-1][:k]}
    return {s: v / interior for s, v in sides.items()}


def main():
    args = docopt(__doc__)
    ck = load_checkpoint(args["MODEL"])
    model = build_model(ck["config"]["model"]).to(numpy, numpy.float32).eval()
    model.load_state(ck["weights"])
    tile = int(args["--tile"])
    mic = k2_crop()
    a, b, _ = count_split(mic.data, mic.pixel_size, mic.dose, ck["config"]["seed"], "crop")
    f = ck["config"].get("bin", 4)
    a, b = fourier_bin(a, f), fourier_bin(b, f)
    flat = numpy.random.default_rng(5).poisson((a + b).mean(), a.shape).astype(numpy.float32)

    def zero_padded(img, norm):
        return norm.invert(model.forward(norm.apply(img)[None, None])[0, 0])

    def mirrored(img, norm):
        return denoise_array(model, img, numpy, tile, norm=norm)[0]

    print("std of the outermost rows/columns (k = 0, 1, 2) over the interior's")
    for label, img in (("K2 crop, count sum binned %dx" % f, a + b), ("flat Poisson noise", flat)):
        norm = normalization(img)
        for how, fn in (("raw", lambda i, n: i), ("zero padding", zero_padded),
                        ("mirrored halo", mirrored)):
            r = border_ratios(fn(img, norm))
            print("  %-32s %-14s %s" % (label, how, "  ".join(
                "%s %s" % (s, " ".join("%.2f" % x for x in v)) for s, v in r.items())))
    split = int(round(a.shape[0] * (1 - ck["config"].get("val_fraction", 0.25))))
    norm = normalization(a, ck["config"].get("normalize", "robust"))
    for how, fn in (("zero padding", zero_padded), ("mirrored halo", mirrored)):
        g = halves_gain(fn(a[split:], norm), a[split:], b[split:])
        print("held-out rows %d:%d, %s: corr(A, B) %.4f, corr(f(A), B) %.4f, SNR gain %+.2f dB"
              % (split, a.shape[0], how, g["cc_raw"], g["cc_denoised"], g["gain_db"]))


if __name__ == "__main__":
    main()
