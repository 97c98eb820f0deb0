"""Metrics that show whether denoising helped.

Without a clean reference, two halves A and B of one exposure (independent noise, same
signal) give the spectral SNR through their correlation (Frank & Al-Ali 1975, Nature 256:
376): SNR = c / (1 - c) for the Pearson correlation c of A and B. For a denoiser f trained
without B, the correlation of f(A) with the raw B gives the "mixed" SNR, and the denoised
image's SNR is SNR_mixed^2 / SNR_raw (Palovcak & Cheng 2020, eq. 3 of "Noise2Noise
denoising of cryo-EM micrographs"); the gain over a raw half in dB is
10 log10(SNR_denoised / SNR_raw) = 20 log10(SNR_mixed / SNR_raw).

With a clean reference (simulations): PSNR, SSIM (Wang et al. 2004) and the Fourier ring
correlation with its 0.5 and 0.143 crossings (Rosenthal & Henderson 2003). Without one:
radially averaged power spectra, and the correlation of the removed part (raw - denoised)
with the denoised image: a denoiser that removes only noise leaves it near 0.

All functions take host (NumPy) arrays and return Python floats or float64 arrays.
"""

import json
import math

import numpy

from .fourier import rfft_k2
from .losses.ssim import ssim_map


def gaussian_highpass(image, cutoff):
    """Remove spatial frequencies below ``cutoff`` (1/px) with a Gaussian filter.

    H(k) = 1 - exp(-|k|^2 / (2 cutoff^2)) applied in Fourier space (removes the ice
    gradient and the mean before correlating).

    Parameters
    ----------
    image : array (H, W), or a volume (D, H, W)
    cutoff : float
        In 1/px (DATA.md uses 1/200).

    Returns
    -------
    float64 array, the image's shape
    """
    x = numpy.asarray(image, numpy.float64)
    k2 = rfft_k2(x.shape)
    axes = tuple(range(x.ndim))
    return numpy.fft.irfftn(numpy.fft.rfftn(x) * (1 - numpy.exp(-k2 / (2 * cutoff ** 2))),
                            s=x.shape, axes=axes)


