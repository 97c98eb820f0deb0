"""Sources of two noisy views of one signal (Noise2Noise pairs; Lehtinen et al. 2018).

(a) a movie -> even/odd frame sums (``cupyden.io.movies``);
(b) even/odd half micrographs in two folders, paired by basename (:func:`pair_halves`);
(c) one counting-mode micrograph -> binomial count split (:func:`count_split`);
(d) a clean image + synthetic noise, for supervised training (:func:`synthetic_pair`).

The count split: if a pixel holds n ~ Poisson(lambda) electrons, drawing
a ~ Binomial(n, 1/2) and b = n - a gives a ~ Poisson(lambda/2) and b ~ Poisson(lambda/2),
independent (the "thinning" property of the Poisson distribution). So one exposure gives
two images with the same signal and independent noise, which is all Noise2Noise needs.
It holds only for Poisson-like noise, hence the checks in :func:`poisson_check`.
"""

import glob
import os
import re
from typing import NamedTuple

import numpy

from ..backend import get_array_module, to_host
from ..errors import InputError
from ..kernels.splitmix import mix64
from .mrc import read_mrc
from .tiff import image_shape

#: Noise power in [0.1, 0.3] Nyquist over that in [0.6, 0.95] Nyquist must lie in this
#: range: the K2 micrograph gives 0.99; a Gaussian blur of sigma 0.5 px gives 2.5.
FLATNESS_RANGE = (0.5, 2.0)
#: The scale from the dose and the one from high-frequency variance/mean must agree to this
#: factor (K2: 101.5 and 103.9 values per electron).
SCALE_AGREEMENT = 4.0 / 3.0
#: Largest share of negative pixels a counting-mode micrograph may have (counts are >= 0;
#: the K2 micrograph has none; a little dark-reference noise is tolerated).
NEGATIVE_SHARE = 0.01


def band_powers(image):
    """Mean noise power in a low band [0.1, 0.3] and a high band [0.6, 0.95] of Nyquist.

    Power is |FFT(x - mean)|^2 / (H W), so white noise of variance s^2 gives s^2 in every
    band (Parseval).

    Parameters
    ----------
    image : array (H, W), numpy or cupy (computed where it lives)

    Returns
    -------
    (float, float)
        Low-band and high-band power, in squared image units.
    """
    xp = get_array_module(image)
    x = xp.asarray(image, numpy.float64)
    x = x - x.mean()
    H, W = x.shape
    power = xp.abs(xp.fft.rfft2(x)) ** 2 / (H * W)
    # radius in units of Nyquist on the rfft2 grid (shape (H, W // 2 + 1))
    r = xp.hypot(xp.asarray(numpy.fft.fftfreq(H))[:, None],
                 xp.asarray(numpy.fft.rfftfreq(W))[None, :]) / 0.5
    return float(power[(r > 0.1) & (r < 0.3)].mean()), float(power[(r > 0.6) & (r < 0.95)].mean())


class CountScale(NamedTuple):
    """How image values map to electron counts.

    scale : float
        Image units per electron (the value used).
    scale_hf : float
        From the data: high-band noise power / mean (a Poisson variable has variance =
        mean, so s^2 lambda / (s lambda) = s).
    scale_dose : float or None
        mean / (dose * pixel_size^2), when the dose is known.
    flatness : float
        Low-band / high-band noise power (1 for white noise).
    """
    scale: float
    scale_hf: float
    scale_dose: object
    flatness: float


