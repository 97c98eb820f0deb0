"""The library under cupyden-train: a streaming store build equal to the old all-in-memory
one, and cupyden.train equal to the command (issue 17)."""

import json
import os

import h5py
import mrcfile
import numpy
import pytest
import tifffile

import cupyden
from cupyden.cli import train as train_cli
from cupyden.io.checkpoint import load_checkpoint
from cupyden.io.movies import orient_gain_reference
from cupyden.io.patches import fourier_bin, normalization, patch_origins
from cupyden.io.store import PatchStore
from cupyden.pipeline.train import build_store, resolve_options

from conftest import smooth, write

STORE = dict(patch_size=16, stride=8, val_fraction=0.25, holdout_fraction=0)   # the old split
SMALL = dict(depth=3, width=4, patch_size=16, stride=8, batch_size=4, val_every=3,
             val_fraction=0.25, holdout_fraction=0,
             device="-1", progress=False)


def old_store(views, patch, stride, val_fraction, method="robust"):
    """The store as cupyden-train built it before streaming, from first principles: every
    view pair normalised by the input view's statistic, patches at every origin of
    ``patch_origins`` (training rows at the stride, validation rows at the patch size),
    micrograph after micrograph."""
    out = {(s, r): [] for s in ("train", "val") for r in ("input", "target")}
    for a, b in views:
        norm = normalization(a, method)
        a, b = norm.apply(a), norm.apply(b)
        H, W = a.shape
        split = int(round(H * (1 - val_fraction)))
        for s, step, (r0, r1) in (("train", stride, (0, split)), ("val", patch, (split, H))):
            for y in patch_origins(r1 - r0, patch, step):
                for x in patch_origins(W, patch, step):
                    out[s, "input"].append(a[r0 + y:r0 + y + patch, x:x + patch])
                    out[s, "target"].append(b[r0 + y:r0 + y + patch, x:x + patch])
    return {k: numpy.stack(v)[:, None] for k, v in out.items()}


def assert_store_equals(path, want):
    with h5py.File(path, "r") as f:
        for (s, r), arr in want.items():
            assert numpy.array_equal(f["%s/%s" % (s, r)][()], arr), (s, r)


def test_streaming_store_equals_the_old_store_count_split(tmp_path):
    rng = numpy.random.default_rng(3)
    shapes, dose, px, seed, b = [(160, 128), (200, 176), (144, 160)], 20.0, 1.0, 7, 2
    paths = [write(tmp_path / ("mic%d.mrc" % i), rng.poisson(dose * px ** 2, s).astype(numpy.uint16), px)
             for i, s in enumerate(shapes)]
    views = []
    for i, p in enumerate(paths):
        x = mrcfile.read(p).astype(numpy.float64)
        scale = x.mean() / (dose * px ** 2)                  # values per electron, from the dose
        counts = numpy.clip(numpy.rint(x / scale), 0, None).astype(numpy.int64)
        a = numpy.random.default_rng(seed + i).binomial(counts, 0.5)   # one stream per micrograph
        views.append((fourier_bin(a.astype(numpy.float32), b),
                      fourier_bin((counts - a).astype(numpy.float32), b)))
    o = resolve_options(paths, pairs="count-split", binning=b, dose=dose, seed=seed, **STORE)
    store = str(tmp_path / "patches.h5")
    summary = build_store(store, o, numpy, log=lambda *a: None)
    assert summary["micrographs"] == 3 and not summary["skipped"]
    assert_store_equals(store, old_store(views, 16, 8, 0.25))
    s = PatchStore(store)
    mics = s.micrographs()
    assert [m["name"] for m in mics] == ["mic0.mrc", "mic1.mrc", "mic2.mrc"]
    for m, (a, _) in zip(mics, views):
        norm = normalization(a)
        assert (m["loc"], m["scale"]) == (norm.loc, norm.scale)
        assert m["count_scale"] == pytest.approx(1.0, rel=0.05)
    assert mics[-1]["train"][1] == s.size("train") and mics[-1]["val"][1] == s.size("val")
    assert json.loads(s.f.attrs["inputs"]) == ["mic0.mrc", "mic1.mrc", "mic2.mrc"]
    s.close()


