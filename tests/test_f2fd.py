"""F2Fd (issue 7): Fourier masks, sample means, pairs, tiled inference, the U-Net, TIFF
volumes, the simulated tomogram, and the commands end to end."""

import os

import mrcfile
import numpy
import pytest

from cupyden import backend
from cupyden.baselines import gaussian_lowpass
from cupyden.cli import denoise, train
from cupyden.errors import InputError
from cupyden.f2fd import (F2FdPairs, F2FdParams, FourierPerturbation, FourierSampler, denoise as
                          f2fd_denoise, prepare, tile_starts)
from cupyden.io.tiff import read_image
from cupyden.models import F2FdUNet
from cupyden.simulate import DEFAULT_MODEL, read_atoms, simulate_tomogram

from conftest import rel, shared_data


def test_mask_values_sphere_blocks_and_rates(xp):
    prm = F2FdParams(p=0.2, Vmask_pct=0.5, volumetric_scale_factor=4)
    fp = FourierPerturbation((48, 40, 64), prm, xp)
    m = backend.to_host(fp.mask(3))
    k = backend.to_host(fp.k)
    assert m.shape == (48, 40, 33)
    assert set(numpy.unique(m)) == {-1.0, 0.0, 1.0}
    inner = k < fp.sphere_radius(prm.sphere_fraction[0])
    assert (m[inner] != 0).all()                          # the low frequencies always kept
    outer = k > fp.sphere_radius(prm.sphere_fraction[1])
    assert abs((m[outer] == 0).mean() - 0.5) < 0.08       # blocks of 4^3 dropped with 0.5
    kept = m != 0
    assert abs((m[kept] == -1).mean() - 0.2) < 0.01       # signs inverted with p
    blocks = (m[:44, :40, :32] != 0) | inner[:44, :40, :32]
    b = blocks.reshape(11, 4, 10, 4, 8, 4)                # constant within each 4^3 block
    far = outer[:44, :40, :32].reshape(11, 4, 10, 4, 8, 4).all(axis=(1, 3, 5))
    assert (b.all(axis=(1, 3, 5)) == b.any(axis=(1, 3, 5)))[far].all()
    assert numpy.array_equal(backend.to_host(fp.mask(3)), m)   # a pool entry is its seed
    assert not numpy.array_equal(backend.to_host(fp.mask(4)), m)


def test_mask_is_the_same_on_numpy_and_the_device(xp):
    prm = F2FdParams(p=0.3, Vmask_pct=0.4, volumetric_scale_factor=3)
    for shape in ((20, 34, 17), (50, 62)):
        here = FourierPerturbation(shape, prm, xp)
        ref = FourierPerturbation(shape, prm, numpy)
        for seed in (0, 12345, 2 ** 32 - 1):
            assert numpy.array_equal(backend.to_host(here.mask(seed)), ref.mask(seed))


def test_sample_mean_is_mean_of_samples_and_identity_without_perturbation(xp):
    rng = numpy.random.default_rng(0)
    image = rng.standard_normal((16, 24, 20)).astype(numpy.float32)
    s = FourierSampler(image, F2FdParams(total_samples=12), xp, seed=5)
    one = [backend.to_host(s.sample_mean([i])) for i in (2, 7, 9)]
    assert rel(s.sample_mean([2, 7, 9]), sum(one) / 3) < 1e-5
    plain = FourierSampler(image, F2FdParams(p=0.0, Vmask_pct=0.0), xp)
    assert rel(plain.sample_mean([0, 1, 2]), image) < 1e-5
    flipped = FourierSampler(image, F2FdParams(p=1.0, Vmask_pct=0.0), xp)
    assert rel(flipped.sample_mean([0]), -image) < 1e-5   # every sign inverted


def test_pairs_shapes_determinism_and_resume(xp):
    rng = numpy.random.default_rng(1)
    x, _ = prepare(rng.standard_normal((40, 70, 64)))
    prm = F2FdParams(subtomo_length=32)
    pairs = F2FdPairs(x, prm, xp, seed=3, n_val=2)
    a = pairs.loader(2, xp, seed=3, start=0)
    batches = [tuple(backend.to_host(t) for t in next(a)) for _ in range(3)]
    assert batches[0][0].shape == (2, 1, 32, 32, 32) and batches[0][1].shape == (2, 1, 32, 32, 32)
    resumed = pairs.loader(2, xp, seed=3, start=2)
    assert numpy.array_equal(backend.to_host(next(resumed)[0]), batches[2][0])
    assert not numpy.array_equal(batches[0][0], batches[0][1])       # input != target
    vx, vy = pairs.read("val", numpy.arange(2))
    assert vx.shape == (2, 1, 32, 32, 32) and pairs.size("val") == 2
    with pytest.raises(InputError):
        F2FdPairs(x, F2FdParams(subtomo_length=64), xp)               # 40 < 64
    with pytest.raises(InputError):
        FourierSampler(x, F2FdParams(total_samples=10, n_bernoulli_samples=6), xp)


