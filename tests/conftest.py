"""The ``xp`` fixture: NumPy always; CuPy too when a GPU is present (marker ``gpu``), and
:func:`shared_data` for tests that read the project's real data in ``../shared/data``."""

import os

import numpy
import pytest

from cupyden import backend

_MODULES = [pytest.param(numpy, id="numpy")]
if backend.gpu_count() > 0:
    _MODULES.append(pytest.param(backend.cupy, id="cupy", marks=pytest.mark.gpu))

#: The project's real data (DATA.md): beside the checkout on CI and developer machines,
#: absent from a user's fresh clone.
SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                            "data"))


@pytest.fixture(params=_MODULES)
def xp(request):
    """The array module under test."""
    return request.param


def shared_data(*parts):
    """The path of ``../shared/data/<parts>``; skips the calling test when it is absent.

    A user's clone has no ``../shared`` beside it, so a test that needs the real data
    skips with the reason instead of failing; CI has it and runs the test.
    """
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip("needs ../shared/data/%s beside the checkout (the project's real data; "
                    "CI has it, a fresh clone does not)" % "/".join(parts))
    return path


def rel(a, b):
    """||a - b|| / ||b||, on the host."""
    a, b = backend.to_host(a).astype(numpy.float64), backend.to_host(b).astype(numpy.float64)
    return float(numpy.linalg.norm(a - b) / max(numpy.linalg.norm(b), 1e-300))


def write(path, data, voxel=1.0):
    """Write ``data`` to an MRC file with voxel size ``voxel`` (Å); returns the path."""
    import mrcfile
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel
    return str(path)


def smooth(shape, seed=0):
    """A smooth random float32 image (Gaussian-filtered white noise, amplitude ~20)."""
    rng = numpy.random.default_rng(seed)
    f = numpy.fft.rfft2(rng.standard_normal(shape))
    k2 = numpy.fft.fftfreq(shape[0])[:, None] ** 2 + numpy.fft.rfftfreq(shape[1])[None, :] ** 2
    return (numpy.fft.irfft2(f * numpy.exp(-k2 / 0.005), s=shape) * 20).astype(numpy.float32)


def make_store(path, n_train=44, n_val=9, P=16, seed=0):
    """A small patch store: smooth 'signal' patches and two noisy views of each (sigma
    0.5); returns the path."""
    from cupyden.io.store import PatchStoreWriter

    rng = numpy.random.default_rng(seed)
    with PatchStoreWriter(str(path), P, attrs={"pairs": "gaussian"}) as w:
        for split, n in (("train", n_train), ("val", n_val)):
            clean = numpy.cumsum(numpy.cumsum(rng.standard_normal((n, 1, P, P)), 2), 3) / P
            w.append(split, clean + 0.5 * rng.standard_normal(clean.shape),
                     clean + 0.5 * rng.standard_normal(clean.shape))
    return str(path)