def pearson(a, b):
    """Pearson correlation of two arrays of the same shape (float; NaN when either is
    constant)."""
    a = numpy.asarray(a, numpy.float64).ravel()
    b = numpy.asarray(b, numpy.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    norm = numpy.sqrt(numpy.dot(a, a) * numpy.dot(b, b))
    return float(numpy.dot(a, b) / norm) if norm > 0 else float("nan")


def snr_from_cc(c):
    """SNR = c / (1 - c) (Frank & Al-Ali 1975); inf for c = 1 (identical images)."""
    return float("inf") if c >= 1 else c / (1.0 - c)


def halves_gain(denoised_a, raw_a, raw_b, cutoff=1 / 200):
    """How much a denoiser improved half A, judged by the untouched half B.

    Parameters
    ----------
    denoised_a, raw_a, raw_b : arrays (H, W), or volumes (D, H, W)
        f(A), A and B on a region the denoiser was not trained on.
    cutoff : float
        Gaussian high-pass cutoff in 1/px.

    Returns
    -------
    dict
        "cc_raw" = corr(A, B), "cc_denoised" = corr(f(A), B), "snr_raw", "snr_mixed",
        "snr_denoised" = snr_mixed^2 / snr_raw, "gain_db" = 20 log10(snr_mixed / snr_raw).
    """
    hb = gaussian_highpass(raw_b, cutoff)
    cc_raw = pearson(gaussian_highpass(raw_a, cutoff), hb)
    cc_den = pearson(gaussian_highpass(denoised_a, cutoff), hb)
    s_raw, s_mix = snr_from_cc(cc_raw), snr_from_cc(cc_den)
    gain = 20 * numpy.log10(s_mix / s_raw) if s_raw > 0 and s_mix > 0 else float("nan")
    return {"cc_raw": cc_raw, "cc_denoised": cc_den, "snr_raw": s_raw, "snr_mixed": s_mix,
            "snr_denoised": s_mix ** 2 / s_raw if s_raw > 0 else float("nan"),
            "gain_db": float(gain)}


def frc(a, b, n_rings=None):
    """Fourier ring correlation of two images (Saxton & Baumeister 1982; van Heel 1987).

    FRC(r) = Re sum_{k in ring r} F_a(k) F_b(k)* / sqrt(sum |F_a(k)|^2 sum |F_b(k)|^2),
    rings of width one Fourier pixel of the shorter side, from 0 to Nyquist.

    Parameters
    ----------
    a, b : arrays (H, W), same shape
    n_rings : int or None
        Default min(H, W) // 2.

    Returns
    -------
    freq : float64 array (n_rings,)
        Ring centres in cycles per pixel (0 to 0.5); divide by the pixel size for 1/Å.
    curve : float64 array (n_rings,)
    """
    a = numpy.asarray(a, numpy.float64)
    b = numpy.asarray(b, numpy.float64)
    H, W = a.shape
    n = n_rings or min(H, W) // 2
    fa, fb = numpy.fft.rfft2(a - a.mean()), numpy.fft.rfft2(b - b.mean())
    r = numpy.hypot(numpy.fft.fftfreq(H)[:, None], numpy.fft.rfftfreq(W)[None, :])
    ring = numpy.minimum((r / 0.5 * n).astype(int), n)      # ring n holds the corners
    num = numpy.bincount(ring.ravel(), (fa * fb.conj()).real.ravel(), n + 1)[:n]
    pa = numpy.bincount(ring.ravel(), (abs(fa) ** 2).ravel(), n + 1)[:n]
    pb = numpy.bincount(ring.ravel(), (abs(fb) ** 2).ravel(), n + 1)[:n]
    return (numpy.arange(n) + 0.5) / (2 * n), num / numpy.sqrt(pa * pb + 1e-300)


def psnr(estimate, reference, data_range=None):
    """Peak signal-to-noise ratio in dB: 10 log10(R^2 / MSE(estimate, reference)).

    Parameters
    ----------
    estimate, reference : arrays (H, W), same shape and units
    data_range : float or None
        R; None takes max(reference) - min(reference).

    Returns
    -------
    float
        +inf when the images are equal.
    """
    e = numpy.asarray(estimate, numpy.float64)
    r = numpy.asarray(reference, numpy.float64)
    R = float(r.max() - r.min()) if data_range is None else float(data_range)
    mse = float(((e - r) ** 2).mean())
    return float("inf") if mse == 0 else 10 * numpy.log10(R * R / mse)


def ssim(estimate, reference, data_range=None):
    """Mean structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004, IEEE TIP 13:600,
    eq. 13): 11-tap Gaussian window of sigma 1.5 px, K1 = 0.01, K2 = 0.03, over the
    (H - 10) x (W - 10) positions where the window fits (the loss's own map).

    Parameters
    ----------
    estimate, reference : arrays (H, W), H, W >= 11
    data_range : float or None
        R in C1 = (K1 R)^2, C2 = (K2 R)^2; None takes max(reference) - min(reference).

    Returns
    -------
    float in [-1, 1]
    """
    e = numpy.asarray(estimate, numpy.float64)[None, None]
    r = numpy.asarray(reference, numpy.float64)[None, None]
    return float(ssim_map(e, r, data_range)[0].mean())


def frc_resolution(freq, curve, pixel_size, threshold):
    """Resolution (Å) where an FRC curve first falls below ``threshold``.

    The crossing is linearly interpolated between the two rings around it; rings before
    the first one above the threshold are skipped (the curve's lowest rings can be noisy).

    Parameters
    ----------
    freq : array (n,)
        Ring centres in cycles per pixel (:func:`frc`).
    curve : array (n,)
    pixel_size : float
        Å/px.
    threshold : float
        0.5, or 0.143 (Rosenthal & Henderson 2003).

    Returns
    -------
    float
        Å; the Nyquist resolution 2 pixel_size when the curve never falls below, inf when
        it never rises above.
    """
    above = numpy.flatnonzero(curve >= threshold)
    if not len(above):
        return float("inf")
    for i in range(above[0], len(curve) - 1):
        if curve[i + 1] < threshold <= curve[i]:
            t = (curve[i] - threshold) / (curve[i] - curve[i + 1])
            f = freq[i] + t * (freq[i + 1] - freq[i])
            return float(pixel_size / f)
    return float(2 * pixel_size)


def power_spectrum(image, pixel_size, n_rings=None):
    """Radially averaged power spectrum, mean |F(k)|^2 per ring of one Fourier pixel.

    Parameters
    ----------
    image : array (H, W)
    pixel_size : float
        Å/px.
    n_rings : int or None
        Default min(H, W) // 2.

    Returns
    -------
    freq : float64 array (n_rings,)
        Ring centres in 1/Å (0 to Nyquist, 1 / (2 pixel_size)).
    power : float64 array (n_rings,)
        Mean |DFT|^2 / (H W) of the mean-subtracted image per ring (white noise of
        variance v gives v in every ring).
    """
    x = numpy.asarray(image, numpy.float64)
    H, W = x.shape
    n = n_rings or min(H, W) // 2
    f = numpy.fft.rfft2(x - x.mean())
    r = numpy.hypot(numpy.fft.fftfreq(H)[:, None], numpy.fft.rfftfreq(W)[None, :])
    ring = numpy.minimum((r / 0.5 * n).astype(int), n).ravel()
    # weights: the rfft holds columns 1 .. W/2 - 1 once for two conjugate frequencies
    w = numpy.full(f.shape, 2.0)
    w[:, 0] = 1
    if W % 2 == 0:
        w[:, -1] = 1
    p = numpy.bincount(ring, (w * abs(f) ** 2).ravel(), n + 1)[:n]
    c = numpy.bincount(ring, w.ravel(), n + 1)[:n]
    return (numpy.arange(n) + 0.5) / (2 * n) / pixel_size, p / numpy.maximum(c, 1) / (H * W)


def removed_correlation(raw, denoised):
    """Pearson correlation of what the denoiser removed (raw - denoised) with its output.

    Near 0: the removed part looks like noise, independent of the signal kept. Clearly
    positive: structure was removed along with the noise (e.g. over-smoothing).

    Parameters
    ----------
    raw, denoised : arrays (H, W), same units

    Returns
    -------
    float
    """
    raw = numpy.asarray(raw, numpy.float64)
    den = numpy.asarray(denoised, numpy.float64)
    return pearson(raw - den, den)


def to_json(obj):
    """JSON text of metrics, with null for NaN and Inf (bare NaN is not JSON) and plain
    Python numbers for NumPy scalars.

    Parameters
    ----------
    obj : dict, list, tuple, number, str or None (nested)

    Returns
    -------
    str
    """
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, numpy.floating)):
            return float(v) if math.isfinite(v) else None
        if isinstance(v, numpy.integer):
            return int(v)
        return v
    return json.dumps(clean(obj), indent=1, allow_nan=False)