class Identity:
    multiple = 8

    def eval(self):
        return self

    def mc_dropout(self):
        return self

    def forward(self, x):
        return x * 1.0


def test_tiles_cover_and_blending_is_exact(xp):
    for n, t, o in ((36, 32, 16), (206, 64, 32), (256, 128, 32), (64, 64, 32)):
        starts = tile_starts(n, t, o)
        assert starts[0] == 0 and starts[-1] == n - t
        assert all(b - a <= t - o for a, b in zip(starts, starts[1:]))
    rng = numpy.random.default_rng(2)
    image = rng.standard_normal((20, 45, 37)).astype(numpy.float32)
    out = f2fd_denoise(Identity(), image, F2FdParams(p=0.0, Vmask_pct=0.0), xp, samples=2,
                       passes=2, tile=16, overlap=8)
    assert rel(out, image) < 1e-5                  # overlapping tiles averaged exactly


def test_unet_shapes_and_dropout_modes(xp):
    rng = numpy.random.default_rng(0)
    m3 = F2FdUNet(ndim=3, nf=4, depth=2, dropout_p=0.5).to(xp)
    x = xp.asarray(rng.standard_normal((1, 1, 8, 12, 4)).astype(numpy.float32))
    assert m3.forward(x).shape == (1, 1, 8, 12, 4)
    m3.eval()
    assert rel(m3.forward(x), m3.forward(x)) == 0
    m3.mc_dropout()
    assert rel(m3.forward(x), m3.forward(x)) > 1e-3
    m2 = F2FdUNet(ndim=2, depth=5)
    assert m2.n_parameters() == 988609 and F2FdUNet().n_parameters() == 2963425
    with pytest.raises(ValueError):
        m3.forward(xp.zeros((1, 1, 6, 8, 8), numpy.float32))


def test_read_real_tiff_tomogram():
    vol = read_image(shared_data("tomograms", "cylindra_13pf_MT.tif"))
    assert vol.data.shape == (36, 206, 94) and vol.data.dtype == numpy.uint8
    assert vol.pixel_size == pytest.approx(10.52)         # 1.052 nm/voxel


def test_real_microtubule_tomogram_still_denoises(tmp_path):
    """The real crop (TIFF, uint8, 10.52 Å/voxel) through the commands as a user runs them:
    F2Fd trained a few steps on it, then cupyden-denoise; the output keeps the shape and
    the voxel size and differs from the input (issue 18: both ways stay usable)."""
    tif = shared_data("tomograms", "cylindra_13pf_MT.tif")
    out = str(tmp_path / "train")
    assert train.main(F2FD_SMALL + [tif, "-o", out, "--steps", "2"]) == 0
    den = str(tmp_path / "den")
    assert denoise.main([os.path.join(out, "model.h5"), tif, "-o", den, "--samples", "1",
                         "--passes", "1", "-d", "-1", "--no-progress"]) == 0
    raw = read_image(tif).data.astype(numpy.float64)
    with mrcfile.open(os.path.join(den, "cylindra_13pf_MT.mrc")) as m:
        assert m.data.shape == (36, 206, 94)
        assert float(m.voxel_size.x) == pytest.approx(10.52, rel=1e-4)
        data = m.data.astype(numpy.float64)
    assert numpy.isfinite(data).all()
    assert abs(numpy.corrcoef(data.ravel(), raw.ravel())[0, 1]) < 0.999


def test_read_tiff_volume_and_errors(tmp_path):
    import tifffile

    tifffile.imwrite(str(tmp_path / "v.tif"), numpy.arange(60, dtype=numpy.float32).reshape(3, 4, 5),
                     imagej=True, metadata={"spacing": 0.5, "unit": "nm"})
    vol = read_image(str(tmp_path / "v.tif"), ndim=3)
    assert vol.data.shape == (3, 4, 5) and vol.pixel_size == pytest.approx(5.0)
    with pytest.raises(InputError):
        read_image(str(tmp_path / "v.tif"), ndim=2)
    with pytest.raises(InputError):
        read_image(str(tmp_path / "missing.tif"))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError):
        read_image(str(tmp_path / "bad.tif"))
    tifffile.imwrite(str(tmp_path / "c.tif"), numpy.ones((4, 5), numpy.uint8))
    with pytest.raises(InputError):
        read_image(str(tmp_path / "c.tif"))                  # constant


