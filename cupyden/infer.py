"""Tiled inference on micrographs of any size.

The image is cut into cores of ``tile`` x ``tile`` pixels that cover it exactly; each
core is processed with a halo of ``halo`` pixels on every side, and only the core of each
output is kept. With halo >= (receptive field - 1) / 2 every output pixel sees exactly
the input it would see in one whole-image pass, so tiled output equals untiled output (to
float32 rounding), while memory stays bounded by the tile. Normalisation is one statistic
for the whole micrograph, never per tile.

At the image's own borders the halo is the image mirrored (``numpy.pad`` mode "reflect"),
not the networks' zero padding: with zeros, the outermost 1-2 rows and columns of a
denoised image kept 2-3x the interior's standard deviation (DnCNN-12/32 on the embedded K2
crop and on flat Poisson noise: row 0 at 2.1-3.0x, row 1 at 1.3-1.6x; mirrored: 0.97-1.11x).

Pixels processed: sum over tiles of (core + 2 halo)^2; for a 4096 x 4096 micrograph,
2048 px cores and the DnCNN's 12 px halo give 1.012x the image's pixels plus the mirrored
border, 1.023x in all (Topaz-Denoise's default 1024 px tiles with 500 px padding process
~3x).
"""

import math
from typing import NamedTuple

import numpy

from .backend import get_array_module, to_device, to_host
from .io.patches import normalization


class Tile(NamedTuple):
    """One tile: the input window [y0, y1) x [x0, x1) and its core [cy0, cy1) x [cx0, cx1)."""
    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


def halo_for(model):
    """Halo in pixels: half the receptive field, rounded up to the model's size multiple
    (8 for the U-Net, whose pooling grid must line up with the whole image's)."""
    m = getattr(model, "multiple", 1)
    h = model.receptive_field // 2                   # = ceil((rf - 1) / 2)
    return int(math.ceil(h / m) * m)


def plan_tiles(H, W, tile, halo, multiple=1):
    """Tiles covering an H x W image.

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
    tile = max(multiple, tile // multiple * multiple)
    out = []
    for cy0 in range(0, H, tile):
        for cx0 in range(0, W, tile):
            cy1, cx1 = min(H, cy0 + tile), min(W, cx0 + tile)
            out.append(Tile(max(0, cy0 - halo), min(H, cy1 + halo), max(0, cx0 - halo),
                            min(W, cx1 + halo), cy0, cy1, cx0, cx1))
    return out


def pixels_processed(tiles):
    """Total input pixels over all tiles."""
    return sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles)


#: At most this many pixels per forward pass (whatever --batch-size says): four 2072 px
#: tiles in one pass held 2.2 GB per activation and a 20 GiB memory pool for an 8192 px
#: micrograph on an H200; one tile per pass keeps it under 16 GB.
PASS_PIXELS = 1 << 23


def denoise_array(model, image, xp, tile=2048, batch_size=4, norm=None):
    """Denoise one micrograph.

    The tiles are cut from, and the output assembled in, ``xp``'s memory: an image already
    on the GPU is never copied to the host, and the result stays where the input was.

    Parameters
    ----------
    model : Model
        In evaluation mode, on ``xp``.
    image : numpy or cupy array (H, W)
        Raw values (any real dtype).
    xp : module
        The model's array module.
    tile : int
        Core size in pixels.
    batch_size : int
        Tiles of the same shape per forward pass, at most ``PASS_PIXELS`` pixels.
    norm : Normalization or None
        None computes the robust statistic of the whole image.

    Returns
    -------
    denoised : float32 array (H, W), of the input's array module (NumPy or CuPy)
        In the input's units (normalisation inverted).
    stats : dict
        "tiles", "pixels_processed", "ratio" (processed / image pixels), "halo".
    """
    H, W = image.shape
    norm = norm or normalization(image)
    halo = halo_for(model)
    # (H + 2 halo, W + 2 halo): the image mirrored into a halo at its borders (module
    # docstring); tile windows in these coordinates are the cores widened by the halo
    x = xp.pad(to_device(norm.apply(image), xp), halo, mode="reflect")
    tiles = [t._replace(y0=t.cy0, y1=t.cy1 + 2 * halo, x0=t.cx0, x1=t.cx1 + 2 * halo)
             for t in plan_tiles(H, W, tile, halo, getattr(model, "multiple", 1))]
    out = xp.empty((H, W), numpy.float32)
    groups = {}
    for t in tiles:                                   # batch tiles of equal shape
        groups.setdefault((t.y1 - t.y0, t.x1 - t.x0), []).append(t)
    for shape, group in groups.items():
        per_pass = max(1, min(batch_size, PASS_PIXELS // (shape[0] * shape[1])))
        for i in range(0, len(group), per_pass):
            chunk = group[i:i + per_pass]
            batch = xp.stack([x[t.y0:t.y1, t.x0:t.x1] for t in chunk])[:, None]
            batch = batch.astype(getattr(model, "dtype", x.dtype), copy=False)   # fp16 model
            y = model.forward(batch)                  # (n, 1, h, w), on xp
            for t, yt in zip(chunk, y[:, 0]):
                out[t.cy0:t.cy1, t.cx0:t.cx1] = yt[halo:halo + t.cy1 - t.cy0,
                                                   halo:halo + t.cx1 - t.cx0]
    n = pixels_processed(tiles)
    stats = {"tiles": len(tiles), "pixels_processed": n, "ratio": n / (H * W), "halo": halo}
    den = norm.invert(out).astype(numpy.float32, copy=False)
    return (den if get_array_module(image) is xp else to_host(den)), stats
