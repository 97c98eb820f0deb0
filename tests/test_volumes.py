"""Tomograms: the 3-D U-Net and its reflection padding, the N-D tiler (tiled == untiled),
3-D patch stores and augmentation, Noise2Noise on even/odd volumes, RELION 5 tomogram STAR
files."""

import numpy
import pytest

from cupyden.backend import to_host
from cupyden.fourier import rfft_k2
from cupyden.functional.volume import (reflection_pad3d_backward, reflection_pad3d_forward,
                                       reflection_pad3d_naive)
from cupyden.infer import denoise_array, halo_for, plan_boxes, plan_tiles, pixels_processed, \
    volume_tile
from cupyden.io.patches import normalization
from cupyden.models import UNet3d, build_model

from conftest import rel


def smooth3(shape, seed=0, scale=20.0):
    """A smooth random volume (Gaussian low-pass of white noise), float32."""
    rng = numpy.random.default_rng(seed)
    f = numpy.fft.rfftn(rng.standard_normal(shape))
    return (numpy.fft.irfftn(f * numpy.exp(-rfft_k2(shape) / 0.004), s=shape, axes=(0, 1, 2)) * scale
            ).astype(numpy.float32)


# ----------------------------------------------------------------------------- ops, model

def test_reflection_pad3d_matches_its_loop_reference(xp):
    x = numpy.random.default_rng(0).standard_normal((2, 3, 4, 5, 6))
    pads = ((1, 3), (0, 2), (4, 1))
    y, cache = reflection_pad3d_forward(xp.asarray(x), pads)
    assert y.shape == (2, 3, 8, 7, 11)
    assert rel(y, reflection_pad3d_naive(x, pads)) == 0
    assert rel(y, numpy.pad(x, ((0, 0), (0, 0)) + pads, mode="reflect")) == 0
    # backward is the adjoint: <pad(x), dy> = <x, pad^T(dy)>
    dy = numpy.random.default_rng(1).standard_normal(y.shape)
    dx = to_host(reflection_pad3d_backward(xp.asarray(dy), cache))
    assert abs((to_host(y) * dy).sum() - (x * dx).sum()) < 1e-9 * abs((x * dx).sum())


def test_unet3d_receptive_field_and_any_size(xp):
    model = UNet3d(base=4, depth=3, seed=1).to(xp, numpy.float32).eval()
    assert model.receptive_field == 96 and halo_for(model) == 48
    assert UNet3d().receptive_field == 96 and UNet3d().n_parameters() == 1459585
    x = xp.asarray(numpy.random.default_rng(0).standard_normal((2, 1, 9, 13, 8)), numpy.float32)
    assert model.forward(x).shape == (2, 1, 9, 13, 8)
    assert build_model(model.config()).config() == model.config()
    with pytest.raises(ValueError, match="at least 8"):
        model.forward(x[:, :, :5])


# ----------------------------------------------------------------------------- the tiler

def test_plan_boxes_in_2d_is_plan_tiles():
    tiles = plan_tiles(150, 173, 48, 12, 8)
    boxes = plan_boxes((150, 173), 48, 12, 8)
    assert [(t.y0, t.y1, t.x0, t.x1, t.cy0, t.cy1, t.cx0, t.cx1) for t in tiles] == \
        [b.window[0] + b.window[1] + b.core[0] + b.core[1] for b in boxes]
    assert pixels_processed(tiles) == pixels_processed(boxes)


def test_tiled_volume_equals_one_whole_volume_pass(xp):
    """Tiles of 8^3 voxels with the receptive field's halo give the whole-volume pass of
    the volume mirrored by the halo, with one normalisation for the volume (odd sides: the
    last tiles and the whole volume are padded to the pooling grid inside the network)."""
    model = UNet3d(base=2, depth=1, seed=3).to(xp, numpy.float32).eval()
    reference = UNet3d(base=2, depth=1, seed=3).to(numpy, numpy.float32).eval()
    volume = smooth3((14, 19, 17), seed=2) + 7
    tiled, stats = denoise_array(model, volume, xp, tile=8)
    assert stats["tiles"] == 2 * 3 * 3 and stats["halo"] == halo_for(model) == 10
    norm, h = normalization(volume), halo_for(model)
    padded = numpy.pad(norm.apply(volume), h, mode="reflect")
    whole = norm.invert(reference.forward(padded[None, None])[0, 0, h:-h, h:-h, h:-h])
    assert tiled.shape == volume.shape and tiled.dtype == numpy.float32
    assert rel(to_host(tiled), whole) < 1e-5


def test_volume_tile_from_the_memory_budget():
    """A 512 x 1024 x 1024 tomogram, UNet3d in float16: cores of 256^3 in windows of
    352^3 (10 GiB of activations at 6 x 16 channels x 2 bytes per voxel), 32 windows,
    2.6x the voxels; float32: smaller cores."""
    model = UNet3d()
    shape = (512, 1024, 1024)
    tile = volume_tile(shape, model, itemsize=2)
    assert tile == (256, 256, 256)
    boxes = plan_boxes(shape, tile, halo_for(model), model.multiple)
    assert len(boxes) == 32
    assert max(b.pixels for b in boxes) * 6 * 16 * 2 <= 10 << 30
    assert pixels_processed(boxes) / numpy.prod(shape) < 2.7
    t32 = volume_tile(shape, model, itemsize=4)
    assert all(t % 8 == 0 for t in t32) and t32[0] < 256


def test_volume_normalisation_samples_large_volumes():
    """Above VOLUME_SAMPLES voxels the statistic comes from a regular subsample."""
    from cupyden.io import patches
    v = numpy.random.default_rng(0).standard_normal((8, 64, 64)).astype(numpy.float32)
    whole = normalization(v)
    old = patches.VOLUME_SAMPLES
    try:
        patches.VOLUME_SAMPLES = 4096
        sampled = normalization(v)
    finally:
        patches.VOLUME_SAMPLES = old
    assert sampled != whole
    assert abs(sampled.loc - whole.loc) < 0.1 and abs(sampled.scale / whole.scale - 1) < 0.1