def compare(estimates, pixel_size, clean=None, half_b=None, cutoff=1 / 200):
    """Every applicable metric for several estimates of one micrograph's signal.

    Parameters
    ----------
    estimates : dict of name -> array (H, W)
        Must hold "raw", the noisy input the others were computed from; e.g. "raw",
        "gaussian", "denoised".
    pixel_size : float or None
        Å/px; None (or 0) when unknown: frequencies are then in 1/px and the FRC crossings
        in px (keys "frc_0.5_px", "frc_0.143_px" instead of "frc_0.5_A", "frc_0.143_A").
    clean : array (H, W) or None
        The clean signal in the units of "raw" (simulations): PSNR, SSIM (data range of
        ``clean``), Pearson correlation, FRC and its 0.5 / 0.143 crossings. Against a
        noise-free reference, 0.5 is the crossing comparable with 0.143 between two noisy
        halves (Rosenthal & Henderson 2003).
    half_b : array (H, W) or None
        An independent noisy view of the same signal, never seen by the denoiser:
        correlation after the Gaussian high-pass ``cutoff`` (1/px), and the SNR gain over
        "raw" (:func:`halves_gain`).
    cutoff : float

    Returns
    -------
    metrics : dict of name -> dict of str -> float
    frc_curves : dict of name -> (freq in 1/Å or 1/px, curve), against ``clean`` or else
        ``half_b``
    """
    unit = "A" if pixel_size else "px"
    pixel_size = pixel_size or 1.0
    raw = estimates["raw"]
    metrics, curves = {}, {}
    reference = clean if clean is not None else half_b
    for name, est in estimates.items():
        m = {}
        if clean is not None:
            m["psnr_db"] = psnr(est, clean)
            m["ssim"] = ssim(est, clean)
            m["cc_clean"] = pearson(est, clean)
        if half_b is not None:
            g = halves_gain(est, raw, half_b, cutoff)
            m["cc_half_b"] = g["cc_denoised"]
            m["snr_gain_db"] = g["gain_db"]
        if reference is not None:
            f, c = frc(est, reference)
            curves[name] = (f / pixel_size, c)
            m["frc_0.5_" + unit] = frc_resolution(f, c, pixel_size, 0.5)
            m["frc_0.143_" + unit] = frc_resolution(f, c, pixel_size, 0.143)
        if name != "raw":
            m["removed_correlation"] = removed_correlation(raw, est)
        metrics[name] = m
    return metrics, curves
