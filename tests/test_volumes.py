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


# ----------------------------------------------------------------------------- store, loader

def test_subvolume_store_and_loader_round_trip(tmp_path):
    from cupyden.io.patches import cut_patches
    from cupyden.io.store import PatchStore, PatchStoreWriter

    a = smooth3((20, 24, 18), seed=4)
    pa, pb = cut_patches(a, -a, 8, 8, rows=(0, 16))
    # origins: z 0, 8, 12; y 0, 8; x 0, 8, 10
    assert pa.shape == (3 * 2 * 3, 1, 8, 8, 8)
    assert numpy.array_equal(pa[1, 0], a[0:8, 0:8, 8:16])
    assert numpy.array_equal(pa[-1, 0], a[12:20, 8:16, 10:18])
    path = str(tmp_path / "sub.h5")
    with PatchStoreWriter(path, 8, attrs={"pairs": "halves"}, ndim=3) as w:
        w.append("train", pa, pb)
        w.append("val", pa[:2], pb[:2])
    store = PatchStore(path)
    assert store.ndim == 3 and store.sample_shape == (1, 8, 8, 8)
    x, y = store.read("train", [4, 0])
    assert numpy.array_equal(x[1], pa[0]) and numpy.array_equal(y[0], pb[4])
    loader = store.loader(4, numpy, seed=1)
    try:
        bx, by = next(loader)
        assert bx.shape == (4, 1, 8, 8, 8)
        assert numpy.array_equal(bx, -by)                  # pairs stay aligned
    finally:
        loader.close()
        store.close()


def test_volume_augmentation_rotates_about_the_tilt_axis():
    """16 distinct transforms (k x 90 degrees about y, x flip, y flip), the same on both
    views; a sample's y profile is kept or reversed (y stays the tilt axis)."""
    from cupyden.io.patches import augment

    rng = numpy.random.default_rng(0)
    base = rng.standard_normal((1, 1, 6, 6, 6))
    x = numpy.repeat(base, 256, axis=0)
    y = x.copy()
    augment(x, y, numpy.random.default_rng(3))
    assert numpy.array_equal(x, y)                          # the same transform, swap or not
    distinct = {x[i].tobytes() for i in range(len(x))}
    assert len(distinct) == 16
    profile = base[0, 0].sum(axis=(0, 2))                   # sum over z and x, per y
    for i in range(len(x)):
        p = x[i, 0].sum(axis=(0, 2))
        assert numpy.allclose(p, profile) or numpy.allclose(p, profile[::-1])


# ----------------------------------------------------------------------------- train, denoise

def _write_halves(folder, shape=(24, 48, 24), seed=0, tiff_odd=False):
    """Even and odd half tomograms: one smooth volume plus independent noise each."""
    import mrcfile
    import tifffile

    folder.mkdir(exist_ok=True)
    rng = numpy.random.default_rng(seed)
    clean = smooth3(shape, seed=seed + 1, scale=60)
    paths = []
    for half in ("half1", "half2"):
        data = (clean + rng.standard_normal(shape)).astype(numpy.float32)
        if half == "half2" and tiff_odd:
            path = str(folder / ("TS_01_%s.tif" % half))
            tifffile.imwrite(path, data, imagej=True)
        else:
            path = str(folder / ("TS_01_%s.mrc" % half))
            with mrcfile.new(path) as m:
                m.set_data(data)
                m.voxel_size = 13.5
        paths.append(path)
    return paths


