"""Data-parallel training (issue 17): the logic on the CPU with a fake in-process
communicator (ranks as threads, NumPy arrays), the launcher's supervision with real spawned
processes, and NCCL on two GPUs when they are there."""

import multiprocessing
import os
import sys
import threading
import time

import numpy
import pytest

from cupyden import backend
from cupyden.distributed import plan, supervise
from cupyden.errors import InputError
from cupyden.io.checkpoint import load_checkpoint
from cupyden.io.loader import Loader
from cupyden.io.store import PatchStore
from cupyden.models import DnCNN
from cupyden.optim import Adam, Parameters
from cupyden.training import check_identical, fit, train_step

from conftest import make_store


class ThreadGroup:
    """World of ``world`` ranks that are threads of this process; rank r talks through
    ``group.comm(r)``."""

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots = [None] * world

    def comm(self, rank):
        return FakeComm(self, rank)


class FakeComm:
    """The communicator interface of ``fit`` (``rank``, ``size``, ``allreduce_``,
    ``values``) over NumPy arrays: every rank folds the deposits in rank order, so all
    get the same bits, as NCCL's all-reduce gives every rank the same result."""

    def __init__(self, group, rank):
        self.group, self.rank, self.size = group, rank, group.world

    def allreduce_(self, a, op="sum"):
        g = self.group
        g.slots[self.rank] = a.copy()
        g.barrier.wait()
        total = g.slots[0].copy()
        for other in g.slots[1:]:
            total = total + other if op == "sum" else numpy.maximum(total, other)
        g.barrier.wait()
        a[...] = total
        return a

    def values(self, v, op="sum"):
        return self.allreduce_(numpy.asarray(v, numpy.float64), op)


def run_ranks(world, fn):
    """fn(rank, comm) on ``world`` threads; their results in rank order."""
    group, results, errors = ThreadGroup(world), [None] * world, []

    def body(r):
        try:
            results[r] = fn(r, group.comm(r))
        except BaseException as exc:          # surface in the test, unblock the others
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def rel(a, b):
    a, b = numpy.asarray(a, numpy.float64), numpy.asarray(b, numpy.float64)
    return float(numpy.linalg.norm(a - b) / numpy.linalg.norm(b))


def test_ranks_read_the_one_process_batches(tmp_path):
    store = PatchStore(make_store(tmp_path / "s.h5"))
    for world in (2, 4):
        one = Loader(store, 8, numpy, seed=3, start=2, slots=1)
        ranks = [Loader(store, 8, numpy, seed=3, start=2, rank=r, world=world, slots=1)
                 for r in range(world)]
        try:
            for step in range(2, 14):                 # 5 batches per epoch: crosses epochs
                parts = [[a.copy() for a in next(loader)] for loader in ranks]
                x, y = next(one)
                assert numpy.array_equal(numpy.concatenate([p[0] for p in parts]), x)
                assert numpy.array_equal(numpy.concatenate([p[1] for p in parts]), y)
                assert numpy.array_equal(
                    numpy.concatenate([loader.indices(step) for loader in ranks]), one.indices(step))
        finally:
            for loader in ranks + [one]:
                loader.close()
    store.close()


def test_two_ranks_average_to_the_full_batch_gradient():
    rng = numpy.random.default_rng(1)
    x, t = rng.standard_normal((2, 6, 1, 12, 12))

    def step(x, t, comm=None):
        model = DnCNN(3, 4, seed=2).to(numpy, numpy.float64).train()
        params = Parameters(model)
        opt = Adam(params, lr=1e-2)
        loss = float(train_step(model, params, opt, "mse", x, t, comm=comm))
        return loss, params.grad.copy(), params.data.copy()

    loss, grad, data = step(x, t)
    ranks = run_ranks(2, lambda r, comm: step(x[3 * r:3 * r + 3], t[3 * r:3 * r + 3], comm))
    (loss0, sum0, data0), (loss1, sum1, data1) = ranks
    assert numpy.array_equal(sum0, sum1) and numpy.array_equal(data0, data1)
    assert abs((loss0 + loss1) / 2 - loss) < 1e-12 * loss        # mean over the global batch
    assert rel(sum0 / 2, grad) < 1e-12                           # the full batch's gradient
    assert rel(data0, data) < 1e-12                              # the same Adam step


