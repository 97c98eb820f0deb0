"""The weights' exponential moving average (``--ema``): the update against a loop, the
swap in and out of a model, and what ``fit`` does with it (validation, model.h5, resume,
data parallel, the command's checks)."""

import os

import numpy
import pytest

from cupyden import training
from cupyden.backend import to_host
from cupyden.cli import train as train_cli
from cupyden.errors import InputError
from cupyden.functional.conv import set_precision
from cupyden.io.checkpoint import load_checkpoint, save_checkpoint
from cupyden.io.store import PatchStore
from cupyden.models import DnCNN, build_model
from cupyden.optim import Parameters, WeightAverage
from cupyden.optim.ema import decay_at, ema_step_reference
from cupyden.pipeline.train import check_resume
from cupyden.training import evaluate, fit

from conftest import make_store, smooth, write

QUIET = lambda *a: None      # noqa: E731
CONFIG = {"model": {"arch": "dncnn", "depth": 2, "width": 4, "seed": 0}, "loss": "mse",
          "lr": 0.02, "batch_size": 4, "steps": 8, "val_every": 2, "val_patches": 4,
          "seed": 0}


def test_decay_warms_up_as_tensorflow_does():
    # min(D, (1 + t) / (10 + t)): 2/11 at step 1, 0.9 at step 80, D from step 8990 (D = 0.999)
    assert decay_at(0.999, 1) == 2 / 11
    assert decay_at(0.999, 80) == pytest.approx(0.9, rel=1e-15)
    assert decay_at(0.999, 8989) < 0.999 and decay_at(0.999, 8990) == 0.999
    assert decay_at(0.5, 8) == 0.5 and decay_at(0.5, 7) == 8 / 17     # t >= 8: D


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_update_equals_a_loop_over_elements(xp, dtype):
    model = DnCNN(3, 4, seed=1).to(xp, dtype)
    params = Parameters(model)
    ema = WeightAverage(params, 0.7)
    rng = numpy.random.default_rng(0)
    want = to_host(params.data).astype(numpy.float64)            # a_0: the weights at the start
    for t in range(1, 6):                                        # steps 1..5: d = 2/11 .. 0.4
        params.data[...] = xp.asarray(rng.standard_normal(params.size), dtype)
        ema.update(t)
        w = to_host(params.data)
        d = min(0.7, (1 + t) / (10 + t))
        for i in range(params.size):
            want[i] = d * want[i] + (1 - d) * w[i]
    got = to_host(ema.average)
    assert got.dtype == dtype
    tol = 1e-15 if dtype == numpy.float64 else 1e-6
    assert numpy.allclose(got, want, rtol=tol, atol=tol)
    assert numpy.abs(got - to_host(params.data)).max() > 0.1    # not the last weights


@pytest.mark.gpu
def test_fused_update_equals_the_reference():
    cupy = pytest.importorskip("cupy")
    rng = numpy.random.default_rng(2)
    a, w = rng.standard_normal((2, 10000)).astype(numpy.float32)
    ref = a.copy()
    for t in range(1, 8):
        ema_step_reference(ref, w * t, decay_at(0.999, t))
    params = Parameters(DnCNN(2, 4, seed=0).to(cupy, numpy.float32))
    ema = WeightAverage(params, 0.999)
    assert ema.fused
    da, dw = cupy.asarray(a), cupy.asarray(w)
    from cupyden.kernels.ema import ema_step
    for t in range(1, 8):
        ema_step(da, dw * t, decay_at(0.999, t))
    assert numpy.array_equal(to_host(da), ref)                  # the same roundings


def test_float16_model_averages_its_float32_masters():
    """A float16 model: the average follows the float32 master weights; swapped in, the
    model computes with it rounded to float16, and afterwards with its own weights."""
    model = DnCNN(3, 4, seed=1).to(numpy, numpy.float16)
    params = Parameters(model)
    assert params.master is not None and params.data.dtype == numpy.float16
    ema = WeightAverage(params, 0.6)
    assert ema.average.dtype == numpy.float32
    want = params.master.astype(numpy.float64)
    rng = numpy.random.default_rng(3)
    for t in range(1, 4):
        params.master[...] = rng.standard_normal(params.size).astype(numpy.float32)
        params.sync()
        ema.update(t)
        d = min(0.6, (1 + t) / (10 + t))
        want = d * want + (1 - d) * params.master
    assert numpy.allclose(ema.average, want, rtol=1e-6, atol=1e-6)
    before = params.data.copy()
    with ema.swapped():
        assert numpy.array_equal(params.data, ema.average.astype(numpy.float16))
        assert numpy.array_equal(model.state()["conv1.w"],
                                 params.view("conv1.w", ema.average.astype(numpy.float16)))
    assert numpy.array_equal(params.data, before)