def test_streaming_store_equals_the_old_store_movies_halves_gaussian(tmp_path):
    rng = numpy.random.default_rng(5)
    # TIFF movies with a gain reference rotated once (RELION's gain_rot 1)
    g0 = rng.integers(48, 96, (40, 72)) / 64.0
    gain = orient_gain_reference(g0, 1, 0)                   # (72, 40)
    write(tmp_path / "gain.mrc", g0.astype(numpy.float32))
    movies, views = [], []
    for i in range(2):
        frames = rng.poisson(2.0, (6,) + gain.shape).astype(numpy.uint16)
        path = str(tmp_path / ("movie%d.tif" % i))
        tifffile.imwrite(path, frames[:, ::-1], compression="zlib")   # TIFF: upside down
        movies.append(path)
        f = frames[1:].astype(numpy.float64) * gain                     # --drop-frames 1
        views.append((f[0::2].sum(0).astype(numpy.float32), f[1::2].sum(0).astype(numpy.float32)))
    o = resolve_options(movies, pairs="movie", drop_frames=1, gain=str(tmp_path / "gain.mrc"),
                        gain_rot=1, **STORE)
    build_store(str(tmp_path / "movies.h5"), o, numpy, log=lambda *a: None)
    assert_store_equals(str(tmp_path / "movies.h5"), old_store(views, 16, 8, 0.25))

    (tmp_path / "even").mkdir()
    (tmp_path / "odd").mkdir()
    views = []
    for i in range(2):
        e, d = smooth((64, 72), i) + 50, smooth((64, 72), i + 10) + 50
        write(tmp_path / "even" / ("m%d_EVN.mrc" % i), e)
        write(tmp_path / "odd" / ("m%d_ODD.mrc" % i), d)
        views.append((e, d))
    o = resolve_options([str(tmp_path / "even")], pairs="halves", odd=str(tmp_path / "odd"),
                        **STORE)
    build_store(str(tmp_path / "halves.h5"), o, numpy, log=lambda *a: None)
    assert_store_equals(str(tmp_path / "halves.h5"), old_store(views, 16, 8, 0.25))

    clean = [write(tmp_path / ("c%d.mrc" % i), smooth((64, 64), 20 + i)) for i in range(2)]
    views = []
    for i, p in enumerate(clean):
        x = mrcfile.read(p).astype(numpy.float64)
        noise = 0.5 * numpy.random.default_rng(11 + i).standard_normal(x.shape)
        views.append(((x + noise).astype(numpy.float32), x.astype(numpy.float32)))
    o = resolve_options(clean, pairs="gaussian", seed=11, noise_level=0.5, **STORE)
    build_store(str(tmp_path / "gauss.h5"), o, numpy, log=lambda *a: None)
    assert_store_equals(str(tmp_path / "gauss.h5"), old_store(views, 16, 8, 0.25))


def test_the_store_built_on_the_device_matches_numpys(tmp_path, xp):
    """Split, binning, normalisation and cutting where xp lives; the binomial draw is
    NumPy's on the host, so only FFT rounding differs."""
    rng = numpy.random.default_rng(4)
    paths = [write(tmp_path / ("m%d.mrc" % i), rng.poisson(25.0, (128, 96)).astype(numpy.uint16))
             for i in range(2)]
    o = resolve_options(paths, pairs="count-split", binning=2, dose=25.0, **STORE)
    build_store(str(tmp_path / "np.h5"), o, numpy, log=lambda *a: None)
    build_store(str(tmp_path / "xp.h5"), o, xp, log=lambda *a: None)
    with h5py.File(str(tmp_path / "np.h5"), "r") as f, h5py.File(str(tmp_path / "xp.h5"), "r") as g:
        for key in ("train/input", "train/target", "val/input", "val/target"):
            a, b = f[key][()], g[key][()]
            assert a.shape == b.shape
            assert numpy.abs(a - b).max() <= 1e-5 * numpy.abs(a).max(), key


def test_an_unusable_micrograph_is_reported_and_skipped(tmp_path):
    good = write(tmp_path / "a.mrc", smooth((64, 64)))
    tiny = write(tmp_path / "b.mrc", smooth((12, 12), 1))
    lines = []
    o = resolve_options([good, tiny], pairs="gaussian", **STORE)
    summary = build_store(str(tmp_path / "p.h5"), o, numpy, log=lines.append)
    assert summary["micrographs"] == 1 and len(summary["skipped"]) == 1
    assert any("b.mrc" in line and "smaller than one 16 px patch" in line for line in lines)


