"""cupyden-evaluate: did denoising help? Metrics, figures and a Markdown report.

Compares the raw micrograph, the best Gaussian low-pass of it (sigma chosen on a
validation strip) and the denoised micrograph, on the rows below that strip:

* with --clean (simulations): PSNR, SSIM and correlation with the clean signal, FRC
  curves and their 0.5 / 0.143 crossings in Å;
* with --half-b (the other half of the exposure: odd frames, or the other count-split
  half, never seen in training): correlation with it after a 1/200 px^-1 Gaussian
  high-pass, and the SNR gain in dB (Frank & Al-Ali 1975; Palovcak & Cheng 2020), FRC
  curves against it;
* always: radially averaged power spectra in 1/Å, and the correlation of the removed part
  (raw - output) with the output (near 0 when only noise was removed).

The Gaussian's sigma minimises the squared difference to --clean, or else to --half-b, on
the validation strip (the top --validation fraction of the rows); without either, no
Gaussian row. A DENOISED smaller than RAW by an integer factor (cupyden-denoise --bin,
which crops each side to a multiple of it) is compared with RAW, --clean and --half-b
Fourier-binned by that factor, at DENOISED's size. Without a pixel size (none in RAW's
header and no --angpix), frequencies are reported in 1/px and FRC crossings in px.

Usage:
  cupyden-evaluate [options] RAW DENOISED
  cupyden-evaluate -h | --help

Arguments:
  RAW                  The noisy micrograph that was denoised (MRC).
  DENOISED             The denoiser's output for it (MRC).

Options:
  --clean MRC          Clean signal of RAW (e.g. cupyden-simulate's NAME_clean.mrc).
  --clean-scale S      Factor bringing --clean to RAW's units; auto matches their means
                       (an even half of a simulated movie expects half the clean image)
                       [default: auto]
  --half-b MRC         Independent noisy view of RAW's signal, unseen in training.
  --history CSV        A training history.csv, for the loss curve.
  --validation F       Fraction of the rows, from the top, used to choose the Gaussian's
                       sigma and left out of every score [default: 0.25]
  --angpix A           RAW's pixel size in Å/px (before binning); auto = from RAW's
                       header [default: auto]
  -o, --output DIR     Output folder (created) [default: evaluation]
  --threads N          CPU threads for cupyden's kernels and BLAS; auto = the CPUs this
                       process may use (affinity, cgroup quota), or OMP_NUM_THREADS or
                       OPENBLAS_NUM_THREADS when set [default: auto]
  -h, --help           Show this help.

Outputs in DIR: report.md (the numbers and the figures), metrics.json, panels.png (raw,
Gaussian, denoised and clean at one contrast: the clean's, else the denoised's),
power_spectra.png, frc.png (with --clean or --half-b), loss_curve.png (with --history).
"""

import os

import numpy

from .. import report
from ..baselines import best_gaussian, gaussian_lowpass
from ..errors import InputError
from ..io.atomic import atomic_output
from ..io.mrc import read_mrc
from ..io.pairs import check_distinct_views
from ..io.patches import bin_factor, fourier_bin
from ..metrics import compare, power_spectrum, to_json
from ..training import read_history
from .common import as_float, output_folder, run


def _matched(path, raw_shape, factor, name):
    """Read an optional image and bin it like RAW; it must have RAW's shape."""
    img = numpy.asarray(read_mrc(path, ndim=2).data, numpy.float64)
    if img.shape != raw_shape:
        raise InputError("%s: shape %s differs from RAW's %s" % (path, img.shape, raw_shape))
    return fourier_bin(img, factor)


def _fmt(v):
    if isinstance(v, float) and not numpy.isfinite(v):
        return str(v)
    return "%.4g" % v


def markdown(metrics, sigma, paths, figures, pixel_size, rows):
    """The report's text (``pixel_size`` None when unknown)."""
    names = list(metrics)
    keys = []
    for m in metrics.values():
        keys += [k for k in m if k not in keys]
    labels = {"psnr_db": "PSNR vs clean (dB)", "ssim": "SSIM vs clean",
              "cc_clean": "corr. with clean", "cc_half_b": "corr. with half B",
              "snr_gain_db": "SNR gain (dB)", "frc_0.5_A": "FRC 0.5 (Å)",
              "frc_0.143_A": "FRC 0.143 (Å)", "frc_0.5_px": "FRC 0.5 (px)",
              "frc_0.143_px": "FRC 0.143 (px)", "removed_correlation": "corr(removed, kept)"}
    out = ["# cupyden evaluation", ""]
    out += ["- %s: `%s`" % (k, v) for k, v in paths.items() if v]
    out += ["- %s; scored on rows %d-%d (the rows above chose the Gaussian)"
            % ("pixel size %.4g Å/px" % pixel_size if pixel_size else
               "pixel size unknown (give --angpix): frequencies in 1/px, FRC crossings in px",
               rows[0], rows[1] - 1)]
    if sigma is not None:
        out.append("- best Gaussian low-pass: sigma %.3g px" % sigma)
    out += ["", "| method | " + " | ".join(labels.get(k, k) for k in keys) + " |",
            "|---" * (len(keys) + 1) + "|"]
    for n in names:
        out.append("| %s | " % n + " | ".join(_fmt(metrics[n][k]) if k in metrics[n] else ""
                                              for k in keys) + " |")
    out.append("")
    out += ["![%s](%s)" % (f, f) for f in figures]
    return "\n".join(out) + "\n"


