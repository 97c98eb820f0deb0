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
