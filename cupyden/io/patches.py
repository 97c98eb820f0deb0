"""From micrographs to training patches: binning, one normalisation per micrograph,
patch cutting with a stride, train/validation split, augmentation.
"""

from typing import NamedTuple

import numpy

from ..backend import get_array_module
from ..errors import InputError


class Normalization(NamedTuple):
    """x_normalised = (x - loc) / scale, one statistic per micrograph.

    loc, scale : float
        In image units.
    method : str
        "robust": loc = median, scale = 1.4826 * median absolute deviation (the normal
        distribution's standard deviation; falls back to the standard deviation when the
        MAD is 0). "percentile": loc = mean, scale = 95th percentile of |x - mean| (the
        seed's scaling). "meanstd": loc = mean, scale = standard deviation (Topaz-Denoise's
        scaling, used with its pretrained models).
    """
    loc: float
    scale: float
    method: str

    def apply(self, x):
        """(x - loc) / scale as float32 (a new array)."""
        return ((x - self.loc) * (1.0 / self.scale)).astype(numpy.float32)

    def invert(self, y):
        """y * scale + loc."""
        return y * self.scale + self.loc


#: A volume's statistic comes from at most about this many of its voxels, a regular
#: subsample (every k-th voxel in memory order): the median of all 512 x 1024 x 1024
#: voxels of a tomogram would need a 4 GiB float64 copy and a sort on the GPU.
VOLUME_SAMPLES = 1 << 24


