"""``kernels.activation.bias_activation_kernel`` (the forward epilogue that follows a cuDNN
convolution run without its bias and activation) against NumPy, on the CPU: the kernel's
text compiled as C, one loop iteration per CUDA thread (as tests/test_layout_kernels.py
does for the layout kernels). The GPU route itself is compared with the fused graph in
tests/test_cudnn.py."""

import ctypes
import shutil
import subprocess

import numpy
import pytest

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


def _compile(tmp_path, ctype):
    from cupyden.kernels import activation
    body = activation.BIAS_ACTIVATION[2]
    src = ("typedef %s T;\n"
           "void run(T* b, double slope, int act, unsigned int F, int small, T* y_,"
           " long long size) {\n"
           "  for (long long i = 0; i < size; ++i) {\n#define y y_[i]\n%s\n#undef y\n  }\n}\n"
           % (ctype, body))
    c, so = tmp_path / ("ba_%s.c" % ctype), tmp_path / ("ba_%s.so" % ctype)
    c.write_text(src)
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(so),
                    str(c)], check=True)
    return ctypes.CDLL(str(so)).run


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("slope", [None, 0.0, 0.1])
@pytest.mark.parametrize("small", [True, False])
def test_bias_activation_kernel_equals_numpy(tmp_path, dtype, slope, small):
    ctype = "float" if dtype == numpy.float32 else "double"
    run = _compile(tmp_path, ctype)
    rng = numpy.random.default_rng(3)
    N, F, H, W = 2, 7, 5, 6
    z = rng.standard_normal((N, F, H, W)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    ref = z + b[None, :, None, None]
    if slope is not None:
        ref = numpy.where(ref > 0, ref, slope * ref)
    y = numpy.ascontiguousarray(numpy.moveaxis(z, 1, -1))    # channels-last memory
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)
    run(ptr(b), ctypes.c_double(slope or 0.0), ctypes.c_int(slope is not None),
        ctypes.c_uint(F), ctypes.c_int(small), ptr(y), ctypes.c_longlong(y.size))
    got = numpy.moveaxis(y, -1, 1)
    tol = 1e-6 if dtype == numpy.float32 else 1e-15
    assert numpy.abs(got - ref).max() <= tol * numpy.abs(ref).max()
    assert (got[ref < 0] < 0).all() if slope == 0.1 else True
