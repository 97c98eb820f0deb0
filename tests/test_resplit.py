"""A new count split per batch (``--resplit``): exact binomial draws, the electrons of each
pixel kept, the same batches for a data-parallel rank as for one process, and the checks
that refuse it where the views are not count-split halves."""

import numpy
import pytest

import cupyden
from cupyden.cli import train as train_cli
from cupyden.errors import InputError
from cupyden.io.checkpoint import load_checkpoint
from cupyden.io.loader import Loader
import cupyden.backend
from cupyden.io.pairs import resplit, resplit_keys
from cupyden.io.store import PatchStore
from cupyden.pipeline.train import build_store, resolve_options

from conftest import make_store, smooth, write

STORE = dict(patch_size=16, stride=8, val_fraction=0.25, holdout_fraction=0)


def _pairs(n, a, loc, scale):
    """Normalised halves of counts a and n - a (N, 1, P, P)."""
    l, s = loc[:, None, None, None], scale[:, None, None, None]
    return ((a - l) / s).astype(numpy.float32), ((n - a - l) / s).astype(numpy.float32)


def _counts(x, loc, scale):
    return numpy.rint(x * scale[:, None, None, None] + loc[:, None, None, None])


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 63, 64, 65, 128, 200])
def test_resplit_draws_binomial_halves_and_keeps_the_electrons(n):
    """a' ~ Binomial(n, 1/2) for counts around the word sizes (32 and 64 coins)."""
    N, P = 4, 100
    counts = numpy.full((N, 1, P, P), n)
    loc, scale = numpy.array([15.0, 14.0, 16.0, 1.0]), numpy.array([3.9, 4.1, 3.7, 1.0])
    x, y = _pairs(counts, counts // 2, loc, scale)
    resplit(x, y, loc, scale, resplit_keys(0, 0, n, range(N)))
    a, b = _counts(x, loc, scale), _counts(y, loc, scale)
    assert numpy.array_equal(a + b, counts) and a.min() >= 0
    # standard errors: mean sqrt(n / 4 / 4e4), variance about n / 4 * sqrt(2 / 4e4)
    assert abs(a.mean() - n / 2) <= 5 * numpy.sqrt(n / 4 / 4e4) + 1e-12
    assert abs(a.var() - n / 4) <= 5 * (n / 4) * numpy.sqrt(2 / 4e4) + 1e-12
    assert numpy.abs(x * scale[:, None, None, None] + loc[:, None, None, None] - a).max() < 1e-4


def test_resplit_is_a_function_of_the_keys_and_draws_new_halves():
    rng = numpy.random.default_rng(0)
    n = rng.poisson(30, (3, 1, 8, 8))
    a = rng.binomial(n, 0.5)
    loc, scale = numpy.array([15.0, 14.0, 16.0]), numpy.array([3.9, 4.1, 3.7])
    keys = resplit_keys(1, 2, 3, range(3))
    assert keys.dtype == numpy.uint64 and len(set(keys.tolist())) == 3
    assert numpy.array_equal(keys[1:], resplit_keys(1, 2, 3, [1, 2]))
    x, y = _pairs(n, a, loc, scale)
    resplit(x, y, loc, scale, keys)
    x2, y2 = _pairs(n, a, loc, scale)
    resplit(x2, y2, loc, scale, keys)
    assert numpy.array_equal(x, x2) and numpy.array_equal(y, y2)
    assert (_counts(x, loc, scale) != a).mean() > 0.5           # new halves, not the old
    x3, _ = _pairs(n, a, loc, scale)
    resplit(x3, _, loc, scale, resplit_keys(1, 2, 4, range(3)))
    assert not numpy.array_equal(x3, x)


def test_resplit_on_the_device_equals_numpy(xp):
    """The GPU kernel deals the same electrons as the NumPy reference, bit for bit."""
    rng = numpy.random.default_rng(1)
    n = rng.poisson(35, (3, 1, 40, 24))
    n[0, 0, :3, :3] = [[0, 64, 65], [128, 129, 300], [1, 2, 3]]
    a = rng.binomial(n, 0.5)
    loc, scale = numpy.array([17.5, 3.0, 20.0]), numpy.array([4.2, 0.7, 5.0])
    keys = resplit_keys(3, 0, 7, range(3))
    x, y = _pairs(n, a, loc, scale)
    dx, dy = xp.asarray(x), xp.asarray(y)
    resplit(x, y, loc, scale, keys)
    resplit(dx, dy, xp.asarray(loc), xp.asarray(scale), xp.asarray(keys))
    assert numpy.array_equal(cupyden.backend.to_host(dx), x)
    assert numpy.array_equal(cupyden.backend.to_host(dy), y)


def _count_split_store(tmp_path, binning=1):
    rng = numpy.random.default_rng(5)
    paths = [write(tmp_path / ("m%d.mrc" % i), rng.poisson(20.0, (96, 80)).astype(numpy.uint16))
             for i in range(2)]
    o = resolve_options(paths, pairs="count-split", binning=binning, dose=20.0, **STORE)
    path = str(tmp_path / ("p%d.h5" % binning))
    build_store(path, o, numpy, log=lambda *a: None)
    return paths, PatchStore(path)


def test_the_loader_redraws_the_split_of_each_batch_and_keeps_its_electrons(tmp_path):
    _, store = _count_split_store(tmp_path)
    loc, scale = store.count_units()
    mics = store.micrographs()
    assert len(loc) == store.size("train")
    assert loc[0] == mics[0]["loc"] and scale[-1] == mics[-1]["scale"]
    plain = Loader(store, 4, numpy, seed=3, do_augment=False)
    new = Loader(store, 4, numpy, seed=3, do_augment=False, resplit=True)
    for step in range(3):
        (x0, y0), (x1, y1) = next(plain), next(new)
        idx = new.indices(step)
        l, s = loc[idx], scale[idx]
        assert numpy.array_equal(_counts(x0, l, s) + _counts(y0, l, s),
                                 _counts(x1, l, s) + _counts(y1, l, s))
        assert not numpy.array_equal(_counts(x0, l, s), _counts(x1, l, s))
    plain.close()
    new.close()
    again = Loader(store, 4, numpy, seed=3, do_augment=False, resplit=True, start=2)
    x2, _ = next(again)                                   # a resumed run: the same draw
    assert numpy.array_equal(x2, x1)
    again.close()
    # each rank of a data-parallel run gets its share of the one-process batch
    whole = Loader(store, 4, numpy, seed=3, resplit=True)
    ranks = [Loader(store, 4, numpy, seed=3, resplit=True, rank=r, world=2) for r in (0, 1)]
    xw, yw = next(whole)
    for r, ld in enumerate(ranks):
        xr, yr = next(ld)
        assert numpy.array_equal(xr, xw[2 * r:2 * r + 2]) and numpy.array_equal(yr, yw[2 * r:2 * r + 2])
        ld.close()
    whole.close()
    store.close()


def test_resplit_is_refused_where_the_views_are_not_count_split_halves(tmp_path):
    _, binned = _count_split_store(tmp_path, binning=2)
    assert binned.count_units() is None
    with pytest.raises(ValueError, match="count-split"):
        Loader(binned, 4, numpy, resplit=True)
    binned.close()
    gauss = PatchStore(make_store(tmp_path / "g.h5"))
    assert gauss.count_units() is None
    gauss.close()
    mic = write(tmp_path / "clean.mrc", smooth((64, 64)))
    with pytest.raises(InputError, match="--resplit"):
        resolve_options([mic], pairs="gaussian", resplit=True, **STORE)
    with pytest.raises(InputError, match="--resplit"):
        resolve_options([mic], pairs="count-split", binning=2, resplit=True, **STORE)
    out = str(tmp_path / "out")
    assert train_cli.main(["--store", str(tmp_path / "g.h5"), "--resplit", "--steps", "2",
                           "-d", "-1", "--no-progress", "-o", out]) == 2


def test_cupyden_train_resplit_trains_and_records_it(tmp_path):
    paths, store = _count_split_store(tmp_path)
    store.close()
    model, history = cupyden.train(paths, str(tmp_path / "run"), pairs="count-split", dose=20.0,
                                   resplit=True, depth=3, width=4, batch_size=4, steps=4,
                                   val_every=2, device="-1", progress=False,
                                   log=lambda *a: None, **STORE)
    assert [r["step"] for r in history] == [2, 4]
    assert all(numpy.isfinite(r["train_loss"]) for r in history)
    assert load_checkpoint(str(tmp_path / "run" / "model.h5"))["config"]["resplit"] is True


def test_the_swar_popcount_equals_numpys():
    from cupyden.io.pairs import _popcount64_swar
    v = numpy.random.default_rng(0).bit_generator.random_raw(1000)
    v = numpy.concatenate([v, numpy.array([0, 1, 2 ** 64 - 1, 2 ** 63], numpy.uint64)])
    want = numpy.array([bin(int(t)).count("1") for t in v])
    assert numpy.array_equal(_popcount64_swar(v).astype(numpy.int64), want)


def test_the_loader_on_the_device_deals_the_hosts_electrons(tmp_path, xp):
    """The GPU loader redraws on the device after the copy; its batches equal the NumPy
    loader's (augmented on the host first in both)."""
    _, store = _count_split_store(tmp_path)
    host = Loader(store, 4, numpy, seed=5, resplit=True)
    dev = Loader(store, 4, xp, seed=5, resplit=True)
    for _ in range(3):
        (hx, hy), (dx, dy) = next(host), next(dev)
        assert numpy.array_equal(cupyden.backend.to_host(dx), hx)
        assert numpy.array_equal(cupyden.backend.to_host(dy), hy)
    host.close()
    dev.close()
    store.close()
