"""Device choice: a GPU that was asked for and is missing is an error, never the CPU."""

import numpy
import pytest

from cupyden import backend
from cupyden.errors import InputError


def test_cpu_device():
    d = backend.select_device("-1")
    assert d.xp is numpy and not d.is_gpu


def test_bad_device_value():
    with pytest.raises(InputError):
        backend.select_device("gpu")


def test_missing_gpu_is_an_error():
    with pytest.raises(InputError, match="cannot be used"):
        backend.select_device(str(backend.gpu_count()))   # one past the last GPU


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("CUPYDEN_DEVICE", "-1")
    assert backend.select_device(None).xp is numpy


def test_gradcheck_cli_exits_0():
    from cupyden.cli.gradcheck import main
    assert main(["-d", "-1", "--only", "model dncnn-4"]) == 0
    assert main(["-d", "-1", "--tier", "sideways"]) == 2


def test_cgroup_quota_v2_and_v1(tmp_path):
    """The CPU quota is read from the process's cgroup and its ancestors (the smallest
    wins); "max" and -1 mean no quota."""
    (tmp_path / "v2" / "job" / "step").mkdir(parents=True)
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "v2" / "job" / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "v2" / "job" / "step" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cg2").write_text("0::/job/step\n")
    assert backend._cgroup_cpu_quota(str(tmp_path / "cg2"), str(tmp_path / "v2")) == 1.5
    v1 = tmp_path / "v1" / "cpu,cpuacct" / "slurm"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cg1").write_text("4:memory:/slurm\n2:cpu,cpuacct:/slurm\n")
    assert backend._cgroup_cpu_quota(str(tmp_path / "cg1"), str(tmp_path / "v1")) == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert backend._cgroup_cpu_quota(str(tmp_path / "cg1"), str(tmp_path / "v1")) is None
    assert backend._cgroup_cpu_quota(str(tmp_path / "missing")) is None


def test_cpu_threads_from_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(backend.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(backend, "_cgroup_cpu_quota", lambda: None)
    assert backend.cpu_threads() == 4
    monkeypatch.setattr(backend, "_cgroup_cpu_quota", lambda: 2.5)
    assert backend.cpu_threads() == 2                   # rounded down
    monkeypatch.setattr(backend, "_cgroup_cpu_quota", lambda: 0.5)
    assert backend.cpu_threads() == 1


def test_thread_variables_are_respected(monkeypatch):
    for name in backend.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert backend.env_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert backend.env_threads() == 1                   # the smallest one set
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "junk")
    assert backend.env_threads() == 3


def test_set_cpu_threads_sets_the_blas_and_the_pool():
    from threadpoolctl import threadpool_info
    old = backend.get_cpu_threads()
    try:
        assert backend.set_cpu_threads(1) == 1
        assert backend.get_cpu_threads() == 1
        assert all(lib["num_threads"] == 1 for lib in threadpool_info()
                   if lib["user_api"] == "blas")
        with pytest.raises(InputError, match="at least 1"):
            backend.set_cpu_threads(0)
    finally:
        backend.set_cpu_threads(old)
