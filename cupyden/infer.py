"""Tiled inference on micrographs and tomograms of any size: one tiler for every model.

The image (H, W) or volume (D, H, W) is cut into cores that cover it exactly; each core is
processed with a halo of ``halo`` pixels (voxels) on every side, and only the core of each
output is kept. With halo >= (receptive field - 1) / 2 every output pixel sees exactly
the input it would see in one whole-image pass, so tiled output equals untiled output (to
float32 rounding), while memory stays bounded by the tile. Normalisation is one statistic
for the whole micrograph or volume, never per tile.

At the image's own borders the halo is the image mirrored (``numpy.pad`` mode "reflect"),
not the networks' zero padding: with zeros, the outermost 1-2 rows and columns of a
denoised image kept 2-3x the interior's standard deviation (DnCNN-12/32 on the embedded K2
crop and on flat Poisson noise: row 0 at 2.1-3.0x, row 1 at 1.3-1.6x; mirrored: 0.97-1.11x).

Pixels processed: sum over tiles of (core + 2 halo)^2; for a 4096 x 4096 micrograph,
2048 px cores and the DnCNN's 12 px halo give 1.012x the image's pixels plus the mirrored
border, 1.023x in all (Topaz-Denoise's default 1024 px tiles with 500 px padding process
~3x).

Volumes: the core is chosen from a GPU memory budget (:func:`volume_tile`). For the 3-D
U-Net (``models.UNet3d``: halo 48 voxels, 16 channels at full resolution) and a
512 x 1024 x 1024 tomogram in float16: cores of 256^3, windows of 352^3, 32 windows,
2.6x the tomogram's voxels processed (arithmetic in :data:`TILE_BUDGET`).

Test-time augmentation (``tta``, micrographs only): the mean over flips and rotations g of
g^-1(f(g(x))), the self-ensemble of EDSR+ (Lim et al. 2017, "Enhanced Deep Residual
Networks for Single Image Super-Resolution", section 4.3). A micrograph's noise and signal
have no preferred orientation, so each g gives another estimate whose errors are partly
independent of the others'; the network runs once per transform (``tta`` times the time).
A tomogram is refused: its missing wedge has an orientation (about the tilt axis) that
rotating the volume would change.
"""

import itertools
import math
from typing import NamedTuple

import numpy

from .backend import get_array_module, to_device, to_host
from .io.patches import normalization


class Tile(NamedTuple):
    """One 2-D tile: the input window [y0, y1) x [x0, x1) and its core [cy0, cy1) x [cx0, cx1)."""
    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    @property
    def pixels(self):
        """Input pixels of the window."""
        return (self.y1 - self.y0) * (self.x1 - self.x0)


class Box(NamedTuple):
    """One tile of any number of axes: per axis, the input window [start, stop) and its
    core [start, stop).

    window, core : tuples of (int, int), one per axis
    """
    window: tuple
    core: tuple

    @property
    def pixels(self):
        """Input pixels (voxels) of the window."""
        return int(numpy.prod([b - a for a, b in self.window]))


def halo_for(model):
    """Halo in pixels: half the receptive field, rounded up to the model's size multiple
    (8 for the U-Nets, whose pooling grid must line up with the whole image's)."""
    m = getattr(model, "multiple", 1)
    h = model.receptive_field // 2                   # = ceil((rf - 1) / 2)
    return int(math.ceil(h / m) * m)


