"""The channels-last GPU kernels (kernels/layout.py) against the NumPy ops, on the CPU.

The kernels' text is compiled as C by the system compiler, each CUDA thread becoming one
iteration of a loop over ``i``: the index arithmetic (the part that can be wrong) is then
checked without a GPU, against ``functional.pool`` / ``functional.upsample`` on
channels-last arrays, 2-D and 3-D, odd sizes, and channel slices of a larger buffer. The
GPU tests (tests/test_channels_last.py) run the same kernels through CuPy.
"""

import ctypes
import shutil
import subprocess

import numpy
import pytest

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

_CTYPES = {"int64": ("long long", ctypes.c_longlong), "float64": ("double", ctypes.c_double)}
_ELEM = {"T": None, "uint8": "unsigned char"}


def _compile(tmp_path, name, ctype, bits):
    from cupyden.kernels.layout import PREAMBLE, SOURCES
    ins, outs, body = SOURCES[name]
    params, kinds = [], []
    for p in (ins + ", " + outs).split(","):
        words = p.split()
        if words[0] == "raw":
            elem = ctype if words[1] == "T" else _ELEM[words[1]]
            params.append("%s* %s" % (elem, words[2]))
            kinds.append("array")
        else:
            params.append("%s %s" % (_CTYPES[words[0]][0], words[1]))
            kinds.append(words[0])
    src = ("typedef %s T;\n%svoid run(%s, long long size) {\n"
           "  for (long long i = 0; i < size; ++i) {\n%s\n  }\n}\n"
           % (ctype, PREAMBLE[bits], ", ".join(params), body))
    c = tmp_path / ("%s_%s_%d.c" % (name, ctype, bits))
    so = tmp_path / ("%s_%s_%d.so" % (name, ctype, bits))
    c.write_text(src)
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(so),
                    str(c)], check=True)
    fn = ctypes.CDLL(str(so)).run

    def raw(*args, size):
        """As CuPy calls it: every argument in order (lanes included), then ``size``."""
        fn(*[a.ctypes.data_as(ctypes.c_void_p) if kind == "array" else _CTYPES[kind][1](a)
             for a, kind in zip(args, kinds)], ctypes.c_longlong(size))

    def call(*args, C, pixels):
        from cupyden.kernels.layout import PER_THREAD, lanes
        L, LS = lanes(C, PER_THREAD[name])
        args = args[:-len(outs.split(","))] + (L, LS) + args[-len(outs.split(",")):]
        size = pixels * L
        conv = []
        for a, kind in zip(args, kinds):
            conv.append(a.ctypes.data_as(ctypes.c_void_p) if kind == "array"
                        else _CTYPES[kind][1](a))
        fn(*conv, ctypes.c_longlong(size))
    call.raw = raw
    return call


def channels_last(a):
    """A copy of a (N, C, *S) in channels-last memory."""
    phys = numpy.ascontiguousarray(numpy.moveaxis(a, 1, -1))
    return numpy.moveaxis(phys, -1, 1)


def _flat(a):
    from cupyden.backend import channels_last_span
    return channels_last_span(a)


def _dhw(shape):
    return (1,) + tuple(shape[2:]) if len(shape) == 4 else tuple(shape[2:])


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout_kernels")
    from cupyden.kernels.layout import SOURCES
    return {(n, t, b): _compile(tmp, n, t, b) for n in SOURCES for t in ("float", "double")
            for b in (32, 64)}


SHAPES = [(2, 3, 6, 7), (1, 5, 9, 8), (2, 4, 5, 6, 7), (1, 2, 4, 4, 5),
          (1, 40, 5, 6), (1, 70, 3, 5, 4)]          # the last two: several lanes per pixel


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("bits", [32, 64])
def test_maxpool_kernels_equal_numpy(kernels, shape, dtype, bits):
    from cupyden.functional.pool import maxpool2d_backward, maxpool2d_forward
    from cupyden.functional.volume import maxpool3d_backward, maxpool3d_forward
    ctype = "float" if dtype == numpy.float32 else "double"
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    x[..., 0] = x[..., 1]                                    # ties: the first one wins
    fwd, bwd = ((maxpool2d_forward, maxpool2d_backward) if len(shape) == 4
                else (maxpool3d_forward, maxpool3d_backward))
    K = 2
    y_ref, cache = fwd(x, K)
    big = channels_last(rng.standard_normal((shape[0], shape[1] + 3) + shape[2:]).astype(dtype))
    xcl = big[:, 2:2 + shape[1]]                              # a channel slice: pixel stride C + 3
    xcl[...] = x
    xf, xs = _flat(xcl)
    N, C = shape[:2]
    D, H, W = _dhw(shape)
    KD = K if len(shape) == 5 else 1
    OD, OH, OW = D // KD, H // K, W // K
    y = channels_last(numpy.full(y_ref.shape, numpy.nan, dtype))
    am = channels_last(numpy.full(y_ref.shape, 255, numpy.uint8))
    kernels["maxpool_forward", ctype, bits](xf, xs, C, D, H, W, KD, K, OD, OH, OW,
                                            _flat(y)[0], _flat(am)[0], C=C,
                                            pixels=N * OD * OH * OW)
    assert numpy.array_equal(y, y_ref)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx_ref = bwd(dy, cache)
    dycl = channels_last(dy)
    dx = channels_last(numpy.full(shape, numpy.nan, dtype))
    kernels["maxpool_backward", ctype, bits](_flat(dycl)[0], C, _flat(am)[0], C, D, H, W,
                                             KD, K, OD, OH, OW, _flat(dx)[0], C=C,
                                             pixels=N * D * H * W)
    assert numpy.array_equal(dx, dx_ref)


