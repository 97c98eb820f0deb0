"""The commands end to end on small inputs: bad input, resume, tiling (issue: main job)."""

import csv
import os

import mrcfile
import numpy
import pytest

from cupyden.cli import denoise, train
from cupyden.infer import denoise_array, halo_for, plan_tiles, pixels_processed
from cupyden.io.mrc import read_mrc, write_mrc
from cupyden.io.patches import normalization
from cupyden.models import DnCNN, UNet

from conftest import smooth, write

SMALL = ["--depth", "3", "--width", "4", "--patch-size", "16", "--stride", "8",
         "--batch-size", "4", "--val-every", "3", "-d", "-1", "--no-progress",
         "--val-fraction", "0.25", "--holdout-fraction", "0"]     # 96 px images: 24 rows


@pytest.fixture
def clean(tmp_path):
    return write(tmp_path / "clean.mrc", smooth((96, 96)), 2.0)


@pytest.fixture
def model(tmp_path, clean):
    out = str(tmp_path / "run")
    assert train.main(["--pairs", "gaussian", "--noise-level", "0.5", "--steps", "3",
                       "-o", out, clean] + SMALL) == 0
    return os.path.join(out, "model.h5")


def history(folder):
    with open(os.path.join(folder, "history.csv")) as f:
        return list(csv.DictReader(f))


def test_resume_continues_exactly(tmp_path, clean):
    opts = ["--pairs", "gaussian", "--noise-level", "0.5", clean] + SMALL
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert train.main(opts + ["--steps", "6", "-o", a]) == 0
    assert train.main(opts + ["--steps", "3", "-o", b]) == 0
    assert train.main(opts + ["--steps", "6", "-o", b, "--resume", os.path.join(b, "checkpoint.h5")]) == 0
    ha, hb = history(a), history(b)
    assert [r["step"] for r in hb] == ["3", "6"]
    for ra, rb in zip(ha, hb):
        for key in ("train_loss", "val_loss"):
            assert abs(float(ra[key]) - float(rb[key])) <= 1e-6 * abs(float(ra[key]))
    assert os.path.exists(os.path.join(a, "loss_curve.png"))


def test_resume_with_other_settings_is_refused(tmp_path, clean, capsys):
    opts = ["--pairs", "gaussian", "--noise-level", "0.5", clean] + SMALL
    b = str(tmp_path / "b")
    assert train.main(opts + ["--steps", "3", "-o", b]) == 0
    assert train.main(opts + ["--steps", "6", "--lr", "0.01", "-o", b,
                              "--resume", os.path.join(b, "checkpoint.h5")]) == 2
    assert "lr" in capsys.readouterr().err


def test_denoise_keeps_basename_pixel_size_and_input(tmp_path, model):
    src = write(tmp_path / "mic1.mrc", smooth((70, 90), 1) + 100, 1.5)
    before = open(src, "rb").read()
    out = str(tmp_path / "den")
    assert denoise.main([model, src, "-o", out, "--suffix", "_dn", "-d", "-1", "--no-progress",
                         "--patch-size", "32"]) == 0
    with mrcfile.open(os.path.join(out, "mic1_dn.mrc")) as m:
        assert m.data.shape == (70, 90) and m.header.mode == 2
        assert abs(m.voxel_size.x - 1.5) < 1e-6
    assert open(src, "rb").read() == before
    assert denoise.main([model, src, "-o", out, "--suffix", "_dn", "-d", "-1", "--no-progress",
                         "--only-unfinished"]) == 0


@pytest.mark.parametrize("make", [lambda: DnCNN(5, 4, seed=1), lambda: UNet(base=4, seed=2)])
def test_tiled_equals_untiled(make):
    model = make().to(numpy, numpy.float32).eval()
    image = smooth((150, 173), 3) + 50
    tiled, stats = denoise_array(model, image, numpy, tile=48, batch_size=3)
    assert stats["tiles"] == 4 * 4
    norm = normalization(image)                  # one pass over the image mirrored by the halo
    h = halo_for(model)
    padded = numpy.pad(norm.apply(image), h, mode="reflect")
    whole = norm.invert(model.forward(padded[None, None])[0, 0, h:-h, h:-h])
    assert numpy.linalg.norm(tiled - whole) / numpy.linalg.norm(whole) < 1e-5


def test_tiling_of_a_4k_micrograph_processes_under_1_2x_its_pixels():
    halo = DnCNN().receptive_field // 2
    tiles = plan_tiles(4096, 4096, 2048, halo)
    assert pixels_processed(tiles) == 4 * 2060 * 2060        # 12 px halo on the inner sides
    assert pixels_processed(tiles) / 4096 ** 2 < 1.02


def _bad(tmp_path, name):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    return folder / name