def plan_boxes(shape, tile, halo, multiple=1):
    """Tiles covering an array of ``shape`` (any number of axes).

    Along each axis of length n, cores start at 0, t, 2t, ... (t = the tile's side rounded
    down to ``multiple``); the last core ends at n. Each window is its core widened by
    ``halo`` on both sides and clipped to [0, n).

    Parameters
    ----------
    shape : tuple of int
    tile : int or tuple of int
        Core side in pixels, one for all axes or one per axis.
    halo : int
        Pixels of context on each side.
    multiple : int
        Core origins are multiples of this.

    Returns
    -------
    list of Box
        In row-major order of the cores.
    """
    tiles = (tile,) * len(shape) if numpy.isscalar(tile) else tuple(tile)
    axes = []
    for n, t in zip(shape, tiles):
        t = max(multiple, int(t) // multiple * multiple)
        axes.append([((max(0, c0 - halo), min(n, min(n, c0 + t) + halo)), (c0, min(n, c0 + t)))
                     for c0 in range(0, n, t)])
    return [Box(tuple(w for w, _ in combo), tuple(c for _, c in combo))
            for combo in itertools.product(*axes)]


def plan_tiles(H, W, tile, halo, multiple=1):
    """Tiles covering an H x W image (:func:`plan_boxes` in 2-D).

    Parameters
    ----------
    H, W : int
    tile : int
        Core size in pixels (rounded down to ``multiple``).
    halo : int
        Pixels of context on each side.
    multiple : int
        Core origins are multiples of this.

    Returns
    -------
    list of Tile
    """
    return [Tile(b.window[0][0], b.window[0][1], b.window[1][0], b.window[1][1],
                 b.core[0][0], b.core[0][1], b.core[1][0], b.core[1][1])
            for b in plan_boxes((H, W), tile, halo, multiple)]


def pixels_processed(tiles):
    """Total input pixels (voxels) over all tiles (Tile or Box)."""
    return sum(t.pixels for t in tiles)


#: At most this many pixels per forward pass (whatever --batch-size says): four 2072 px
#: tiles in one pass held 2.2 GB per activation and a 20 GiB memory pool for an 8192 px
#: micrograph on an H200; one tile per pass keeps it under 16 GB.
PASS_PIXELS = 1 << 23

#: Bytes of activations one 3-D forward pass may hold (:func:`volume_tile`). A U-Net in
#: evaluation mode keeps no caches; its peak is at the top decoder level, where the skip
#: (c channels), the upsampled-and-concatenated input (3c) and a convolution's output (c)
#: are alive at once, plus cuDNN's workspace: about 6c channels per window voxel, c being
#: the first level's width (16 for UNet3d: 192 bytes per voxel in float16, 384 in
#: float32). 10 GiB: 352^3 windows in float16. With the volume's own buffers on the GPU
#: (the raw input, the mirrored normalised copy, the output: 3 x 2 GiB plus the halo for
#: 512 x 1024 x 1024 float32), the memory pool of a 512 x 1024 x 1024 tomogram stays under
#: 24 GB (``benchmarks/tomo_large.py`` measures it).
TILE_BUDGET = 10 << 30


def first_width(model):
    """Output channels of the model's first convolution (its full-resolution width)."""
    for _, layer in model.named_layers():
        if "w" in layer.params:
            return int(layer.params["w"].shape[0])
    return 1


def volume_tile(shape, model, itemsize=4, budget=TILE_BUDGET):
    """Core sides (D, H, W) for a volume, from a memory budget.

    The largest cube side s (a multiple of the model's ``multiple``) whose window
    (s + 2 halo)^3 holds ``6 x first_width x itemsize`` bytes per voxel within ``budget``
    (:data:`TILE_BUDGET`); then each axis of length n is split into ceil(n / s) equal
    cores (rounded up to the multiple), so no window is a sliver.

    Parameters
    ----------
    shape : (int, int, int)
    model : Model
    itemsize : int
        Bytes per activation value (2 for float16, 4 for float32).
    budget : int
        Bytes.

    Returns
    -------
    tuple of int
    """
    m = getattr(model, "multiple", 1)
    halo = halo_for(model)
    per_voxel = 6 * first_width(model) * itemsize
    side = int((budget / per_voxel) ** (1 / 3)) - 2 * halo
    side = max(m, side // m * m)
    out = []
    for n in shape:
        count = -(-n // side)
        out.append(-(-(-(-n // count)) // m) * m)          # ceil(n / count), up to m
    return tuple(out)


#: Test-time augmentation: for each count, the transforms g = (transpose, flip axes) of
#: the micrograph, applied as flips then transpose; the inverse transposes, then flips.
#: 2: identity and left-right flip; 4: the four flips (both = 180 degree rotation); 8:
#: those and their transposes, the dihedral group D4 of the square (rotations by 90
#: degrees and reflections).
TTA = {1: ((False, ()),),
       2: ((False, ()), (False, (1,))),
       4: tuple((False, f) for f in ((), (0,), (1,), (0, 1)))}
TTA[8] = TTA[4] + tuple((True, f) for _, f in TTA[4])


def _flip(a, axes):
    """``a`` reversed along ``axes`` (a view)."""
    return a[tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(a.ndim))]


def _transform(a, transpose, flips):
    """g(a) for g = (transpose, flips) of :data:`TTA`: the flips, then the transpose (a
    view)."""
    a = _flip(a, flips)
    return a.T if transpose else a


def _untransform(a, transpose, flips):
    """g^-1(a): the transpose, then the flips (a view)."""
    return _flip(a.T if transpose else a, flips)


def _forward_tiles(model, x, xp, tile, halo, batch_size):
    """The network over one normalised image (or volume) in tiles: (float32 output of x's
    shape, in normalised units; the tiles).

    x : array of xp, already normalised; mirrored into a halo here.
    """
    shape = tuple(x.shape)
    # (n + 2 halo) per axis: the image mirrored into a halo at its borders (module
    # docstring); tile windows in these coordinates are the cores widened by the halo
    x = xp.pad(x, halo, mode="reflect")
    boxes = [b._replace(window=tuple((c0, c1 + 2 * halo) for c0, c1 in b.core))
             for b in plan_boxes(shape, tile, halo, getattr(model, "multiple", 1))]
    out = xp.empty(shape, numpy.float32)
    groups = {}
    for b in boxes:                                   # batch tiles of equal shape
        groups.setdefault(tuple(w1 - w0 for w0, w1 in b.window), []).append(b)
    for wshape, group in groups.items():
        per_pass = max(1, min(batch_size, PASS_PIXELS // int(numpy.prod(wshape))))
        for i in range(0, len(group), per_pass):
            chunk = group[i:i + per_pass]
            batch = xp.stack([x[tuple(slice(*w) for w in b.window)] for b in chunk])[:, None]
            batch = batch.astype(getattr(model, "dtype", x.dtype), copy=False)   # fp16 model
            y = model.forward(batch)                  # (n, 1, *window), on xp
            for b, yb in zip(chunk, y[:, 0]):
                out[tuple(slice(*c) for c in b.core)] = yb[tuple(
                    slice(halo, halo + c1 - c0) for c0, c1 in b.core)]
            del batch, y
    return out, boxes


def denoise_array(model, image, xp, tile=None, batch_size=4, norm=None, tta=1):
    """Denoise one micrograph or one volume.

    The tiles are cut from, and the output assembled in, ``xp``'s memory: an image already
    on the GPU is never copied to the host, and the result stays where the input was.

    Parameters
    ----------
    model : Model
        In evaluation mode, on ``xp``; 2-D for (H, W), 3-D for (D, H, W).
    image : numpy or cupy array (H, W) or (D, H, W)
        Raw values (any real dtype).
    xp : module
        The model's array module.
    tile : int, tuple of int or None
        Core side in pixels (voxels), or one per axis; None: 2048 for a micrograph,
        :func:`volume_tile` for a volume.
    batch_size : int
        Tiles of the same shape per forward pass, at most ``PASS_PIXELS`` pixels.
    norm : Normalization or None
        None computes the robust statistic of the whole image.
    tta : int
        Test-time augmentation (micrographs only; module docstring): the mean of
        g^-1(f(g(x))) over the first ``tta`` transforms of :data:`TTA` (1: none, 2: and
        the left-right flip, 4: the four flips, 8: the dihedral group D4), each denoised
        in tiles as without, with the same ``norm``; ``tta`` times the network time (Lim
        et al. 2017, EDSR+'s self-ensemble).

    Returns
    -------
    denoised : float32 array, the image's shape, of the input's array module (NumPy or
        CuPy)
        In the input's units (normalisation inverted).
    stats : dict
        "tiles" and "pixels_processed" (both summed over the ``tta`` passes), "ratio"
        (processed / image pixels), "halo", "tile" (the core sides of the first pass),
        "tta".

    Raises
    ------
    ValueError
        ``tta`` not in :data:`TTA`, or ``tta`` > 1 for a volume.
    """
    if tta not in TTA:
        raise ValueError("tta must be one of %s, got %r" % (sorted(TTA), tta))
    if tta > 1 and image.ndim != 2:
        raise ValueError("test-time augmentation flips and rotates micrographs (H, W); a "
                         "volume's missing wedge forbids it (got shape %s)"
                         % (tuple(image.shape),))
    shape = tuple(image.shape)
    norm = norm or normalization(image)
    halo = halo_for(model)
    if tile is None:
        tile = 2048 if image.ndim == 2 else volume_tile(
            shape, model, numpy.dtype(getattr(model, "dtype", numpy.float32)).itemsize)
    out, boxes = None, []
    # a micrograph's raw values go to the device once and are normalised there (the host's
    # pass over a 4096^2 float32 micrograph took 71 ms on the H200 machine's host, 0.3 ms on
    # the GPU: benchmarks/RESULTS.md, session 13); a volume is
    # normalised on the host, so that the device holds one copy of it (a tomogram's 2 GiB)
    raw = to_device(image, xp) if image.ndim == 2 else image
    for g in TTA[tta]:
        # g of a fresh normalised copy, which the padding in _forward_tiles replaces: one
        # normalised image on the device at a time (see TILE_BUDGET)
        y, b = _forward_tiles(model, _transform(to_device(norm.apply(raw), xp), *g), xp,
                              tile, halo, batch_size)
        if out is None:                               # the identity comes first: y itself
            out = y
        else:
            out += _untransform(y, *g)                # float32 sum of the passes
        boxes += b
        del y
    del raw
    if tta > 1:
        out /= tta
    n = pixels_processed(boxes)
    stats = {"tiles": len(boxes), "pixels_processed": n, "ratio": n / int(numpy.prod(shape)),
             "halo": halo, "tile": tuple(c1 - c0 for c0, c1 in boxes[0].core), "tta": tta}
    out *= norm.scale                                 # norm.invert, in place (no copy of a
    out += norm.loc                                   # volume)
    return (out if get_array_module(image) is xp else to_host(out)), stats