TINY = ["--patch-size", "8", "--batch-size", "2", "--steps", "4", "--val-every", "2",
        "--val-fraction", "0.25", "--holdout-fraction", "0.25", "--base", "2", "-d", "-1",
        "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cupyden-train --pairs halves on an MRC even and a TIFF odd half tomogram."""
    from cupyden.cli import train

    tmp = tmp_path_factory.mktemp("tomo")
    even, odd = _write_halves(tmp / "halves", tiff_odd=True)
    out = str(tmp / "run")
    assert train.main(["--pairs", "halves", even, "--odd", odd, "-o", out] + TINY) == 0
    return tmp, even, odd, out


def test_train_on_half_tomograms(trained):
    import json

    from cupyden.io.checkpoint import load_checkpoint
    from cupyden.io.store import PatchStore

    tmp, even, odd, out = trained
    ck = load_checkpoint(out + "/model.h5")
    assert ck["config"]["model"] == {"arch": "unet3d", "base": 2, "depth": 3, "seed": 0}
    store = PatchStore(out + "/patches.h5")
    # y: training rows [0, 24) at the automatic stride, 2 (volume_stride: 8 and 4 give
    # 3^3 and 5^3 subvolumes, under 512): 9 x 9 x 9; validation rows [24, 36): origins 24
    # and 28 (flush with the slab's end, at the patch size), 3 x 2 x 3
    assert store.ndim == 3 and store.size("train") == 729 and store.size("val") == 18
    info = store.micrographs()[0]
    assert info["shape"] == [24, 48, 24] and info["heldout_rows"] == [36, 48]
    assert info["stride"] == 2
    store.close()
    ev = json.load(open(out + "/evaluation.json"))
    assert ev["rows"] == [36, 48] and ev["rows_are"].startswith("held out")
    assert 0.5 < ev["cc_raw"] < 1 and numpy.isfinite(ev["cc_denoised"])


@pytest.fixture(scope="module")
def halves_denoised(trained):
    """The trained model (CPU) and cupyden.denoise of each half tomogram."""
    import cupyden
    from cupyden.io.tiff import read_image

    _, even, odd, out = trained
    model = cupyden.load_model(out + "/model.h5", device=-1)
    a, b = read_image(even).data, read_image(odd).data
    return model, a, b, cupyden.denoise(model, a), cupyden.denoise(model, b)


def test_denoise_a_tomogram_and_the_mean_of_its_halves(trained, halves_denoised, tmp_path):
    """cupyden-denoise on one volume equals cupyden.denoise; with --odd the output is the
    mean of the two denoised halves, under the name the halves share."""
    import mrcfile

    import cupyden
    from cupyden.cli import denoise
    from cupyden.errors import InputError

    _, even, odd, out = trained
    model, a, b, den_a, den_b = halves_denoised
    assert den_a.shape == a.shape and den_a.dtype == numpy.float32
    assert rel(cupyden.denoise(model, a, odd=b), (den_a + den_b) / 2) < 1e-6
    args = ["-d", "-1", "--no-progress", "-o", str(tmp_path)]
    assert denoise.main([out + "/model.h5", even] + args) == 0
    assert rel(mrcfile.read(str(tmp_path / "TS_01_half1.mrc")), den_a) < 1e-6
    assert denoise.main([out + "/model.h5", even, "--odd", odd] + args) == 0
    with mrcfile.open(str(tmp_path / "TS_01.mrc")) as m:
        assert rel(m.data, (den_a + den_b) / 2) < 1e-6 and abs(m.voxel_size.x - 13.5) < 1e-4
    with pytest.raises(InputError, match="volumes"):
        cupyden.denoise(model, a[0])                       # a micrograph for a 3-D model


def _tomograms_star(path, halves):
    """A RELION 5 tomograms STAR file: data_global (one row per tilt series) and a
    per-tilt-series block."""
    import pandas
    import starfile

    glob = pandas.DataFrame({"rlnTomoName": ["TS_01"], "rlnVoltage": [300.0],
                             "rlnTomoTiltSeriesPixelSize": [1.35],
                             "rlnTomoReconstructedTomogramHalf1": [halves[0]],
                             "rlnTomoReconstructedTomogramHalf2": [halves[1]]})
    tilts = pandas.DataFrame({"rlnTomoNominalStageTiltAngle": [-3.0, 0.0, 3.0],
                              "rlnMicrographName": ["t1.mrc", "t2.mrc", "t3.mrc"]})
    starfile.write({"global": glob, "TS_01": tilts}, str(path))


def test_relion5_tomograms_star_in_and_out(trained, halves_denoised, tmp_path):
    """A tomograms STAR file as training input (its pairs of halves) and as denoising
    input: DIR/TS_01.mrc and denoised_tomograms.star with the denoised column, the other
    block kept."""
    pytest.importorskip("starfile")
    import mrcfile
    import starfile

    from cupyden.cli import denoise
    from cupyden.pipeline.train import resolve_options, sources

    _, even, odd, out = trained
    star = tmp_path / "tomograms.star"
    _tomograms_star(star, [even, odd])
    o = resolve_options([str(star)], pairs="halves")
    assert o["volumes"] and o["arch"] == "unet3d" and o["stride"] is None   # per tomogram
    assert sources(o) == [(even, odd)]
    dest = tmp_path / "den"
    assert denoise.main([out + "/model.h5", str(star), "-o", str(dest), "-d", "-1",
                         "--no-progress"]) == 0
    den_a, den_b = halves_denoised[3:]
    assert rel(mrcfile.read(str(dest / "TS_01.mrc")), (den_a + den_b) / 2) < 1e-6
    blocks = starfile.read(str(dest / "denoised_tomograms.star"), always_dict=True)
    assert list(blocks) == ["global", "TS_01"]
    g = blocks["global"]
    assert g["rlnTomoReconstructedTomogramDenoised"].tolist() == [str(dest / "TS_01.mrc")]
    assert g["rlnTomoReconstructedTomogramHalf1"].tolist() == [even]
    assert len(blocks["TS_01"]) == 3


def test_volume_stride_gives_enough_training_subvolumes():
    """The automatic stride of tomograms: non-overlapping 64^3 subvolumes of a large
    tomogram, overlapping ones of a small tomogram (8 at the patch size would be all of
    a 96 x 256 x 256 tomogram's training slab)."""
    from cupyden.pipeline.train import volume_stride
    assert volume_stride((512, 1024, 1024), (0, 768), 64) == 64        # 8 x 12 x 16 = 1536
    assert volume_stride((96, 256, 256), (0, 128), 64) == 16           # 3 x 5 x 13 = 195
    assert volume_stride((128, 512, 512), (0, 384), 64) == 16          # at 32: 3 x 11 x 15 = 495
    assert volume_stride((160, 512, 512), (0, 384), 64) == 32          # 4 x 11 x 15 = 660
    assert volume_stride((8, 8, 8), (0, 8), 2) == 1                    # never below one voxel