def poisson_check(image, pixel_size, dose=None, name="micrograph"):
    """Estimate the value-per-electron scale and refuse noise that is not Poisson-like.

    Parameters
    ----------
    image : array (H, W), numpy or cupy
        A counting-mode micrograph (gain-corrected values are fine).
    pixel_size : float
        Å/px.
    dose : float or None
        e⁻/Å² (from the header or the user); None uses the data alone.
    name : str
        For messages.

    Returns
    -------
    CountScale

    Raises
    ------
    InputError
        Non-positive mean or more than ``NEGATIVE_SHARE`` negative pixels (not counts: e.g.
        a normalised image, or unsigned bytes stored as MRC mode 0, signed int8, whose
        values above 127 read as negative), noise power far from flat (spatially
        correlated noise, as on integrating detectors or after filtering), or a dose-based
        scale that disagrees with the data (variance/mean of the counts far from 1).
    """
    xp = get_array_module(image)
    mean = float(xp.mean(image))
    negative = float(xp.mean(image < 0))
    if mean <= 0 or negative > NEGATIVE_SHARE:
        raise InputError(
            "%s: mean value %g, %.1f%% of the pixels negative: not electron counts, which a "
            "count split needs (an int8 file may hold unsigned bytes read as signed: convert "
            "it; else use --pairs halves or movie)" % (name, mean, 100 * negative))
    low, high = band_powers(image)
    flatness = low / high
    if not FLATNESS_RANGE[0] <= flatness <= FLATNESS_RANGE[1]:
        raise InputError(
            "%s: noise is not Poisson-like: its power at 0.1-0.3 Nyquist is %.2fx that at "
            "0.6-0.95 Nyquist (white shot noise gives ~1; allowed %g-%g), so a count split "
            "would not give independent halves; use even/odd frame sums or half micrographs"
            % (name, flatness, FLATNESS_RANGE[0], FLATNESS_RANGE[1]))
    scale_hf = high / mean
    scale_dose = None
    if dose:
        if pixel_size <= 0:
            raise InputError("%s: the pixel size is unknown (none in the header); pass "
                             "--angpix (Å/px)" % name)
        scale_dose = mean / (dose * pixel_size ** 2)
        ratio = scale_hf / scale_dose
        if not 1 / SCALE_AGREEMENT <= ratio <= SCALE_AGREEMENT:
            raise InputError(
                "%s: counts from the dose (%.3g e/A^2 -> %.3g values per electron) have "
                "variance/mean %.2f, far from 1: the noise is not Poisson-like, or the dose "
                "is wrong (check --dose)" % (name, dose, scale_dose, ratio))
    return CountScale(scale_dose if scale_dose else scale_hf, scale_hf, scale_dose, flatness)


def count_split(image, pixel_size, dose=None, seed=0, name="micrograph"):
    """Split one counting-mode micrograph into two halves with independent Poisson noise.

    counts = round(x / scale) (values are not exact multiples of the scale after gain
    correction, so they are rounded to counts first); a ~ Binomial(counts, 1/2);
    b = counts - a.

    The rounding and the check run where ``image`` lives (numpy or cupy); the binomial
    draw is NumPy's ``default_rng(seed)`` on the host on every device, so a seed gives the
    same halves on a CPU and a GPU (and as cupyden always drew them).

    Parameters
    ----------
    image : array (H, W), numpy or cupy
    pixel_size : float
        Å/px.
    dose : float or None
        e⁻/Å².
    seed : int
        Seed of the binomial draws.
    name : str

    Returns
    -------
    a, b : float32 arrays (H, W) of the image's array module
        The halves, in electron counts; a + b equals the rounded counts exactly.
    info : CountScale

    Raises
    ------
    InputError
        See :func:`poisson_check`; also counts that round to one value everywhere.
    """
    xp = get_array_module(image)
    info = poisson_check(image, pixel_size, dose, name)
    counts = xp.clip(xp.rint(xp.asarray(image, numpy.float64) / info.scale), 0, None)
    counts = counts.astype(numpy.int64)
    lo, hi = int(counts.min()), int(counts.max())
    if lo == hi:
        raise InputError("%s: every pixel rounds to %d electrons at %.4g values per electron: "
                         "nothing to split (check --dose)" % (name, lo, info.scale))
    a = xp.asarray(numpy.random.default_rng(seed).binomial(to_host(counts), 0.5))
    return a.astype(numpy.float32), (counts - a).astype(numpy.float32), info


_HALF_TAG = re.compile(r"[_.-](even|odd|evn|half1|half2)$", re.IGNORECASE)


def half_key(path):
    """A half's basename without its extension and its half tag (``_even``, ``_odd``,
    ``_EVN``, ``_ODD``, ``_half1``, ``_half2``): the name the two halves share."""
    base = os.path.splitext(os.path.basename(path))[0]
    return _HALF_TAG.sub("", base)


def expand(patterns, star_columns=("rlnMicrographName",)):
    """Files named by folders, globs, paths or STAR files (sorted, .mrc in folders).

    A ``.star`` file stands for the files it lists (:func:`cupyden.io.star.read_star_paths`:
    the first of ``star_columns`` present, paths resolved as RELION does).

    Parameters
    ----------
    patterns : str or list of str
    star_columns : sequence of str
        STAR columns to read paths from (``("rlnMicrographMovieName",)`` for movies).

    Returns
    -------
    list of str

    Raises
    ------
    InputError
        A pattern matches nothing, or a STAR file cannot be read.
    """
    return [p for _, paths in expand_sources(patterns, star_columns) for p in paths]


