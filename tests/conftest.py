"""The ``xp`` fixture: NumPy always; CuPy too when a GPU is present (marker ``gpu``)."""

import numpy
import pytest

from cupyden import backend

_MODULES = [pytest.param(numpy, id="numpy")]
if backend.gpu_count() > 0:
    _MODULES.append(pytest.param(backend.cupy, id="cupy", marks=pytest.mark.gpu))


@pytest.fixture(params=_MODULES)
def xp(request):
    """The array module under test."""
    return request.param


def rel(a, b):
    """||a - b|| / ||b||, on the host."""
    a, b = backend.to_host(a).astype(numpy.float64), backend.to_host(b).astype(numpy.float64)
    return float(numpy.linalg.norm(a - b) / max(numpy.linalg.norm(b), 1e-300))