def normalization(image, method="robust", name="the image"):
    """The normalisation statistic of one micrograph or volume.

    Parameters
    ----------
    image : array (H, W) or (Z, H, W)
        A volume of more than ``VOLUME_SAMPLES`` voxels is sampled at every k-th voxel
        (k = ceil(size / VOLUME_SAMPLES)); a micrograph is used whole.
    method : "robust", "percentile" or "meanstd"
    name : str
        The micrograph's name, for the message.

    Returns
    -------
    Normalization

    Raises
    ------
    InputError
        Unknown method, or a constant image.
    """
    xp = get_array_module(image)
    x = image.ravel()
    if image.ndim == 3 and x.size > VOLUME_SAMPLES:
        x = x[::-(-x.size // VOLUME_SAMPLES)]          # (ceil(size / k),) voxels
    x = x.astype(numpy.float64)
    if method == "robust":
        loc = float(xp.median(x))
        scale = 1.4826 * float(xp.median(abs(x - loc)))
        if scale == 0:
            scale = float(x.std())
    elif method == "percentile":
        loc = float(x.mean())
        scale = float(xp.percentile(abs(x - loc), 95))
    elif method == "meanstd":
        loc, scale = float(x.mean()), float(x.std())
    else:
        raise InputError("normalisation must be 'robust', 'percentile' or 'meanstd', got %r"
                         % method)
    if not scale > 0:
        raise InputError("%s: the image is constant: it cannot be normalised" % name)
    return Normalization(loc, scale, method)


def fourier_resize(image, shape):
    """Resample the last two axes by Fourier cropping or zero-padding; values keep their mean.

    Frequencies below the smaller of the two Nyquist limits are kept; none alias.

    Parameters
    ----------
    image : array (..., H, W)
    shape : (int, int)
        New (h, w); pixel size scales by H / h.

    Returns
    -------
    float32 array (..., h, w)
    """
    xp = get_array_module(image)
    H, W = image.shape[-2:]
    h, w = shape
    f = xp.fft.rfft2(image.astype(numpy.float64))
    out = xp.zeros(image.shape[:-2] + (h, w // 2 + 1), f.dtype)
    m, c = min(H, h), min(W // 2, w // 2) + 1
    lo, hi = (m + 1) // 2, m // 2              # rows 0..lo-1 and the last hi rows (FFT order)
    out[..., :lo, :c] = f[..., :lo, :c]
    if hi:
        out[..., h - hi:, :c] = f[..., H - hi:, :c]
    return (xp.fft.irfft2(out, s=(h, w)) * (h * w) / (H * W)).astype(numpy.float32)


def fourier_bin(image, factor):
    """Bin by Fourier cropping: keep frequencies below the new Nyquist, no aliasing.

    The image is cropped to multiples of ``factor`` and resampled to (H/b, W/b) by
    :func:`fourier_resize`; values keep their mean. For a count split, split first and bin
    each half afterwards: the halves stay independent (DATA.md, "Binning").

    Parameters
    ----------
    image : array (H, W)
    factor : int
        1 returns the image unchanged.

    Returns
    -------
    array (H // factor, W // factor), float32
        Pixel size becomes factor times larger.

    Raises
    ------
    InputError
        A side shorter than ``factor``.
    """
    if factor == 1:
        return image
    if min(image.shape[-2:]) < factor:
        raise InputError("an image of %dx%d px cannot be binned by %d; use a smaller --bin"
                         % (image.shape[-1], image.shape[-2], factor))
    H, W = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return fourier_resize(image[:H, :W], (H // factor, W // factor))


def bin_factor(shape, binned_shape):
    """The factor b with which :func:`fourier_bin` turns an image of ``shape`` into one of
    ``binned_shape``: (H // b, W // b) == (h, w) (each side is cropped to a multiple of b
    first, so a 3838 x 3710 micrograph binned by 4 is 959 x 927).

    Parameters
    ----------
    shape, binned_shape : tuples (..., H, W) and (..., h, w)

    Returns
    -------
    int

    Raises
    ------
    InputError
        No integer factor gives ``binned_shape``.
    """
    (H, W), (h, w) = shape[-2:], binned_shape[-2:]
    b = H // h if 0 < h <= H else 0
    if b < 1 or (H // b, W // b) != (h, w):
        raise InputError("an image of %dx%d px is not one of %dx%d px binned by an integer "
                         "factor" % (w, h, W, H))
    return b


def patch_origins(length, patch, stride):
    """Start positions along one axis: 0, stride, ..., plus one flush with the end."""
    if length < patch:
        return []
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def patch_rows(a, b, patch, stride, rows=None):
    """Cut aligned patches from two views, one row of patch origins at a time.

    The patches come in the order of :func:`cut_patches` (origins row by row, left to
    right; for volumes, slab by slab along z, then row by row), so a store can be filled
    while only one row of patches exists: the memory a micrograph's patches need is
    (number of columns) x patch^2 (x patch for volumes), not the whole set.

    Parameters
    ----------
    a, b : arrays (H, W) or (D, H, W), float32, normalised (numpy or cupy; cut where
        they live)
    patch : int
        Side in pixels (voxels).
    stride : int
        Step between patch origins, in pixels, along every axis.
    rows : (int, int) or None
        Only patches lying wholly within rows [r0, r1) (the H axis, y; for a tomogram the
        tilt axis, so each slab holds the whole depth and width).

    Yields
    ------
    pa, pb : arrays (n, 1, patch, patch) (or (n, 1, patch, patch, patch)), float32,
        C-contiguous
        The patches whose origins lie on one row.

    Raises
    ------
    InputError
        The region is smaller than one patch.
    """
    r0, r1 = rows if rows is not None else (0, a.shape[-2])
    ys = [r0 + y for y in patch_origins(r1 - r0, patch, stride)]
    xs = patch_origins(a.shape[-1], patch, stride)
    zs = [None] if a.ndim == 2 else patch_origins(a.shape[0], patch, stride)
    if not ys or not xs or not zs:
        raise InputError("a region of %s px is smaller than one %d px patch; use a "
                         "smaller --patch-size" % ("x".join(map(str, a.shape[:-2] + (
                             r1 - r0, a.shape[-1]))), patch))
    xp = get_array_module(a)
    cols = xp.asarray(numpy.asarray(xs)[:, None] + numpy.arange(patch))     # (n, P)
    for z in zs:
        for y in ys:
            if z is None:
                # band[:, cols] is (P, n, P): the band's rows, then each patch's columns
                yield tuple(xp.ascontiguousarray(
                    v[y:y + patch][:, cols].transpose(1, 0, 2)[:, None], dtype=numpy.float32)
                    for v in (a, b))
            else:
                # block[:, :, cols] is (P, P, n, P): depth, rows, then each patch's columns
                yield tuple(xp.ascontiguousarray(
                    v[z:z + patch, y:y + patch][:, :, cols].transpose(2, 0, 1, 3)[:, None],
                    dtype=numpy.float32) for v in (a, b))


def cut_patches(a, b, patch, stride, rows=None):
    """Cut aligned patches from two views (all rows of :func:`patch_rows` at once).

    Parameters
    ----------
    a, b : arrays (H, W), float32, normalised
    patch : int
        Side in pixels.
    stride : int
        Step between patch origins, in pixels.
    rows : (int, int) or None
        Only patches lying wholly within rows [r0, r1).

    Returns
    -------
    pa, pb : arrays (n, 1, patch, patch), float32, of a's array module

    Raises
    ------
    InputError
        The region is smaller than one patch.
    """
    xp = get_array_module(a)
    parts = list(patch_rows(a, b, patch, stride, rows))
    return xp.concatenate([p[0] for p in parts]), xp.concatenate([p[1] for p in parts])


def augment_draw(rng, n, volume=False, part=slice(None)):
    """The transforms :func:`augment` applies to a batch of ``n`` samples (and
    ``kernels.augment`` on the GPU): one draw of ``rng`` for all of them.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int
        Samples in the drawn batch.
    volume : bool
        Subvolumes (16 transforms) instead of micrograph patches (8).
    part : slice
        The samples kept (a data-parallel rank's share).

    Returns
    -------
    ops : int64 array (len(part),)
        Transform of each sample (0: none).
    swap : bool array (len(part),)
        Whether the two views are exchanged.
    """
    ops = rng.integers(0, 16 if volume else 8, size=n)[part]
    swap = rng.random(n)[part] < 0.5
    return ops, swap


def augment(x, y, rng, batch=None, part=slice(None)):
    """Random flips and 90-degree rotations and a random swap of the two views, per
    sample, in place on host arrays.

    Micrograph patches (N, C, P, P): one of the 8 dihedral transforms of the square.
    Subvolumes (N, C, P, P, P), axes (z, y, x) with y the tilt axis: one of 16 transforms,
    a rotation by k x 90 degrees about y (in the z-x plane, as cryoCARE augments; the
    missing wedge turns with it), then optionally a flip of x and a flip of y.

    Samples are grouped by transform, so each transform is one array operation whatever
    the batch size.

    Parameters
    ----------
    x, y : numpy arrays (N, C, P, P) or (N, C, P, P, P)
    rng : numpy.random.Generator
    batch : int or None
        Draw the transforms for a batch of this many samples (None: N) and apply those of
        ``part`` to x and y: a rank of a data-parallel run then transforms its share of
        the global batch exactly as a one-process run transforms those samples.
    part : slice
        The samples of the drawn batch that x and y hold.
    """
    volume = x.ndim == 5
    ops, swap = augment_draw(rng, x.shape[0] if batch is None else batch, volume, part)
    x[swap], y[swap] = y[swap], x[swap].copy()
    for op in range(1, 16 if volume else 8):
        idx = numpy.nonzero(ops == op)[0]
        if idx.size:
            for a in (x, y):
                if volume:
                    t = numpy.rot90(a[idx], op % 4, axes=(2, 4))   # about y: z-x plane
                    t = t[..., ::-1] if op & 4 else t                # flip x
                    a[idx] = t[:, :, :, ::-1] if op & 8 else t       # flip y
                else:
                    t = numpy.rot90(a[idx], op % 4, axes=(2, 3))
                    a[idx] = t[..., ::-1] if op >= 4 else t