def expand_sources(patterns, star_columns=("rlnMicrographName",)):
    """As :func:`expand`, keeping where each file came from.

    Returns
    -------
    list of (str or None, list of str)
        (the STAR file, or None for a folder, glob or path; the files it names).
    """
    from .star import read_star_paths

    out = []
    for p in ([patterns] if isinstance(patterns, str) else patterns):
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.mrc")))
        else:
            found = sorted(glob.glob(p)) or ([p] if os.path.exists(p) else [])
        if not found:
            raise InputError("%s: matches no file" % p)
        files = [f for f in found if not f.lower().endswith(".star")]
        if files:
            out.append((None, files))
        out.extend((f, read_star_paths(f, star_columns)) for f in found if f not in files)
    return out


def pair_halves(even, odd, volumes=False):
    """Pair even and odd half micrographs (or half tomograms) by basename.

    A trailing ``_even``/``_odd`` (or ``_EVN``, ``_ODD``, ``_half1``, ``_half2``) before
    the extension is ignored, so ``mic01_EVN.mrc`` pairs with ``mic01_ODD.mrc``.

    Parameters
    ----------
    even, odd : str or list of str
        Folders, globs or files.
    volumes : bool
        Half tomograms (MRC or TIFF volumes) instead of half micrographs (MRC images).

    Returns
    -------
    list of (str, str)
        (even path, odd path), sorted by name.

    Raises
    ------
    InputError
        Names without a partner (all listed), or pairs whose shapes differ (all listed).
    """
    ev = {half_key(p): p for p in expand(even)}
    od = {half_key(p): p for p in expand(odd)}
    only_even, only_odd = sorted(set(ev) - set(od)), sorted(set(od) - set(ev))
    if only_even or only_odd:
        raise InputError("unmatched half micrographs: even only: [%s]; odd only: [%s]"
                         % (", ".join(only_even), ", ".join(only_odd)))
    pairs = [(ev[k], od[k]) for k in sorted(ev)]
    same = [os.path.basename(e) for e, o in pairs if os.path.samefile(e, o)]
    if same:
        raise InputError("the same files are given as even and odd halves (%s); --odd must "
                         "name the other half of each exposure" % ", ".join(same))
    bad = []
    for e, o in pairs:
        if volumes:
            se, so = image_shape(e), image_shape(o)
        else:
            se = read_mrc(e, ndim=2, mmap=True, check_values=False).data.shape
            so = read_mrc(o, ndim=2, mmap=True, check_values=False).data.shape
        if se != so:
            bad.append("%s %s vs %s %s" % (os.path.basename(e), se, os.path.basename(o), so))
    if bad:
        raise InputError("half micrographs differ in shape: %s" % "; ".join(bad))
    return pairs


def check_distinct_views(a, b, name="micrograph"):
    """Refuse two views that are identical: they carry no independent noise.

    Noise2Noise learns E[b | a]; with b = a it learns the identity, and the even/odd
    correlation of the held-out rows is 1 (an infinite SNR). It happens when one file is
    given as both halves (or a copy of it), a movie's frames are all the same, or no noise
    is added to a clean image.

    Parameters
    ----------
    a, b : arrays (H, W)
    name : str
        For the message.

    Raises
    ------
    InputError
    """
    if a.shape == b.shape and numpy.array_equal(a, b):
        raise InputError("%s: the two views are identical (the same file given as both "
                         "halves, identical frames, or no noise added); training and the even/odd "
                         "SNR need two views with independent noise" % name)


def synthetic_pair(clean, noise="gaussian", level=1.0, seed=0):
    """A noisy input for a clean image, for supervised training.

    Parameters
    ----------
    clean : array (H, W), float
    noise : "gaussian" or "poisson"
        Gaussian: add N(0, level^2) in image units. Poisson: treat ``clean`` (shifted to be
        non-negative and scaled to mean ``level``) as the expected counts per pixel and
        draw Poisson counts; the target is rescaled the same way.
    level : float
        Gaussian sigma, or mean counts per pixel (dose x pixel size^2) for Poisson.
    seed : int

    Returns
    -------
    noisy, target : float32 arrays (H, W)
    """
    rng = numpy.random.default_rng(seed)
    clean = numpy.asarray(clean, numpy.float64)
    if noise == "gaussian":
        return (clean + level * rng.standard_normal(clean.shape)).astype(numpy.float32), \
            clean.astype(numpy.float32)
    if noise == "poisson":
        lam = clean - clean.min()
        lam *= level / max(lam.mean(), 1e-12)
        return rng.poisson(lam).astype(numpy.float32), lam.astype(numpy.float32)
    raise InputError("noise must be 'gaussian' or 'poisson', got %r" % noise)


#: Bits of a random word's index that count the words of one pixel (2^20 words of 64
#: coins: far more electrons than a counting-mode pixel holds).
WORD_BITS = 20


