"""Movies as users have them: TIFF and MRC frames, a gain reference with RELION's rotation
and flip conventions, even/odd sums (issue 17)."""

import importlib.util

import mrcfile
import numpy
import pytest
import tifffile

from cupyden.backend import to_host
from cupyden.errors import InputError
from cupyden.io.movies import (even_odd_sums, open_movie, orient_gain, orient_gain_reference,
                               read_gain)

HAVE_IMAGECODECS = importlib.util.find_spec("imagecodecs") is not None
COMPRESSIONS = ["zlib", pytest.param("lzw", marks=pytest.mark.skipif(
    not HAVE_IMAGECODECS, reason="LZW TIFF needs imagecodecs (pip install 'cupyden[movies]')"))]


def write_mrc(path, data):
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(data)
    return str(path)


def test_gain_orientation_matches_relions_index_formulas():
    g = numpy.arange(12, dtype=numpy.float32).reshape(3, 4)         # not square
    for rot in range(4):
        for flip in range(3):
            assert numpy.array_equal(orient_gain(g, rot, flip), orient_gain_reference(g, rot, flip))
    # rot 1 is clockwise with row 0 at the top (relion_display); flip 1 is upside down
    assert orient_gain(numpy.array([[1, 2], [3, 4]]), 1, 0).tolist() == [[3, 1], [4, 2]]
    assert orient_gain(numpy.array([[1, 2], [3, 4]]), 0, 1).tolist() == [[3, 4], [1, 2]]
    assert orient_gain(numpy.array([[1, 2], [3, 4]]), 0, 2).tolist() == [[2, 1], [4, 3]]


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("rot,flip,gain_format", [(0, 0, "mrc"), (1, 0, "tif"), (2, 1, "mrc"),
                                                  (3, 2, "tif"), (1, 1, "mrc")])
def test_tiff_movie_with_gain_equals_the_mrc_path(tmp_path, compression, rot, flip, gain_format):
    """Frames F (in RELION's memory orientation) and a gain G0 as RELION holds it: the TIFF
    movie (pages stored upside down, as TIFF is) with the gain file and --gain-rot/--gain-flip
    must sum to what the MRC path gives for the gain-corrected frames F * orient(G0)."""
    rng = numpy.random.default_rng(rot * 3 + flip)
    g0 = rng.integers(32, 128, (10, 14)) / 64.0                      # exact in float32
    gain = orient_gain_reference(g0, rot, flip)
    frames = rng.poisson(3.0, (9,) + gain.shape).astype(numpy.uint16)
    corrected = write_mrc(tmp_path / "corrected.mrcs", (frames * gain).astype(numpy.float32))
    movie = str(tmp_path / "movie.tif")
    tifffile.imwrite(movie, frames[:, ::-1], compression=compression)
    if gain_format == "mrc":
        gain_path = write_mrc(tmp_path / "gain.mrc", g0.astype(numpy.float32))
    else:
        gain_path = str(tmp_path / "gain.tif")
        tifffile.imwrite(gain_path, g0[::-1].astype(numpy.float32))
    with open_movie(corrected) as m:
        want_even, want_odd, _ = even_odd_sums(m, drop_first=1)
    with open_movie(movie) as m:
        assert m.shape == frames.shape and m.dtype == numpy.uint16
        even, odd, _ = even_odd_sums(m, drop_first=1, gain=read_gain(gain_path, rot, flip))
    assert numpy.array_equal(even, want_even) and numpy.array_equal(odd, want_odd)
    assert numpy.array_equal(even, (frames[1::2] * gain).sum(0).astype(numpy.float32))


def test_sums_on_the_device_equal_numpys(tmp_path, xp):
    rng = numpy.random.default_rng(2)
    frames = rng.poisson(3.0, (7, 20, 24)).astype(numpy.uint16)
    path = str(tmp_path / "m.tif")
    tifffile.imwrite(path, frames, compression="zlib")
    gain = xp.asarray(rng.integers(32, 128, (20, 24)) / 64.0)
    with open_movie(path) as m:
        even, odd, _ = even_odd_sums(m, 1, gain=gain, xp=xp)
        want_even, want_odd, _ = even_odd_sums(m, 1, gain=to_host(gain))
    assert numpy.array_equal(to_host(even), want_even) and numpy.array_equal(to_host(odd), want_odd)
    base = rng.standard_normal((32, 32)) * 5                       # alignment on the device
    drift = numpy.stack([numpy.roll(base, (i, -i), axis=(0, 1)) + rng.standard_normal((32, 32))
                         for i in range(4)])
    assert even_odd_sums(drift, align=True, xp=xp)[2] == [(0, 0), (-1, 1), (-2, 2), (-3, 3)]


def test_mrc_movie_is_read_frame_by_frame_as_stored(tmp_path):
    frames = numpy.random.default_rng(0).poisson(2.0, (5, 7, 9)).astype(numpy.int16)
    path = write_mrc(tmp_path / "m.mrcs", frames)
    with open_movie(path) as m:
        assert m.shape == (5, 7, 9) and len(m) == 5
        for i in range(5):
            assert numpy.array_equal(m[i], frames[i])
        even, odd, _ = even_odd_sums(m)
    assert numpy.array_equal(even, frames[0::2].sum(0)) and numpy.array_equal(odd, frames[1::2].sum(0))


def test_movie_errors(tmp_path):
    eer = tmp_path / "a.eer"
    eer.write_bytes(b"II*\x00")
    with pytest.raises(InputError, match="EER"):
        open_movie(str(eer))
    path = write_mrc(tmp_path / "m.mrcs", numpy.ones((4, 6, 8), numpy.uint16))
    gain = write_mrc(tmp_path / "g.mrc", numpy.random.default_rng(0).random((6, 8)).astype(numpy.float32))
    with open_movie(path) as m, pytest.raises(InputError, match="gain-rot"):
        even_odd_sums(m, gain=read_gain(gain, rot=1))
    with pytest.raises(InputError, match="gain-flip"):
        read_gain(gain, flip=3)
