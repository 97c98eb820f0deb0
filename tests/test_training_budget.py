"""A time budget ends the cosine learning rate (issue 15; Li, Yumer & Ramanan, ICLR 2020).

Time is made deterministic: ``time.perf_counter`` in ``cupyden.training`` reads a clock
that every training step advances by one second, so the run trains at exactly 1 step/s.
"""

import math
import os

import numpy
import pytest

from cupyden import training
from cupyden.io.checkpoint import load_checkpoint
from cupyden.io.store import PatchStore
from cupyden.training import fit, read_history

from conftest import make_store


@pytest.fixture
def clock(monkeypatch):
    """One second per training step, none elsewhere."""
    now = [0.0]
    step = training.train_step

    def timed_step(*args, **kwargs):
        now[0] += 1.0
        return step(*args, **kwargs)

    monkeypatch.setattr(training.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(training, "train_step", timed_step)
    return now


def test_cosine_ends_when_the_time_budget_does(tmp_path, clock):
    store = PatchStore(make_store(tmp_path / "s.h5", n_train=24, n_val=4))
    lr0, warmup, budget = 1e-3, 2, 30
    config = {"model": {"arch": "dncnn", "depth": 2, "width": 4, "seed": 0}, "loss": "mse",
              "lr": lr0, "batch_size": 4, "steps": 1000000, "val_every": 5, "val_patches": 4,
              "seed": 0, "lr_schedule": "cosine", "lr_options": {"warmup": warmup},
              "max_seconds": budget}
    try:
        history = fit(store, str(tmp_path), config, numpy, progress=False, log=lambda *a: None)
    finally:
        store.close()
    # 1 step/s: the run stops after step 31 (31 s > 30 s); from the second validation on
    # (the first interval, which holds cuDNN's plan tuning on a GPU, is not used),
    # T = step + (30 - step) = 30
    assert [r["step"] for r in history] == [5, 10, 15, 20, 25, 30, 31]

    def cosine(t, T):
        return lr0 * (1 + math.cos(math.pi * (t - warmup) / (T - warmup))) / 2

    for r in history[:2]:                                             # before any estimate
        assert r["lr"] == pytest.approx(cosine(r["step"], 1000000))
    for r in history[2:-1]:
        assert r["lr"] == pytest.approx(cosine(r["step"], 30), rel=1e-9, abs=1e-15)
    rows = read_history(os.path.join(str(tmp_path), "history.csv"))
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)             # min_lr at the end
    assert rows[-3]["lr"] > 0.05 * lr0                                  # and not before
    ck = load_checkpoint(os.path.join(str(tmp_path), "checkpoint.h5"))
    assert ck["provenance"]["schedule"]["T"] == 31      # out of time: T = the last step,
    #                                                     kept for --resume


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_chooses_what_model_h5_holds(tmp_path, keep):
    """keep="last": model.h5 is the last validation's weights (with a budgeted cosine, the
    annealed end), not the lowest validation loss's."""
    store = PatchStore(make_store(tmp_path / "s.h5", n_train=24, n_val=4))
    config = {"model": {"arch": "dncnn", "depth": 2, "width": 4, "seed": 0}, "loss": "mse",
              "lr": 0.05, "batch_size": 4, "steps": 12, "val_every": 4, "val_patches": 4,
              "seed": 0, "keep": keep}
    try:
        history = fit(store, str(tmp_path), config, numpy, progress=False, log=lambda *a: None)
    finally:
        store.close()
    best = min(history, key=lambda r: r["val_loss"])["step"]
    ck = load_checkpoint(os.path.join(str(tmp_path), "model.h5"))
    assert ck["step"] == (12 if keep == "last" else best)
    last = load_checkpoint(os.path.join(str(tmp_path), "checkpoint.h5"))
    same = all(numpy.array_equal(ck["weights"][k], last["weights"][k]) for k in last["weights"])
    assert same == (keep == "last" or best == 12)