def test_fit_on_two_ranks_matches_one_process(tmp_path):
    path = make_store(tmp_path / "s.h5")
    config = {"model": {"arch": "dncnn", "depth": 3, "width": 4, "seed": 0}, "loss": "mse",
              "lr": 3e-3, "batch_size": 8, "steps": 9, "val_every": 3, "val_patches": 9,
              "seed": 5}
    quiet = lambda *a: None      # noqa: E731
    outs = [tmp_path / name for name in ("one", "rank0", "rank1")]
    for out in outs:
        out.mkdir()
    store = PatchStore(path)
    want = fit(store, str(outs[0]), config, numpy, progress=False, log=quiet)
    store.close()

    def rank(r, comm):
        s = PatchStore(path)
        try:
            return fit(s, str(outs[1 + r]), config, numpy, progress=False, log=quiet, comm=comm)
        finally:
            s.close()

    got = run_ranks(2, rank)
    same = [[{k: v for k, v in row.items() if k != "seconds"} for row in h] for h in got]
    assert same[0] == same[1]                                # every rank has the same numbers
    assert [r["step"] for r in got[0]] == [3, 6, 9]
    for a, b in zip(got[0], want):
        for key in ("train_loss", "val_loss"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(b[key]), key
    assert sorted(os.listdir(outs[1])) == ["checkpoint.h5", "history.csv", "loss_curve.png", "model.h5"]
    assert os.listdir(outs[2]) == []                         # rank 1 writes nothing
    w2 = load_checkpoint(str(outs[1] / "checkpoint.h5"))["weights"]
    w1 = load_checkpoint(str(outs[0] / "checkpoint.h5"))["weights"]
    for name in w1:
        assert rel(w2[name], w1[name]) < 1e-5, name


def test_ranks_share_rank_0s_time_budget(tmp_path, monkeypatch):
    """A cosine fitted to a time budget: every rank uses rank 0's T (and stop), even when
    another rank's clock runs 3x faster (each rank's clock advances per training step)."""
    from cupyden import training

    path = make_store(tmp_path / "s.h5")
    config = {"model": {"arch": "dncnn", "depth": 2, "width": 4, "seed": 0}, "loss": "mse",
              "lr": 1e-3, "batch_size": 8, "steps": 1000000, "val_every": 5,
              "val_patches": 9, "seed": 5, "lr_schedule": "cosine", "max_seconds": 30}
    clocks = threading.local()
    step = training.train_step

    def timed_step(model, params, opt, loss, x, y, scaler, comm):
        clocks.now = getattr(clocks, "now", 0.0) + (1.0 if comm.rank == 0 else 3.0)
        return step(model, params, opt, loss, x, y, scaler, comm)

    monkeypatch.setattr(training.time, "perf_counter", lambda: getattr(clocks, "now", 0.0))
    monkeypatch.setattr(training, "train_step", timed_step)
    for r in range(2):
        (tmp_path / str(r)).mkdir()

    def rank(r, comm):
        s = PatchStore(path)
        try:
            return fit(s, str(tmp_path / str(r)), config, numpy, progress=False,
                       log=lambda *a: None, comm=comm)
        finally:
            s.close()

    got = run_ranks(2, rank)
    lrs = [[(row["step"], row["lr"]) for row in h] for h in got]
    assert lrs[0] == lrs[1]
    assert [k for k, _ in lrs[0]] == [5, 10, 15, 20, 25, 30, 35]    # rank 0: 1 step/s
    assert lrs[0][-2][1] == 0.0                                      # T = 30, rank 0's
    ck = load_checkpoint(str(tmp_path / "0" / "checkpoint.h5"))
    assert ck["provenance"]["schedule"]["T"] == 35


def test_ranks_whose_parameters_differ_are_stopped():
    def body(r, comm):
        model = DnCNN(3, 4, seed=r).to(numpy, numpy.float32)       # other weights on rank 1
        with pytest.raises(RuntimeError, match="parameters differ"):
            check_identical(Parameters(model), comm, 7)

    run_ranks(2, body)


def test_plan_of_a_run(tmp_path, monkeypatch):
    p = plan(gpus=[0, 1])
    assert (p.rank, p.world, p.device, p.launch) == (0, 2, "0", True)
    assert p.check_batch(16) == (16, None)
    with pytest.raises(InputError, match="does not split over 2"):
        p.check_batch(15)
    assert plan(gpus=[3]).launch is False
    assert plan(gpus=[3]).check_batch(5) == (5, None)
    # a recipe's batch (not given) is rounded up: the K2 recipe's 12 over 5, 7 and 8 GPUs
    for n, want in ((4, 12), (5, 15), (7, 14), (8, 16)):
        batch, note = plan(gpus=list(range(n))).check_batch(12, given=False)
        assert batch == want and (note is None) == (want == 12)
    assert "the recipe's 12 rounded up to split over 8 GPUs" in note
    assert plan(device="-1").world == 1
    for kw, match in ((dict(gpus=[1, 1]), "distinct"),
                      (dict(gpus=[0, 1], rendezvous="x"), "exclude"),
                      (dict(rendezvous=str(tmp_path / "id")), "--rank")):
        with pytest.raises(InputError, match=match):
            plan(**kw)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    p = plan(rendezvous=str(tmp_path / "id"))
    assert (p.rank, p.world, p.launch) == (3, 4, False)
    assert p.device == str(1 % max(1, backend.gpu_count()))
    (tmp_path / "id").write_text("{}")
    with pytest.raises(InputError, match="exists"):
        plan(rendezvous=str(tmp_path / "id"), rank=0, world_size=4)


def _sleep():
    time.sleep(120)


def _fail():
    sys.exit(5)


def test_a_rank_that_dies_stops_the_run(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_sleep), ctx.Process(target=_fail)]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"rank 1 \(GPU 7\) ended with exit status 5; the other "
                                         r"ranks were stopped"):
        supervise(procs, [6, 7], str(tmp_path / "checkpoint.h5"))
    assert not procs[0].is_alive() and time.monotonic() - t0 < 60