def test_cupyden_train_equals_the_command(tmp_path):
    clean = write(tmp_path / "clean.mrc", smooth((96, 96)), 2.0)
    out_cli, out_api = str(tmp_path / "cli"), str(tmp_path / "api")
    assert train_cli.main(["--pairs", "gaussian", "--noise-level", "0.5", "--steps", "6",
                           "--lr-schedule", "cosine", "--warmup", "2", "--seed", "3",
                           "--depth", "3", "--width", "4", "--patch-size", "16", "--stride", "8",
                           "--batch-size", "4", "--val-every", "3", "--val-fraction", "0.25",
                           "--holdout-fraction", "0", "-d", "-1", "--no-progress",
                           "-o", out_cli, clean]) == 0
    model, history = cupyden.train(clean, out_api, pairs="gaussian", noise_level=0.5, steps=6,
                                   lr_schedule="cosine", warmup=2, seed=3, log=lambda *a: None,
                                   **SMALL)
    assert [r["step"] for r in history] == [3, 6]
    with open(os.path.join(out_cli, "history.csv")) as f:
        cli_rows = f.read().splitlines()
    with open(os.path.join(out_api, "history.csv")) as f:
        api_rows = f.read().splitlines()
    assert [r.split(",")[:4] for r in cli_rows] == [r.split(",")[:4] for r in api_rows]
    want = load_checkpoint(os.path.join(out_cli, "model.h5"))
    assert load_checkpoint(os.path.join(out_api, "model.h5"))["config"] == want["config"]
    for name, w in model.state().items():
        assert numpy.array_equal(w, want["weights"][name]), name
    assert not any(layer.training for _, layer in model.named_layers())


def test_import_cupyden_is_cheap_and_train_is_the_function():
    import subprocess
    import sys

    code = ("import sys, cupyden; assert 'numpy' not in sys.modules; f = cupyden.train; "
            "from cupyden.training import fit; "
            "assert cupyden.train is f and f.__module__ == 'cupyden.pipeline.train'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_star_inputs_name_the_micrographs_and_movies(tmp_path, monkeypatch):
    """A RELION STAR file as INPUT: rlnMicrographName for micrographs, rlnMicrographMovieName
    for movies (paths relative to the project folder); the stores equal those built from the
    same files named directly (issue 17)."""
    starfile = pytest.importorskip("starfile", reason="STAR files need the starfile package")
    import pandas

    rng = numpy.random.default_rng(11)
    project = tmp_path / "project"
    (project / "MotionCorr" / "job002").mkdir(parents=True)
    (project / "Import" / "job001").mkdir(parents=True)
    mics, movies = [], []
    for i in range(2):
        mics.append("MotionCorr/job002/mic%d.mrc" % i)
        write(project / mics[-1], rng.poisson(20.0, (96, 80)).astype(numpy.uint16))
        movies.append("Import/job001/movie%d.mrcs" % i)
        write(project / movies[-1], rng.poisson(2.0, (6, 64, 72)).astype(numpy.uint16))
    star = project / "MotionCorr" / "job002" / "corrected_micrographs.star"
    starfile.write({"optics": pandas.DataFrame({"rlnOpticsGroup": [1]}),
                    "micrographs": pandas.DataFrame({"rlnMicrographMovieName": movies,
                                                     "rlnMicrographName": mics,
                                                     "rlnOpticsGroup": [1, 1]})}, star)
    monkeypatch.chdir(project)                         # RELION runs in its project folder
    for pairs, names, extra in (("count-split", mics, {"dose": 20.0}), ("movie", movies, {})):
        a, b = str(tmp_path / (pairs + "_star.h5")), str(tmp_path / (pairs + "_files.h5"))
        build_store(a, resolve_options([str(star)], pairs=pairs, **extra, **STORE), numpy,
                    log=lambda *x: None)
        build_store(b, resolve_options(names, pairs=pairs, **extra, **STORE), numpy,
                    log=lambda *x: None)
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            assert fa["train/input"].shape[0] > 0
            for key in ("train/input", "train/target", "val/input", "val/target"):
                assert numpy.array_equal(fa[key][()], fb[key][()]), (pairs, key)
        assert json.loads(PatchStore(a).f.attrs["inputs"]) == [os.path.basename(n) for n in names]


def test_row_split_keeps_a_patch_for_validation_and_held_out_rows():
    from cupyden.pipeline.train import row_split
    o = {"val_fraction": 0.125, "holdout_fraction": 0.125, "patch_size": 64}
    assert row_split(512, o) == (384, 448)                # fractions already >= one patch
    assert row_split(3838, o) == (2878, 3358)             # unchanged for a K2 micrograph
    assert row_split(256, o) == (128, 192)                # 32-row slabs widened to 64
    assert row_split(256, dict(o, holdout_fraction=0.0)) == (192, 256)