@pytest.mark.parametrize("shape,size", [((2, 3, 3, 4), (6, 8)), ((1, 2, 3, 4), (7, 9)),
                                        ((2, 3, 2, 3, 2), (4, 6, 4)),
                                        ((1, 2, 2, 3, 2), (5, 7, 3)),
                                        ((1, 2, 4, 5), (3, 5)),
                                        ((1, 33, 3, 4), (6, 9)),       # several lanes per pixel
                                        ((1, 70, 2, 3, 2), (4, 6, 3))])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("bits", [32, 64])
def test_upsample_concat_kernels_equal_numpy(kernels, shape, size, dtype, bits):
    from cupyden.functional.shape import concat_backward, concat_forward
    from cupyden.functional.upsample import upsample2d_backward, upsample2d_forward
    from cupyden.functional.volume import upsample3d_backward, upsample3d_forward
    ctype = "float" if dtype == numpy.float32 else "double"
    fwd, bwd = ((upsample2d_forward, upsample2d_backward) if len(shape) == 4
                else (upsample3d_forward, upsample3d_backward))
    rng = numpy.random.default_rng(1)
    N, Cx = shape[:2]
    Cs = 4
    x = channels_last(rng.standard_normal(shape).astype(dtype))
    skip = channels_last(rng.standard_normal((N, Cs) + size).astype(dtype))
    up, ucache = fwd(x, size)
    y_ref, _ = concat_forward(up, skip)
    C = Cx + Cs
    D, H, W = _dhw(shape)
    OD, OH, OW = _dhw((N, C) + size)
    y = channels_last(numpy.full(y_ref.shape, numpy.nan, dtype))
    xf, xs = _flat(x)
    sf, ss = _flat(skip)
    kernels["upsample_concat", ctype, bits](xf, xs, sf, ss, Cx, C, C, D, H, W, OD, OH, OW,
                                            _flat(y)[0], C=C, pixels=N * OD * OH * OW)
    assert numpy.array_equal(y, y_ref)
    # zero channels after the concatenation (cuDNN's padded channel counts)
    Cy = C + 3
    yp = channels_last(numpy.full((N, Cy) + size, numpy.nan, dtype))
    kernels["upsample_concat", ctype, bits](xf, xs, sf, ss, Cx, C, Cy, D, H, W, OD, OH, OW,
                                            _flat(yp)[0], C=Cy, pixels=N * OD * OH * OW)
    assert numpy.array_equal(yp[:, :C], y_ref) and numpy.all(yp[:, C:] == 0)
    dy = channels_last(rng.standard_normal(y_ref.shape).astype(dtype))
    du, _ = concat_backward(dy, Cx)                          # a channel slice of dy
    dx_ref = bwd(numpy.ascontiguousarray(du), ucache)
    dx = channels_last(numpy.full(shape, numpy.nan, dtype))
    df, ds = _flat(du)
    assert ds == C
    kernels["upsample_backward", ctype, bits](df, ds, Cx, D, H, W, OD, OH, OW,
                                              _flat(dx)[0], C=Cx, pixels=N * D * H * W)
    tol = 1e-6 if dtype == numpy.float32 else 1e-14
    assert numpy.abs(dx - dx_ref).max() <= tol * numpy.abs(dx_ref).max()



@pytest.mark.parametrize("shape,channels", [((2, 97, 5, 6), 128), ((3, 5, 2, 3, 4), 8),
                                            ((64, 97, 5, 5), 128), ((1, 4, 3, 3), 4)])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_pad_channels_wrapper(kernels, monkeypatch, shape, channels, dtype):
    """``layout.pad_channels`` (cuDNN's zero channels: Topaz's 97-channel input and its
    filters) run end to end on NumPy arrays through the C-compiled kernels, so the
    wrapper's arguments, spans and launch size are checked too: [a, 0], channels-last."""
    from cupyden.kernels import layout
    ctype = "float" if dtype == numpy.float32 else "double"
    fake = {(n, b): kernels[n, ctype, b].raw for n in layout.SOURCES for b in (32, 64)}
    monkeypatch.setattr(layout, "_KERNELS", fake)
    rng = numpy.random.default_rng(2)
    a = rng.standard_normal(shape).astype(dtype)             # plain (NCHW) memory: copied
    y = layout.pad_channels(a, channels)
    assert y.shape == (shape[0], channels) + shape[2:]
    assert numpy.moveaxis(y, 1, -1).flags.c_contiguous           # dense channels-last
    assert numpy.array_equal(y[:, :shape[1]], a) and numpy.all(y[:, shape[1]:] == 0)
    skip = channels_last(rng.standard_normal((shape[0], 2) + shape[2:]).astype(dtype))
    z = layout.upsample_concat(channels_last(a), skip, channels=channels + 2)
    assert numpy.array_equal(z[:, :shape[1]], a)
    assert numpy.array_equal(z[:, shape[1]:shape[1] + 2], skip)
    assert numpy.all(z[:, shape[1] + 2:] == 0)