def test_simulated_tomogram_counts_and_noise():
    xyz, z = read_atoms(DEFAULT_MODEL)
    sim = simulate_tomogram(xyz, z, (64, 96, 96), 5.0, counts=8.0, seed=1)
    assert sim.params["particles"] >= 1
    ice = abs(sim.clean - 8.0) < 0.01                         # ice: the counts asked for
    assert ice.mean() > 0.5
    assert sim.clean.min() < 8.0 * (1 - 0.2 * 1.0)            # protein darkens (> 1 V)
    assert abs(sim.noisy[ice].mean() / 8.0 - 1) < 0.01
    assert abs(sim.noisy[ice].var() / sim.noisy[ice].mean() - 1) < 0.03   # Poisson
    for p in sim.particles:                                   # centres in the middle slab
        assert abs(p["z"] - 32) <= 0.3 * 64 + 1 and 0 < p["row"] < 96


def test_gaussian_lowpass_3d_moments():
    delta = numpy.zeros((32, 32, 32))
    delta[16, 16, 16] = 1.0
    g = gaussian_lowpass(delta, 2.0, ndim=3)
    assert g.sum() == pytest.approx(1.0)
    r = numpy.arange(32) - 16
    assert (g.sum(axis=(0, 1)) * r ** 2).sum() == pytest.approx(4.0, rel=1e-3)   # sigma^2
    assert (g.sum(axis=(1, 2)) * r ** 2).sum() == pytest.approx(4.0, rel=1e-3)


def _write(path, data, voxel):
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(data.astype(numpy.float32))
        m.voxel_size = voxel
    return str(path)


F2FD_SMALL = ["--pairs", "f2fd", "--patch-size", "32", "--batch-size", "1", "--val-every", "1", "--val-patches", "1", "--features", "2", "--total-samples", "4",
              "--n-bernoulli-samples", "2", "--samples", "1", "--passes", "2", "-d", "-1",
              "--no-progress"]


def test_cli_f2fd_volume_train_resume_denoise(tmp_path):
    rng = numpy.random.default_rng(0)
    vol = _write(tmp_path / "tomo.mrc", rng.poisson(5.0, (32, 40, 36)), 10.0)
    out = str(tmp_path / "train")
    assert train.main(F2FD_SMALL + [vol, "-o", out, "--steps", "2"]) == 0
    for name in ("model.h5", "checkpoint.h5", "denoised.mrc", "central_slice.png", "history.csv"):
        assert os.path.exists(os.path.join(out, name)), name
    with mrcfile.open(os.path.join(out, "denoised.mrc")) as m:
        assert m.data.shape == (32, 40, 36) and float(m.voxel_size.x) == pytest.approx(10.0)
        assert numpy.isfinite(m.data).all()
    ck = os.path.join(out, "checkpoint.h5")
    assert train.main(F2FD_SMALL + [vol, "-o", out, "--steps", "3", "--resume", ck]) == 0
    assert train.main(F2FD_SMALL + [vol, "-o", out, "--steps", "4", "--p", "0.3",
                                    "--resume", ck]) == 2                 # other settings
    den = str(tmp_path / "den")
    assert denoise.main([os.path.join(out, "model.h5"), vol, "-o", den, "--samples", "1",
                         "--passes", "1", "-d", "-1", "--no-progress"]) == 0
    with mrcfile.open(os.path.join(den, "tomo.mrc")) as m:
        assert m.data.shape == (32, 40, 36)


def test_cli_f2fd_micrograph_and_bad_input(tmp_path):
    rng = numpy.random.default_rng(1)
    mic = _write(tmp_path / "mic.mrc", rng.poisson(5.0, (64, 96)), 2.0)
    out = str(tmp_path / "m")
    assert train.main(F2FD_SMALL + [mic, "-o", out, "--steps", "2"]) == 0
    with mrcfile.open(os.path.join(out, "denoised.mrc")) as m:
        assert m.data.shape == (64, 96)
    small = _write(tmp_path / "small.mrc", rng.poisson(5.0, (16, 40, 40)), 2.0)
    assert train.main(F2FD_SMALL + [small, "-o", str(tmp_path / "s")]) == 2   # < one patch
    assert train.main(F2FD_SMALL + [mic, mic, "-o", str(tmp_path / "two")]) == 2
    opts = [o if o != "32" else "48" for o in F2FD_SMALL]              # not a multiple of 32
    assert train.main(opts + [mic, "-o", str(tmp_path / "p")]) == 2
