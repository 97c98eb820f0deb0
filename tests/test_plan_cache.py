"""The persistent cuDNN plan cache: round trip, off switch, damaged files, concurrent
writers (CPU); tune once, then recall without timing and get the same output (GPU)."""

import json
import multiprocessing
import os

import numpy
import pytest

from cupyden import backend
from cupyden.kernels import plan_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = str(tmp_path / "sub" / "plans.json")
    monkeypatch.setenv(plan_cache.ENV, path)
    return path


def test_round_trip_and_contexts(cache):
    assert plan_cache.lookup("gpu A|cudnn 9", "k1") is None
    assert plan_cache.remember("gpu A|cudnn 9", "k1", {"plan": "eng0_k2=3", "ms": 0.5,
                                                         "candidates": 8})
    assert plan_cache.lookup("gpu A|cudnn 9", "k1")["plan"] == "eng0_k2=3"
    assert plan_cache.lookup("gpu B|cudnn 9", "k1") is None          # another GPU model
    with open(cache) as f:
        data = json.load(f)
    assert data["format"] == plan_cache.FORMAT
    assert data["entries"]["gpu A|cudnn 9"]["k1"]["candidates"] == 8


def test_a_forward_route_is_recalled(cache):
    # cudnn_fe records which route (fused, or convolution then bias) a float32 forward
    # convolution takes; a later process must find it, or it times both routes again and
    # may pick the other one (other kernels, other rounding than its sibling processes)
    route = {"split": True, "fused_ms": 24.1, "split_ms": 7.3}
    assert plan_cache.remember("gpu A|cudnn 9", "('epilogue', 1)", route)
    plan_cache._STATE.update(path=None, stamp=None, entries={})     # as a new process
    assert plan_cache.lookup("gpu A|cudnn 9", "('epilogue', 1)") == route


def test_default_location_and_off_switch(monkeypatch, tmp_path):
    monkeypatch.delenv(plan_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert plan_cache.cache_path() == str(tmp_path / "cupyden" / "cudnn_plans.json")
    monkeypatch.setenv(plan_cache.ENV, "0")
    assert plan_cache.cache_path() is None
    assert not plan_cache.remember("c", "k", {"plan": "p"}) and plan_cache.lookup("c", "k") is None


def test_damaged_file_is_empty_then_replaced(cache):
    os.makedirs(os.path.dirname(cache))
    with open(cache, "w") as f:
        f.write("{not json")
    assert plan_cache.lookup("c", "k") is None
    assert plan_cache.remember("c", "k", {"plan": "p"})
    assert plan_cache.lookup("c", "k") == {"plan": "p"}


def test_unwritable_cache_is_said_once(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(plan_cache.ENV, str(blocker / "plans.json"))   # a file as its folder
    monkeypatch.setitem(plan_cache._STATE, "warned", False)
    assert not plan_cache.remember("c", "k1", {"plan": "p"})
    assert not plan_cache.remember("c", "k2", {"plan": "p"})
    assert capsys.readouterr().err.count("cannot write the cuDNN plan cache") == 1


def _writer(path, worker, n):
    os.environ[plan_cache.ENV] = path
    for i in range(n):
        plan_cache.remember("ctx", "w%d-k%d" % (worker, i), {"plan": "p%d" % i, "ms": 1.0})


def test_concurrent_writers_lose_nothing(cache):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(cache, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with open(cache) as f:
        entries = json.load(f)["entries"]["ctx"]
    assert len(entries) == 4 * 15
    assert not [f for f in os.listdir(os.path.dirname(cache)) if f.startswith(".tmp")]


@pytest.mark.gpu
@pytest.mark.skipif(backend.gpu_count() == 0, reason="needs a GPU")
def test_second_process_builds_the_recorded_plan_untimed(cache):
    from cupyden.kernels import cudnn_fe
    if cudnn_fe.problem() is not None:
        pytest.skip(cudnn_fe.problem())
    xp = backend.gpu_module()
    rng = numpy.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 8, 40, 36)).astype(numpy.float32))
    w = xp.asarray(rng.standard_normal((8, 8, 3, 3)).astype(numpy.float32))
    b = xp.asarray(rng.standard_normal(8).astype(numpy.float32))
    cudnn_fe._PLANS.clear()
    y1 = cudnn_fe.conv_forward(x, w, b, 1, 1, 0.0)
    # float32 with a bias times two routes (fused, and convolution then bias): two graphs
    tuned = {k: p for k, p in cudnn_fe._PLANS.items() if k[0] == "fprop"}
    assert tuned and all(p.candidates > 0 for p in tuned.values())
    with open(cache) as f:
        assert len(json.load(f)["entries"]) == 1
    cudnn_fe._PLANS.clear()                     # as a fresh process would start
    cudnn_fe._SPLIT.clear()
    y2 = cudnn_fe.conv_forward(x, w, b, 1, 1, 0.0)
    # the recorded route's graph alone, built untimed, the plan of the same name as tuned
    # (not the same index: the heuristics' lists repeat a plan under two indices)
    recalled = {k: p for k, p in cudnn_fe._PLANS.items() if k[0] == "fprop"}
    name = lambda p: p.graph.get_plan_name_at_index(p.index)
    assert len(recalled) == 1
    (k, p), = recalled.items()
    assert k in tuned
    assert p.candidates == 0
    assert name(p) == name(tuned[k])
    assert bool((y1 == y2).all())


class _Graph:
    """Stands in for a cuDNN frontend graph: candidate names, builds counted."""

    def __init__(self, names):
        self.names, self.built = names, []

    def get_execution_plan_count(self):
        return len(self.names)

    def get_plan_name_at_index(self, i):
        return self.names[i]

    def build_plan_at_index(self, i):
        self.built.append(i)

    def get_workspace_size_plan_at_index(self, i):
        return 64 * i


def test_a_slow_graphs_narrow_choice_is_tuned_again(cache, monkeypatch):
    """A cached plan slower than SLOW_PLAN_MS chosen from fewer candidates than a wide
    search visits is not recalled (the caller tunes wider, once); a fast one, or one
    from a wide enough search, is built and reused."""
    from cupyden.kernels import cudnn_fe
    monkeypatch.setattr(cudnn_fe, "_cache_context", lambda: "ctx")
    names = ["eng%d" % i for i in range(48)]
    wide = cudnn_fe.WIDE_TUNING * 8
    for ms, tried, recalled in [(0.5, 8, True), (14.2, 8, False), (14.2, wide, True),
                                (14.2, 48, True)]:
        plan_cache.remember("ctx", repr("k"), {"plan": "eng5", "ms": ms, "candidates": tried,
                                         "tried": tried})
        g = _Graph(names)
        got = cudnn_fe._recall(g, "k", len(names))
        assert (got == (ms, 5, 320)) if recalled else (got is None and g.built == [])
    g = _Graph(names[:6])                       # a graph with 6 candidates, all tried
    plan_cache.remember("ctx", repr("k"), {"plan": "eng5", "ms": 14.2, "candidates": 6})
    assert cudnn_fe._recall(g, "k", 6) == (14.2, 5, 320)
