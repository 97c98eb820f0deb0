"""Nothing lost, nothing silent (issue 20): every user mistake and every failure of a run
ends in one line and exit code 2, and never in a traceback, a NaN model or a lost output.
Sections follow the issue's numbered items (the full disk, item 2: test_full_disk.py)."""

import json
import os
import shutil

import h5py
import mrcfile
import numpy
import pytest

from cupyden.cli import denoise, train
from cupyden.errors import InputError
from cupyden.io.checkpoint import load_checkpoint
from cupyden.training import read_history

from test_cli import SMALL, clean, model, smooth, write       # noqa: F401 (fixtures)


def error_line(capsys, command):
    """The one line a command printed on stderr (asserts that it is one error line)."""
    err = capsys.readouterr().err
    assert err.startswith("%s: error: " % command) and err.count("\n") == 1, err
    return err


@pytest.fixture
def run(model):
    """A finished 3-step run (test_cli's model fixture): its output folder."""
    return os.path.dirname(model)


# 3. Non-finite training ------------------------------------------------------------------

def test_diverging_training_stops_and_keeps_the_last_good_checkpoint(tmp_path, clean, capsys):
    out = str(tmp_path / "lr")
    assert train.main(["--pairs", "gaussian", "--noise-level", "0.5", "--steps", "60",
                       "--lr", "1000", "-o", out, clean] + SMALL) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("cupyden-train: error: training diverged at step ")
    assert "lower --lr" in err
    for name in ("model.h5", "checkpoint.h5"):          # what was written is finite
        if os.path.exists(os.path.join(out, name)):
            ck = load_checkpoint(os.path.join(out, name))
            assert ck["step"] < 60


def _poison(path, dataset=None, loss_scale=None):
    with h5py.File(path, "r+") as f:
        if dataset:
            f[dataset][(0,) * f[dataset].ndim] = numpy.nan
        if loss_scale is not None:
            prov = json.loads(f.attrs["provenance"])
            prov["loss_scale"] = {"scale": loss_scale, "clean": 0, "skipped": 0}
            f.attrs["provenance"] = json.dumps(prov)


@pytest.mark.parametrize("where", ["adam/v/conv1.w", "weights/conv2.b", "loss_scale"])
def test_non_finite_checkpoint_is_refused(tmp_path, run, clean, capsys, where):
    ck = os.path.join(run, "checkpoint.h5")
    if where == "loss_scale":
        _poison(ck, loss_scale=float("nan"))
    else:
        _poison(ck, where)
    before = open(ck, "rb").read()
    assert train.main(["--pairs", "gaussian", "--noise-level", "0.5", "--steps", "6",
                       "-o", run, clean, "--resume", ck] + SMALL) == 2
    err = error_line(capsys, "cupyden-train")
    assert "NaN or Inf" in err and ("loss scale" if where == "loss_scale" else where) in err
    assert open(ck, "rb").read() == before                 # not overwritten


def test_non_finite_model_is_refused_by_denoise(tmp_path, run, capsys):
    model = os.path.join(run, "model.h5")
    _poison(model, "weights/conv3.w")
    mic = write(tmp_path / "m.mrc", smooth((40, 40)) + 5)
    assert denoise.main([model, mic, "-o", str(tmp_path / "d"), "-d", "-1", "--no-progress"]) == 2
    assert "NaN or Inf values (weights/conv3.w)" in error_line(capsys, "cupyden-denoise")


# 4. User mistakes that ended in tracebacks -----------------------------------------------