def bad_inputs(tmp_path):
    """(name, path) of files that must be refused."""
    good = smooth((64, 64)) + 10
    trunc = write(_bad(tmp_path, "truncated.mrc"), good)
    with open(trunc, "r+b") as f:
        f.truncate(os.path.getsize(trunc) - 1000)
    nan = good.copy()
    nan[3, 4] = numpy.nan
    return [("missing", str(_bad(tmp_path, "missing.mrc"))),
            ("truncated", trunc),
            ("mode", write(_bad(tmp_path, "complex.mrc"), numpy.ones((8, 8), numpy.complex64))),
            ("nan", write(_bad(tmp_path, "nan.mrc"), nan)),
            ("constant", write(_bad(tmp_path, "constant.mrc"), numpy.full((64, 64), 7, numpy.float32))),
            ("3d", write(_bad(tmp_path, "stack.mrc"), numpy.stack([good, good]))),
            ("notmrc", str(_bad(tmp_path, "text.mrc")))]


@pytest.mark.parametrize("which", ["missing", "truncated", "mode", "nan", "constant", "3d", "notmrc"])
def test_bad_input_to_denoise(tmp_path, model, capsys, which):
    (tmp_path / "bad").mkdir(exist_ok=True)
    (tmp_path / "bad" / "text.mrc").write_text("not an MRC file\n")
    path = dict(bad_inputs(tmp_path))[which]
    out = tmp_path / "out"
    assert denoise.main([model, path, "-o", str(out), "-d", "-1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cupyden-denoise: error: ") and err.count("\n") == 1
    if which == "missing":                  # a named file that is not there: refused up front
        assert not out.exists()
    else:                                   # a bad file in a batch: listed, nothing written
        assert os.listdir(out) == ["failed.txt"]
        assert (out / "failed.txt").read_text().split("\t")[0] == path


@pytest.mark.parametrize("which", ["truncated", "nan", "constant", "3d"])
def test_bad_input_to_train(tmp_path, capsys, which):
    path = dict(bad_inputs(tmp_path))[which]
    out = tmp_path / "out"
    assert train.main(["--pairs", "gaussian", path, "-o", str(out)] + SMALL) == 2
    err = capsys.readouterr().err
    assert err.startswith("cupyden-train: error: ") and err.count("\n") == 1
    assert not out.exists() or os.listdir(out) == []


def test_image_smaller_than_a_patch(tmp_path, capsys):
    small = write(tmp_path / "small.mrc", smooth((12, 12)))
    assert train.main(["--pairs", "gaussian", small, "-o", str(tmp_path / "o")] + SMALL) == 2
    assert "smaller than one 16 px patch" in capsys.readouterr().err
    assert os.listdir(tmp_path / "o") == []


def test_mismatched_halves_and_non_poisson(tmp_path, capsys):
    write(tmp_path / "a_EVN.mrc", smooth((64, 64)) + 100)   # smooth: far from white noise
    write(tmp_path / "b_ODD.mrc", smooth((64, 64)) + 100)
    assert train.main(["--pairs", "halves", str(tmp_path / "*_EVN.mrc"), "--odd",
                       str(tmp_path / "*_ODD.mrc"), "-o", str(tmp_path / "o")] + SMALL) == 2
    assert "unmatched" in capsys.readouterr().err
    assert train.main(["--pairs", "count-split", str(tmp_path / "a_EVN.mrc"), "-o",
                       str(tmp_path / "o2")] + SMALL) == 2
    assert "not Poisson-like" in capsys.readouterr().err


def test_unwritable_output(tmp_path, model, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    src = write(tmp_path / "m.mrc", smooth((40, 40)) + 5)
    assert denoise.main([model, src, "-o", str(afile / "sub"), "-d", "-1"]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_embedded_default_runs(tmp_path):
    out = str(tmp_path / "emb")
    assert train.main(["--steps", "4", "--val-every", "2", "-d", "-1", "--no-progress",
                       "--depth", "4", "--width", "8", "-o", out]) == 0
    for name in ("patches.h5", "model.h5", "checkpoint.h5", "history.csv", "loss_curve.png",
                 "evaluation.json", "denoised.mrc", "before_after.png"):
        assert os.path.exists(os.path.join(out, name)), name
    import json
    ev = json.load(open(os.path.join(out, "evaluation.json")))
    # 2048 px binned 4x = 512 rows: training [0, 384), validation [384, 448), held out [448, 512)
    assert ev["training_rows"] == [0, 384] and ev["validation_rows"] == [384, 448]
    assert ev["rows"] == [448, 512] and ev["rows_are"].startswith("held out")


def test_fine_tuning_from_weights(tmp_path, clean, capsys):
    """--init starts from a model.h5's weights (its architecture, here a small Topaz
    UDenoiseNet); --arch topaz trains Topaz's topology; a zero held-out share scores the
    validation rows and says so."""
    from cupyden.io.checkpoint import load_checkpoint, save_checkpoint
    from cupyden.models import build_model
    cfg = {"arch": "topaz-unet", "nf": 4, "base_width": 3, "top_width": 3, "depth": 2, "seed": 3}
    start = build_model(cfg).state()
    init = str(tmp_path / "init.h5")
    save_checkpoint(init, start, {"model": cfg})
    out = str(tmp_path / "ft")
    opts = ["--pairs", "gaussian", "--noise-level", "0.5", clean, "--patch-size", "16",
            "--stride", "8", "--batch-size", "2", "-d", "-1", "--no-progress",
            "--val-fraction", "0.25"]
    assert train.main(opts + ["--steps", "1", "--val-every", "1", "--lr", "1e-9",
                              "--init", init, "-o", out]) == 0
    ck = load_checkpoint(os.path.join(out, "model.h5"))
    assert ck["config"]["model"] == cfg and ck["config"]["init"] == init
    assert all(numpy.abs(ck["weights"][k] - v).max() < 1e-6 for k, v in start.items())
    assert train.main(opts + ["--steps", "1", "--arch", "topaz", "-o", str(tmp_path / "tz")]) == 0
    arch = load_checkpoint(str(tmp_path / "tz" / "model.h5"))["config"]["model"]
    assert arch == {"arch": "topaz-unet", "seed": 0}
    assert build_model(arch).receptive_field == 298
    assert train.main(["--steps", "2", "--val-every", "2", "-d", "-1", "--no-progress",
                       "--depth", "3", "--width", "4", "--holdout-fraction", "0",
                       "-o", str(tmp_path / "v")]) == 0
    assert "validation: they chose the checkpoint" in capsys.readouterr().out


def test_loss_terms_and_schedule_options(tmp_path, clean):
    out = str(tmp_path / "mix")
    assert train.main(["--pairs", "gaussian", "--noise-level", "0.5", clean, "--steps", "6",
                       "--fourier-weight", "0.1", "--fourier-frc", "--ssim-weight", "0.1",
                       "--grad-weight", "0.1", "--lr-schedule", "cosine", "--warmup", "3",
                       "-o", out] + SMALL) == 0
    rows = history(out)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.001, 0.0])   # end of warm-up, end of cosine


def test_simulate_then_evaluate_end_to_end(tmp_path, capsys):
    """cupyden-simulate -> even/odd sums -> a stand-in denoiser -> cupyden-evaluate."""
    import json

    from cupyden.baselines import gaussian_lowpass
    from cupyden.cli import evaluate, simulate

    sim_dir = str(tmp_path / "sim")
    assert simulate.main([sim_dir, "--size", "192x224", "--pixel-size", "4", "--frames", "6",
                          "--particles", "4", "--dose", "60", "--seed", "5", "-d", "-1",
                          "--no-progress"]) == 0
    meta = json.load(open(os.path.join(sim_dir, "sim_00000.json")))
    assert meta["particles"] == 4 and meta["frames"] == 6 and meta["pixel_size_A"] == 4
    movie = read_mrc(os.path.join(sim_dir, "sim_00000_movie.mrcs"), ndim=3)
    assert movie.data.dtype == numpy.int16 and movie.data.shape == (6, 192, 224)
    assert abs(movie.pixel_size - 4) < 1e-6
    even = movie.data[0::2].sum(0, dtype=numpy.float64)
    odd = movie.data[1::2].sum(0, dtype=numpy.float64)
    for name, img in (("even", even), ("odd", odd), ("den", gaussian_lowpass(even, 1.0))):
        write_mrc(str(tmp_path / (name + ".mrc")), img, 4.0)
    out = str(tmp_path / "ev")
    assert evaluate.main([str(tmp_path / "even.mrc"), str(tmp_path / "den.mrc"), "-o", out,
                          "--clean", os.path.join(sim_dir, "sim_00000_clean.mrc"),
                          "--half-b", str(tmp_path / "odd.mrc")]) == 0
    m = json.load(open(os.path.join(out, "metrics.json")))["metrics"]
    assert m["raw"]["snr_gain_db"] == 0
    assert m["gaussian"]["psnr_db"] > m["raw"]["psnr_db"] + 3
    assert m["denoised"]["psnr_db"] > m["raw"]["psnr_db"]
    assert m["gaussian"]["cc_clean"] > m["raw"]["cc_clean"]
    for f in ("report.md", "panels.png", "power_spectra.png", "frc.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    assert "| gaussian |" in open(os.path.join(out, "report.md")).read()
    # a denoised image of another shape is refused in one line
    write_mrc(str(tmp_path / "small.mrc"), numpy.random.default_rng(0).random((50, 50)), 4.0)
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "even.mrc"), str(tmp_path / "small.mrc"), "-o", out]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_threads_option_sets_the_cpu_threads_and_rejects_junk(capsys):
    from cupyden import backend
    from cupyden.cli.gradcheck import main
    old = backend.get_cpu_threads()
    try:
        assert main(["-d", "-1", "--threads", "1", "--only", "model dncnn-4"]) == 0
        assert backend.get_cpu_threads() == 1
        assert main(["-d", "-1", "--threads", "many"]) == 2
        assert "--threads must be auto or a positive integer" in capsys.readouterr().err
    finally:
        backend.set_cpu_threads(old)