def _body(args):
    out = args["--output"]
    raw_mic = read_mrc(args["RAW"], ndim=2)
    den_mic = read_mrc(args["DENOISED"], ndim=2)
    raw = numpy.asarray(raw_mic.data, numpy.float64)
    den = numpy.asarray(den_mic.data, numpy.float64)
    try:
        factor = bin_factor(raw.shape, den.shape)
    except InputError:
        raise InputError("DENOISED %s (%dx%d px) is not RAW %s (%dx%d px) binned by an "
                         "integer factor" % (args["DENOISED"], den.shape[1], den.shape[0],
                                             args["RAW"], raw.shape[1], raw.shape[0]))
    angpix = (raw_mic.pixel_size if args["--angpix"] == "auto"
              else as_float(args, "--angpix", 1e-6))
    clean = half_b = None
    if args["--clean"]:
        clean = _matched(args["--clean"], raw.shape, factor, "clean")
    if args["--half-b"]:
        half_b = _matched(args["--half-b"], raw.shape, factor, "half B")
    raw = fourier_bin(raw, factor)
    if half_b is not None:
        check_distinct_views(raw, half_b, "RAW %s and --half-b %s" % (args["RAW"], args["--half-b"]))
    if clean is not None:
        s = args["--clean-scale"]
        clean = clean * (raw.mean() / clean.mean() if s == "auto" else
                         as_float(args, "--clean-scale", 1e-12))
    frac = as_float(args, "--validation", 0.0, 0.9)
    pixel_size = angpix * factor or None                # Å/px after binning; None: unknown
    unit = "Å" if pixel_size else "px"
    H = raw.shape[0]
    v = int(round(frac * H))
    if H - v < 32:
        raise InputError("fewer than 32 rows are left to score; lower --validation")
    target = clean if clean is not None else half_b
    estimates = {"raw": raw}
    sigma = None
    if target is not None and v >= 16:
        sigma, _ = best_gaussian(raw[:v], target[:v])
        estimates["gaussian"] = gaussian_lowpass(raw, sigma)
    estimates["denoised"] = den
    score = {k: e[v:] for k, e in estimates.items()}
    metrics, frcs = compare(score, pixel_size, None if clean is None else clean[v:],
                            None if half_b is None else half_b[v:])
    output_folder(out)
    figures = ["panels.png", "power_spectra.png"]
    shown = dict(score, **({"clean": clean[v:]} if clean is not None else {}))
    limits = report.contrast_limits(shown["clean"] if clean is not None else shown["denoised"])
    report.panels(list(shown.values()), list(shown), os.path.join(out, "panels.png"),
                  pixel_size, limits)
    report.curves([(n,) + power_spectrum(e, pixel_size or 1.0) for n, e in shown.items()],
                  os.path.join(out, "power_spectra.png"), "spatial frequency (1/%s)" % unit,
                  "power", log_y=True, title="radially averaged power spectra")
    if frcs:
        figures.append("frc.png")
        ref = "clean" if clean is not None else "half B"
        report.curves([(n, f, c) for n, (f, c) in frcs.items()], os.path.join(out, "frc.png"),
                      "spatial frequency (1/%s)" % unit, "FRC with %s" % ref,
                      hlines=((0.5, "0.5"), (0.143, "0.143")), title="Fourier ring correlation")
    if args["--history"]:
        if not os.path.isfile(args["--history"]):
            raise InputError("%s: no such history file" % args["--history"])
        figures.append("loss_curve.png")
        report.loss_curve(read_history(args["--history"]), os.path.join(out, "loss_curve.png"))
    paths = {"raw": args["RAW"], "denoised": args["DENOISED"], "clean": args["--clean"],
             "half B": args["--half-b"]}
    text = markdown(metrics, sigma, paths, figures, pixel_size, (v, H))
    with atomic_output(os.path.join(out, "report.md"), ".md") as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    with atomic_output(os.path.join(out, "metrics.json"), ".json") as tmp:
        with open(tmp, "w") as f:
            f.write(to_json({"metrics": metrics, "gaussian_sigma_px": sigma, "bin": factor,
                             "pixel_size_A": pixel_size, "scored_rows": [v, H]}))
    print(text)


def main(argv=None):
    """Entry point of cupyden-evaluate; returns the exit code."""
    return run(__doc__, argv, _body, "cupyden-evaluate")