def test_identical_views_are_refused_up_front(tmp_path, clean, capsys):
    rng = numpy.random.default_rng(0)
    even = write(tmp_path / "m_EVN.mrc", rng.poisson(30, (96, 96)).astype(numpy.float32))
    copy = str(tmp_path / "copy")
    os.mkdir(copy)
    shutil.copy(even, os.path.join(copy, "m_ODD.mrc"))
    out = str(tmp_path / "o")
    assert train.main(["--pairs", "halves", even, "--odd", even, "-o", out] + SMALL) == 2
    assert "same files are given as even and odd" in error_line(capsys, "cupyden-train")
    assert train.main(["--pairs", "halves", even, "--odd", copy, "-o", out] + SMALL) == 2
    assert "the two views are identical" in error_line(capsys, "cupyden-train")
    assert train.main(["--pairs", "gaussian", "--noise-level", "0", clean, "-o", out] + SMALL) == 2
    assert "the two views are identical" in error_line(capsys, "cupyden-train")
    assert os.listdir(out) == []                       # refused before any output


def test_evaluate_refuses_raw_as_its_own_half_b(tmp_path, capsys):
    from cupyden.cli import evaluate

    rng = numpy.random.default_rng(0)
    raw = write(tmp_path / "raw.mrc", rng.poisson(30, (96, 96)).astype(numpy.float32), 2.0)
    den = write(tmp_path / "den.mrc", smooth((96, 96)), 2.0)
    assert evaluate.main([raw, den, "--half-b", raw, "-o", str(tmp_path / "e")]) == 2
    assert "the two views are identical" in error_line(capsys, "cupyden-evaluate")
    assert evaluate.main([raw, den, "--history", raw, "-o", str(tmp_path / "e")]) == 2
    assert "not a history.csv" in error_line(capsys, "cupyden-evaluate")


def test_impossible_settings_are_one_line(tmp_path, clean, run, capsys):
    out = str(tmp_path / "o")
    assert train.main(["--pairs", "gaussian", clean, "-o", out, "--depth", "1"] + SMALL[2:]) == 2
    assert "--depth must be >= 2" in error_line(capsys, "cupyden-train")
    assert train.main(["--pairs", "gaussian", clean, "-o", out, "--bin", "200"] + SMALL) == 2
    assert "cannot be binned by 200" in error_line(capsys, "cupyden-train")
    assert denoise.main([os.path.join(run, "model.h5"), clean, "-o", out, "--bin", "200",
                         "-d", "-1", "--no-progress"]) == 2
    assert "cannot be binned by 200" in error_line(capsys, "cupyden-denoise")


def test_export_of_a_model_without_a_pytorch_twin(tmp_path):
    from cupyden.cli import export
    from cupyden.io.checkpoint import save_checkpoint
    from cupyden.models import F2FdUNet

    model = F2FdUNet(ndim=2, nf=2, depth=5)
    path = str(tmp_path / "f2fd.h5")
    save_checkpoint(path, model.state(), {"model": model.config()})
    assert export.main([path]) == 0
    description = json.load(open(str(tmp_path / "f2fd.json")))
    assert description["pytorch"] is None and description["model"]["arch"] == "f2fd-unet"
    assert len(numpy.load(str(tmp_path / "f2fd.npz")).files) == len(model.state())


# 6. Not an MRC file; warnings as one line -------------------------------------------------

@pytest.mark.parametrize("content, what", [
    (b"\x89PNG\r\n\x1a\n" + bytes(2000), "not an MRC file (it is a PNG image)"),
    (bytes(2000), "not an MRC file (no MAP ID in the header, and no image in the data)")])
def test_not_an_mrc_file_is_one_line(tmp_path, run, capsys, content, what):
    path = tmp_path / "fake.mrc"
    path.write_bytes(content)
    out = str(tmp_path / "o")
    assert denoise.main([os.path.join(run, "model.h5"), str(path), "-o", out, "-d", "-1",
                         "--no-progress"]) == 2
    assert what in error_line(capsys, "cupyden-denoise")
    assert train.main(["--pairs", "gaussian", str(path), "-o", out] + SMALL) == 2
    assert what in error_line(capsys, "cupyden-train")