@pytest.mark.gpu
@pytest.mark.skipif(backend.gpu_count() < 2, reason="needs two GPUs")
def test_nccl_on_two_gpus_matches_one_gpu(tmp_path):
    """cupyden.train with --gpus 0,1 against one GPU, same seed and global batch, fp32."""
    import cupyden

    path = make_store(tmp_path / "s.h5", n_train=400, n_val=32, P=32)
    kw = dict(store=path, depth=4, width=8, batch_size=8, steps=30, val_every=10,
              precision="fp32", progress=False, log=lambda *a: None)
    _, one = cupyden.train(output_dir=str(tmp_path / "one"), device="0", **kw)
    model, two = cupyden.train(output_dir=str(tmp_path / "two"), gpus=[0, 1], **kw)
    assert model is not None and [r["step"] for r in two] == [10, 20, 30]
    for a, b in zip(two, one):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4 * abs(b["train_loss"])
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-4 * abs(b["val_loss"])


def test_the_command_refuses_bad_gpu_options(tmp_path, capsys):
    from cupyden.cli import train as train_cli

    base = ["--steps", "2", "-o", str(tmp_path / "o"), "--no-progress", "--depth", "3"]
    assert train_cli.main(base + ["--gpus", "0,1", "--batch-size", "3"]) == 2
    assert "does not split over 2 GPUs" in capsys.readouterr().err
    assert train_cli.main(base + ["--gpus", "0,x"]) == 2
    assert "--gpus must be GPU numbers" in capsys.readouterr().err
    if backend.gpu_count() < 2:                  # never a silent CPU run
        assert train_cli.main(base + ["--gpus", "0,1"]) == 2
        assert "cannot be used" in capsys.readouterr().err