def test_swap_restores_float32_weights_bit_for_bit():
    params = Parameters(DnCNN(3, 4, seed=1).to(numpy, numpy.float32))
    ema = WeightAverage(params, 0.9)
    ema.average[...] = 0.5
    before = params.data.copy()
    with pytest.raises(RuntimeError):                  # also when the block fails
        with ema.swapped():
            assert (params.data == 0.5).all()
            raise RuntimeError
    assert numpy.array_equal(params.data, before)


def test_decay_outside_0_1_is_refused():
    params = Parameters(DnCNN(2, 4, seed=0).to(numpy, numpy.float32))
    for d in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            WeightAverage(params, d)


def _fit(tmp_path, name, store, record=None, **config):
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    history = fit(store, str(out), dict(CONFIG, **config), numpy, progress=False, log=QUIET,
                  **({"resume": record} if isinstance(record, str) else {}))
    return history, load_checkpoint(str(out / "model.h5")), load_checkpoint(str(out / "checkpoint.h5"))


@pytest.fixture
def store(tmp_path):
    s = PatchStore(make_store(tmp_path / "s.h5", n_train=24, n_val=4))
    yield s
    s.close()


def test_decay_0_trains_as_without_the_option(tmp_path, store):
    """ema 0 (or absent) is today's training; and with an average, the weights themselves
    train exactly as without one (the average is only read)."""
    h0, m0, c0 = _fit(tmp_path, "absent", store)
    h1, m1, c1 = _fit(tmp_path, "zero", store, ema=0.0)
    h2, m2, c2 = _fit(tmp_path, "avg", store, ema=0.9)
    assert [r["train_loss"] for r in h0] == [r["train_loss"] for r in h1]
    assert [r["val_loss"] for r in h0] == [r["val_loss"] for r in h1]
    for name in c0["weights"]:
        assert numpy.array_equal(c0["weights"][name], c1["weights"][name])
        assert numpy.array_equal(m0["weights"][name], m1["weights"][name])
        assert numpy.array_equal(c0["weights"][name], c2["weights"][name])   # same training
    assert c0["average"] is None and c1["average"] is None
    assert [r["train_loss"] for r in h0] == [r["train_loss"] for r in h2]
    assert [r["val_loss"] for r in h0] != [r["val_loss"] for r in h2]   # the average scored


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_model_h5_holds_the_average_that_validation_scored(tmp_path, store, monkeypatch, xp,
                                                            precision):
    """model.h5 is the loop-reference average of the weights after every step (keep=last:
    the last), not the last weights; evaluated, it gives the validation loss of its row;
    and every step starts from the weights the previous one left (the swap for validation
    restores them; float16: the model's weights are its rounded float32 masters)."""
    if precision == "fp16":
        if xp is numpy:
            pytest.skip("fp16 training needs a GPU with cuDNN; the CPU runs fp32")
        from cupyden.kernels import cudnn_fe
        if cudnn_fe.problem() is not None:
            pytest.skip(cudnn_fe.problem())
    seen = []
    step = training.train_step

    def recording_step(model, params, *args, **kwargs):
        if not seen:
            seen.append(to_host(params.trained).copy())    # a_0: the initial weights
        assert numpy.array_equal(to_host(params.trained), seen[-1])
        assert numpy.array_equal(to_host(params.data),
                                 seen[-1].astype(to_host(params.data).dtype))
        value = step(model, params, *args, **kwargs)
        seen.append(to_host(params.trained).copy())
        return value

    monkeypatch.setattr(training, "train_step", recording_step)
    out = tmp_path / "last"
    out.mkdir()
    config = dict(CONFIG, ema=0.8, keep="last", precision=precision)
    try:
        history = fit(store, str(out), config, xp, progress=False, log=QUIET)
    finally:
        set_precision("fp32", xp)
    model_h5 = load_checkpoint(str(out / "model.h5"))
    ck = load_checkpoint(str(out / "checkpoint.h5"))
    want = seen[0].astype(numpy.float64)
    for t, w in enumerate(seen[1:], 1):
        d = min(0.8, (1 + t) / (10 + t))
        want = d * want + (1 - d) * w
    params = Parameters(build_model(CONFIG["model"]).to(numpy, numpy.float32),
                        filters_channels_last=xp is not numpy)    # the run's flat layout
    flat = numpy.zeros(params.size, numpy.float32)
    params.load_named(flat, model_h5["weights"])
    assert len(seen) == 9 and model_h5["step"] == 8
    assert numpy.allclose(flat, want, rtol=1e-5, atol=1e-7)
    params.load_named(flat, ck["average"])
    assert numpy.allclose(flat, want, rtol=1e-5, atol=1e-7)
    params.load_named(flat, ck["weights"])
    assert numpy.array_equal(flat, seen[-1])               # checkpoint.h5: the weights
    assert numpy.abs(flat - want).max() > 1e-3             # which differ from the average
    try:
        dtype = set_precision(precision, xp)
        model = build_model(model_h5["config"]["model"]).to(xp, dtype)
        model.load_state(model_h5["weights"])
        vx, vy = (xp.asarray(v) for v in store.read("val", numpy.arange(4)))
        val = evaluate(model, "mse", vx, vy, 4)
    finally:
        set_precision("fp32", xp)
    assert val == pytest.approx(history[-1]["val_loss"], rel=1e-6)