def test_permissive_read_warns_in_one_line(tmp_path, run, capsys):
    path = write(tmp_path / "old.mrc", smooth((48, 48)) + 5)
    with open(path, "r+b") as f:                 # an old writer: no "MAP " ID, no stamp
        f.seek(208)
        f.write(bytes(8))
    assert denoise.main([os.path.join(run, "model.h5"), path, "-o", str(tmp_path / "d"),
                         "-d", "-1", "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("cupyden-denoise: warning: ")
    assert "read permissively" in err[0]


def test_run_shows_warnings_in_one_line_and_clears_bars_before_an_error(capsys):
    import warnings

    from tqdm import tqdm

    from cupyden.cli.common import run

    def body(args):
        warnings.warn("first line\nsecond line")
        numpy.log10(numpy.zeros(1))                     # RuntimeWarning: divide by zero
        bar = tqdm(total=10, file=None)                 # a bar left open by the failure
        bar.update(3)
        raise InputError("something is wrong")

    assert run("Usage:\n  prog\n", [], body, "prog") == 2
    err = capsys.readouterr().err
    lines = err.rstrip("\n").split("\n")
    assert lines[0].startswith("prog: warning: first line second line (")
    assert lines[1].startswith("prog: warning: divide by zero encountered in log10 (")
    assert len(lines) == 3
    cleared, message = lines[2].rsplit("\r", 1)         # the bar's line, then erased
    assert message == "prog: error: something is wrong" and cleared.split("\r")[-1].strip() == ""
    assert not list(getattr(tqdm, "_instances", ()))


# 7. --resume into a new folder -----------------------------------------------------------

def _resume(tmp_path, run, clean, out, steps):
    return train.main(["--pairs", "gaussian", "--noise-level", "0.5", "--steps", str(steps),
                       "-o", str(tmp_path / out), clean, "--resume",
                       os.path.join(run, "checkpoint.h5")] + SMALL)


def test_resume_of_a_complete_run_into_a_new_folder(tmp_path, run, clean, capsys):
    assert _resume(tmp_path, run, clean, "b", 3) == 0
    assert "the run is complete" in capsys.readouterr().out
    b = tmp_path / "b"
    assert open(b / "model.h5", "rb").read() == open(os.path.join(run, "model.h5"), "rb").read()
    assert [r["step"] for r in read_history(str(b / "history.csv"))] == [3]


def test_resume_without_improvement_keeps_the_best_model(tmp_path, run, clean):
    with h5py.File(os.path.join(run, "checkpoint.h5"), "r+") as f:   # validation can't beat 0
        prov = json.loads(f.attrs["provenance"])
        prov["best"] = [0.0, 3]
        f.attrs["provenance"] = json.dumps(prov)
    assert _resume(tmp_path, run, clean, "c", 6) == 0
    c = tmp_path / "c"
    assert load_checkpoint(str(c / "model.h5"))["step"] == 3        # the earlier best
    assert load_checkpoint(str(c / "checkpoint.h5"))["step"] == 6
    os.remove(os.path.join(run, "model.h5"))                # no earlier best model at all:
    assert _resume(tmp_path, run, clean, "d", 6) == 0       # the next validation writes one
    assert load_checkpoint(str(tmp_path / "d" / "model.h5"))["step"] == 6


# 8. cupyden-evaluate: binned outputs, unknown pixel sizes; --angpix -------------------------

def strict_json(path):
    """Parse a JSON file, refusing NaN and Infinity (not JSON)."""
    def refuse(name):
        raise ValueError("%s in %s" % (name, path))
    return json.loads(open(path).read(), parse_constant=refuse)


def test_evaluate_accepts_denoise_bin_4_output_of_an_odd_size(tmp_path, run):
    from cupyden.cli import evaluate

    rng = numpy.random.default_rng(1)
    raw = write(tmp_path / "raw.mrc", (smooth((198, 173)) + rng.poisson(30, (198, 173))).astype(numpy.float32), 2.0)
    half_b = write(tmp_path / "b.mrc", (smooth((198, 173)) + rng.poisson(30, (198, 173))).astype(numpy.float32), 2.0)
    assert denoise.main([os.path.join(run, "model.h5"), raw, "-o", str(tmp_path / "d"),
                         "--bin", "4", "-d", "-1", "--no-progress"]) == 0
    den = str(tmp_path / "d" / "raw.mrc")
    with mrcfile.open(den) as m:
        assert m.data.shape == (49, 43)              # sides cropped to multiples of 4
    out = str(tmp_path / "e")
    assert evaluate.main([raw, den, "--half-b", half_b, "-o", out]) == 0
    m = strict_json(os.path.join(out, "metrics.json"))
    assert m["bin"] == 4 and m["pixel_size_A"] == 8.0
    assert m["metrics"]["denoised"]["frc_0.143_A"] >= 16.0           # Nyquist at 8 Å/px


def test_evaluate_without_a_pixel_size_reports_per_pixel(tmp_path):
    from cupyden.cli import evaluate

    rng = numpy.random.default_rng(2)
    signal = smooth((96, 96)) * 3
    raw = write(tmp_path / "raw.mrc", (signal + rng.poisson(30, (96, 96))).astype(numpy.float32), 0.0)
    b = write(tmp_path / "b.mrc", (signal + rng.poisson(30, (96, 96))).astype(numpy.float32), 0.0)
    den = write(tmp_path / "den.mrc", (signal + 30).astype(numpy.float32), 0.0)
    out = str(tmp_path / "e")
    assert evaluate.main([raw, den, "--half-b", b, "-o", out]) == 0
    m = strict_json(os.path.join(out, "metrics.json"))
    assert m["pixel_size_A"] is None
    d = m["metrics"]["denoised"]
    assert 2.0 <= d["frc_0.5_px"] < 40 and "frc_0.5_A" not in d         # px, finite
    assert "pixel size unknown" in open(os.path.join(out, "report.md")).read()
    out2 = str(tmp_path / "e2")
    assert evaluate.main([raw, den, "--half-b", b, "--angpix", "1.5", "-o", out2]) == 0
    d2 = strict_json(os.path.join(out2, "metrics.json"))["metrics"]["denoised"]
    assert d2["frc_0.5_A"] == pytest.approx(1.5 * d["frc_0.5_px"])


def test_train_names_angpix_for_an_unknown_pixel_size(tmp_path, capsys):
    counts = write(tmp_path / "c.mrc", numpy.random.default_rng(3).poisson(30, (96, 96)).astype(numpy.float32), 0.0)
    out = str(tmp_path / "o")
    opts = ["--pairs", "count-split", counts, "--dose", "30", "-o", out] + SMALL
    assert train.main(opts) == 2
    assert "pass --angpix" in error_line(capsys, "cupyden-train")
    assert train.main(opts + ["--angpix", "1.0", "--steps", "3"]) == 0
    e = strict_json(os.path.join(out, "evaluation.json"))
    assert e["pixel_size"] == 1.0


def test_json_has_null_for_nan_and_inf():
    from cupyden.metrics import to_json

    text = to_json({"a": float("nan"), "b": [float("inf"), numpy.float32(1.5)], "c": numpy.int64(3)})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": 3}


# 9. The smaller ones ---------------------------------------------------------------------

def test_int8_with_negative_values_is_not_counts(tmp_path, capsys):
    from cupyden.io.patches import normalization

    rng = numpy.random.default_rng(0)       # unsigned bytes stored as mode 0 read as signed
    wrapped = rng.poisson(120, (96, 96)).clip(0, 255).astype(numpy.uint8).view(numpy.int8)
    path = write(tmp_path / "i8.mrc", wrapped)
    assert train.main([path, "-o", str(tmp_path / "o")] + SMALL) == 2
    err = error_line(capsys, "cupyden-train")
    assert "i8.mrc: " in err and "negative: not electron counts" in err
    with pytest.raises(InputError, match="mic7: the image is constant"):
        normalization(numpy.ones((8, 8)), name="mic7")


def test_cluster_progress_and_unknown_pixel_size(tmp_path, monkeypatch, capsys):
    from cupyden import report
    from cupyden.cli import cluster

    titles = []
    save = report.save_png
    monkeypatch.setattr(report, "save_png", lambda fig, path: (
        titles.append(fig._suptitle.get_text() if fig._suptitle else ""), save(fig, path)))
    stack = write(tmp_path / "s.mrcs", numpy.random.default_rng(0).standard_normal(
        (8, 16, 16)).astype(numpy.float32), 0.0)
    assert cluster.main([stack, "-k", "2", "--rounds", "1", "--steps", "2", "--box", "8",
                         "-d", "-1", "-o", str(tmp_path / "c")]) == 0
    assert "class averages (pixel size unknown, 16 px)" in titles
    assert "round 1 of 1" in capsys.readouterr().err          # the progress bar


def test_export_creates_its_folder(tmp_path, run):
    from cupyden.cli import export

    base = str(tmp_path / "new" / "deeper" / "m")
    assert export.main([os.path.join(run, "model.h5"), "-o", base]) == 0
    assert os.path.exists(base + ".npz") and os.path.exists(base + ".json")


def test_only_minus_one_means_cpu(tmp_path, clean, capsys):
    from cupyden import backend

    assert backend.select_device("-1").ordinal == -1
    with pytest.raises(InputError, match="-1 \\(CPU\\) or a GPU number >= 0, got -2"):
        backend.select_device("-2")
    opts = [o if o != "-1" else "-2" for o in SMALL]
    assert train.main(["--pairs", "gaussian", clean, "-o", str(tmp_path / "o")] + opts) == 2
    assert "got -2" in error_line(capsys, "cupyden-train")


def test_training_into_a_finished_run_needs_overwrite(tmp_path, run, clean, capsys):
    before = open(os.path.join(run, "model.h5"), "rb").read()
    opts = ["--pairs", "gaussian", "--noise-level", "0.5", "--steps", "3", "-o", run, clean] + SMALL
    assert train.main(opts + ["--seed", "1"]) == 2
    assert "already holds model.h5, checkpoint.h5" in error_line(capsys, "cupyden-train")
    assert open(os.path.join(run, "model.h5"), "rb").read() == before
    assert train.main(opts + ["--seed", "1", "--overwrite"]) == 0
    assert open(os.path.join(run, "model.h5"), "rb").read() != before


def test_simulate_writes_even_and_odd_sums(tmp_path):
    from cupyden.cli import simulate

    out = str(tmp_path / "sim")
    assert simulate.main([out, "--size", "64", "--pixel-size", "4", "--frames", "5",
                          "--particles", "1", "--even-odd", "-d", "-1", "--no-progress"]) == 0
    with mrcfile.open(os.path.join(out, "sim_00000_movie.mrcs")) as m:
        movie = m.data.astype(numpy.float64)
    for name, frames in (("even", movie[0::2]), ("odd", movie[1::2])):
        with mrcfile.open(os.path.join(out, "sim_00000_%s.mrc" % name)) as m:
            assert numpy.array_equal(m.data, frames.sum(0))
            assert float(m.voxel_size.x) == pytest.approx(4.0)


def _border_ratio(image):
    """Mean over the four sides of std(outermost row or column) / median interior std."""
    rows, cols = image.std(axis=1), image.std(axis=0)
    interior = numpy.median(numpy.concatenate([rows[16:-16], cols[16:-16]]))
    return float(numpy.mean([rows[0], rows[-1], cols[0], cols[-1]]) / interior)


def test_denoised_borders_are_as_quiet_as_the_interior():
    """A DnCNN trained (Noise2Noise) on flat Poisson noise, then run on flat noise: the
    outermost rows kept ~2x the interior's std with the networks' zero padding at the image
    border; mirrored at the border (infer.denoise_array) they match the interior."""
    from cupyden.infer import denoise_array
    from cupyden.io.patches import normalization
    from cupyden.models import DnCNN
    from cupyden.optim import Adam, Parameters
    from cupyden.training import train_step

    rng = numpy.random.default_rng(0)

    def noise(n, side):                                  # Poisson(20), normalised
        return ((rng.poisson(20.0, (n, 1, side, side)) - 20.0) / 20 ** 0.5).astype(numpy.float32)

    model = DnCNN(depth=3, width=8, seed=0).to(numpy, numpy.float32).train()
    params = Parameters(model)
    opt = Adam(params, lr=3e-3)
    for _ in range(120):
        train_step(model, params, opt, "mse", noise(8, 24), noise(8, 24))
    model.eval()
    image = rng.poisson(20.0, (256, 256)).astype(numpy.float32)
    denoised, _ = denoise_array(model, image, numpy, tile=96)
    assert denoised.std() < 0.4 * image.std()                     # it does denoise
    assert _border_ratio(denoised) < 1.15
    norm = normalization(image)                                   # zero padding, as before
    zero_padded = norm.invert(model.forward(norm.apply(image)[None, None])[0, 0])
    assert _border_ratio(zero_padded) > 1.4


def test_border_mirroring_is_the_same_on_every_device(xp):
    """denoise_array's mirrored border (xp.pad, mode "reflect") on NumPy and CuPy equals
    one NumPy pass over the mirrored image."""
    from cupyden.backend import to_host
    from cupyden.infer import denoise_array, halo_for
    from cupyden.io.patches import normalization
    from cupyden.models import DnCNN

    from conftest import rel

    model = DnCNN(depth=4, width=4, seed=3).to(xp, numpy.float32).eval()
    reference = DnCNN(depth=4, width=4, seed=3).to(numpy, numpy.float32).eval()
    image = smooth((70, 90), 4) + 10
    tiled, _ = denoise_array(model, image, xp, tile=32)
    norm, h = normalization(image), halo_for(model)
    padded = numpy.pad(norm.apply(image), h, mode="reflect")
    whole = norm.invert(reference.forward(padded[None, None])[0, 0, h:-h, h:-h])
    assert rel(to_host(tiled), whole) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_training_stops_on_divergence_and_resumes_cleanly(tmp_path, clean, capsys, precision):
    """On a GPU: the divergence check at validation (fp32: the training loss; fp16: loss
    scaling skips overflowing steps, the weights and Adam moments are checked) and a clean
    resume of a finished fp16 checkpoint (its loss scale is checked finite)."""
    from cupyden import backend

    if backend.gpu_count() == 0:
        pytest.skip("no GPU")
    if precision == "fp16":
        from cupyden.kernels import cudnn_fe
        if cudnn_fe.problem() is not None:
            pytest.skip(cudnn_fe.problem())
    gpu = [o if o != "-1" else "0" for o in SMALL] + ["--precision", precision]
    base = ["--pairs", "gaussian", "--noise-level", "0.5", clean]
    out = str(tmp_path / "lr")
    rc = train.main(base + ["--steps", "60", "--lr", "1000", "-o", out] + gpu)
    err = capsys.readouterr().err
    assert rc in (0, 2)
    if rc == 2:
        assert err.strip().splitlines()[-1].startswith("cupyden-train: error: training diverged")
    for name in ("model.h5", "checkpoint.h5"):             # never a NaN checkpoint
        if os.path.exists(os.path.join(out, name)):
            load_checkpoint(os.path.join(out, name))
    ok = str(tmp_path / "ok")
    assert train.main(base + ["--steps", "3", "-o", ok] + gpu) == 0
    assert train.main(base + ["--steps", "6", "-o", ok, "--resume",
                              os.path.join(ok, "checkpoint.h5")] + gpu) == 0
    assert load_checkpoint(os.path.join(ok, "checkpoint.h5"))["step"] == 6