def resplit_keys(seed, epoch, batch, samples):
    """One 64-bit key per sample of a batch (NumPy's SeedSequence of (seed, epoch, batch,
    sample, 1)): the key of :func:`resplit`'s draws.

    Parameters
    ----------
    seed, epoch, batch : int
    samples : iterable of int
        The samples' positions in the (global) batch.

    Returns
    -------
    numpy uint64 array (len(samples),)
    """
    return numpy.array([numpy.random.SeedSequence([seed, epoch, batch, j, 1]).generate_state(
        1, numpy.uint64)[0] for j in samples], numpy.uint64)


def resplit(x, y, loc, scale, keys):
    """Draw a new count split of patch pairs, in place: each pixel's electrons are dealt
    to the two halves anew, so every batch shows the network new noise on the same signal.

    A pair of count-split halves holds n = a + b electrons per pixel; a' ~ Binomial(n,
    1/2), b' = n - a' is another pair with independent Poisson noise of the same means
    (the thinning property in this module's docstring), as valid as the first. Drawing one
    per batch is the data augmentation of recorrupted-to-recorrupted training (Pang et al.
    2021, CVPR, "Recorrupted-to-Recorrupted"; for Poisson noise by binomial splitting,
    Monroy et al. 2025, CVPR, "Generalized Recorrupted-to-Recorrupted"): fine-tuning
    Topaz's network on one K2 micrograph overfitted the fixed split's noise after about
    2000 steps (benchmarks/RESULTS.md, session 9).

    a' is exactly Binomial(n, 1/2): one fair coin per electron, the count of ones among n
    random bits. The bits are counter-based (``kernels.splitmix``): word w of pixel p of
    sample j is mix64(keys[j], p * 2^20 + w), so a GPU kernel (``kernels.resplit``, one
    thread per pixel) and this NumPy code give the same halves, and the draw is a pure
    function of the keys.

    Parameters
    ----------
    x, y : float32 arrays (N, 1, P, P), numpy or cupy (C-contiguous)
        Normalised halves: counts = x * scale + loc (rounded: the store may hold float16).
    loc, scale : float64 arrays (N,), x's array module
        Each patch's normalisation (its micrograph's, ``io.patches.normalization``).
    keys : uint64 array (N,), x's array module
        :func:`resplit_keys`.
    """
    xp = get_array_module(x)
    plane = x[0].size
    if xp is not numpy:
        from ..kernels.resplit import resplit_kernel
        resplit_kernel(keys, loc, scale, numpy.int64(plane), x, y)
        return
    index = numpy.arange(plane, dtype=numpy.uint64).reshape(x.shape[1:]) << numpy.uint64(
        WORD_BITS)
    one = numpy.uint64(1)
    for j in range(x.shape[0]):
        ca = numpy.rint(x[j] * scale[j] + loc[j])
        n = numpy.maximum(ca + numpy.rint(y[j] * scale[j] + loc[j]), 0).astype(numpy.int64)
        a = numpy.zeros(n.shape, numpy.int64)
        for w in range(int(n.max(initial=0) + 63) // 64):
            m = numpy.clip(n - 64 * w, 0, 64).astype(numpy.uint64)     # this word's coins
            lo = numpy.minimum(m, numpy.uint64(32))                     # (shifts stay < 64)
            mask = ((one << lo) - one) | (((one << (m - lo)) - one) << numpy.uint64(32))
            a += popcount64(mix64(keys[j], index | numpy.uint64(w)) & mask)
        x[j] = (a - loc[j]) / scale[j]
        y[j] = (n - a - loc[j]) / scale[j]


def popcount64(v):
    """Ones in each 64-bit word: ``numpy.bitwise_count`` (NumPy >= 2.0), else the SWAR
    sum of bit fields (Warren, "Hacker's Delight", 2nd ed., section 5-1).

    Parameters
    ----------
    v : numpy uint64 array

    Returns
    -------
    numpy array of v's shape, integers in [0, 64]
    """
    if hasattr(numpy, "bitwise_count"):
        return numpy.bitwise_count(v)
    return _popcount64_swar(v)


def _popcount64_swar(v):
    u = numpy.uint64
    v = v - ((v >> u(1)) & u(0x5555555555555555))                   # 2-bit sums
    v = (v & u(0x3333333333333333)) + ((v >> u(2)) & u(0x3333333333333333))   # 4-bit
    v = (v + (v >> u(4))) & u(0x0F0F0F0F0F0F0F0F)                   # 8-bit sums
    with numpy.errstate(over="ignore"):
        return (v * u(0x0101010101010101)) >> u(56)                 # the bytes' total