def test_resume_continues_the_average_exactly(tmp_path, store):
    """8 steps equal 4 steps resumed for 4 more: weights, average, model.h5."""
    _, m_whole, c_whole = _fit(tmp_path, "whole", store, ema=0.9)
    _fit(tmp_path, "half", store, ema=0.9, steps=4)
    _, m_res, c_res = _fit(tmp_path, "half", store, str(tmp_path / "half" / "checkpoint.h5"),
                           ema=0.9)
    assert c_res["step"] == 8 and m_res["step"] == m_whole["step"]
    for name in c_whole["weights"]:
        assert numpy.array_equal(c_res["weights"][name], c_whole["weights"][name])
        assert numpy.array_equal(c_res["average"][name], c_whole["average"][name])
        assert numpy.array_equal(m_res["weights"][name], m_whole["weights"][name])


def test_resume_with_another_decay_is_refused(tmp_path, store):
    _fit(tmp_path, "run", store, ema=0.9, steps=4)
    path = str(tmp_path / "run" / "checkpoint.h5")
    with pytest.raises(InputError, match="ema"):
        check_resume(path, dict(load_checkpoint(path)["config"], ema=0.99))
    with pytest.raises(InputError, match="ema"):
        check_resume(path, dict(load_checkpoint(path)["config"], ema=0.0))
    check_resume(path, load_checkpoint(path)["config"])


def test_a_checkpoint_from_before_the_option_resumes_without_it(tmp_path):
    old = {"model": CONFIG["model"], "lr": 0.01}               # no "ema": written before it
    path = str(tmp_path / "old.h5")
    save_checkpoint(path, DnCNN(2, 4, seed=0).to(numpy, numpy.float32).state(), old)
    check_resume(path, dict(old, ema=0.0))
    with pytest.raises(InputError, match="ema"):
        check_resume(path, dict(old, ema=0.999))


def test_two_ranks_validate_the_same_average(tmp_path):
    """Data parallel: every rank averages the same weights, so the validation losses (each
    rank scores its share with its own average) equal one process's."""
    from test_distributed import run_ranks

    path = make_store(tmp_path / "s.h5")
    config = dict(CONFIG, model={"arch": "dncnn", "depth": 3, "width": 4, "seed": 0},
                  batch_size=8, steps=6, val_every=3, val_patches=9, ema=0.8, lr=3e-3)
    for name in ("one", "rank0", "rank1"):
        (tmp_path / name).mkdir()
    store = PatchStore(path)
    want = fit(store, str(tmp_path / "one"), config, numpy, progress=False, log=QUIET)
    store.close()

    def rank(r, comm):
        s = PatchStore(path)
        try:
            return fit(s, str(tmp_path / ("rank%d" % r)), config, numpy, progress=False,
                       log=QUIET, comm=comm)
        finally:
            s.close()

    got = run_ranks(2, rank)
    assert [r["val_loss"] for r in got[0]] == [r["val_loss"] for r in got[1]]
    for a, b in zip(got[0], want):
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-5 * b["val_loss"]
    one = load_checkpoint(str(tmp_path / "one" / "model.h5"))["weights"]
    two = load_checkpoint(str(tmp_path / "rank0" / "model.h5"))["weights"]
    for name in one:
        assert numpy.allclose(two[name], one[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("value", ["1.5", "-0.1", "1"])
def test_command_refuses_a_decay_outside_0_1(tmp_path, capsys, value):
    clean = write(tmp_path / "clean.mrc", smooth((96, 96)), 2.0)
    code = train_cli.main(["--pairs", "gaussian", clean, "-d", "-1", "--no-progress",
                           "--ema", value, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "--ema" in err and "(0, 1)" in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "patches.h5")


def test_command_records_the_decay_and_keeps_the_average(tmp_path):
    clean = write(tmp_path / "clean.mrc", smooth((96, 96)), 2.0)
    out = str(tmp_path / "run")
    assert train_cli.main(["--pairs", "gaussian", "--noise-level", "0.5", clean, "--depth", "3",
                           "--width", "4", "--patch-size", "16", "--stride", "8",
                           "--batch-size", "4", "--val-every", "3", "--steps", "6", "-d", "-1",
                           "--no-progress", "--val-fraction", "0.25", "--holdout-fraction",
                           "0.25", "--ema", "0.9", "--keep", "last", "-o", out]) == 0
    model_h5 = load_checkpoint(os.path.join(out, "model.h5"))
    ck = load_checkpoint(os.path.join(out, "checkpoint.h5"))
    assert model_h5["config"]["ema"] == 0.9
    for name in ck["average"]:
        assert numpy.array_equal(model_h5["weights"][name], ck["average"][name])
