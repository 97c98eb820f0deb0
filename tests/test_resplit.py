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
from cupyden.io.pairs import binomial_half, resplit
from cupyden.io.store import PatchStore
from cupyden.pipeline.train import build_store, recipe

from conftest import make_store, smooth, write

STORE = dict(patch_size=16, stride=8, val_fraction=0.25, holdout_fraction=0)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 63, 64, 65, 128, 200])
def test_binomial_half_has_the_binomial_mean_and_variance(n):
    a = binomial_half(numpy.full(200000, n), numpy.random.default_rng(n))
    assert a.min() >= 0 and a.max() <= n
    # standard errors: mean sqrt(n / 4 / 2e5), variance about n / 4 * sqrt(2 / 2e5)
    assert abs(a.mean() - n / 2) <= 5 * numpy.sqrt(n / 4 / 2e5) + 1e-12
    assert abs(a.var() - n / 4) <= 5 * (n / 4) * numpy.sqrt(2 / 2e5) + 1e-12


def test_binomial_half_follows_the_seed_and_the_shape():
    n = numpy.arange(60).reshape(3, 4, 5)
    a = binomial_half(n, numpy.random.default_rng(1))
    assert a.shape == n.shape and a.dtype == numpy.int64
    assert numpy.array_equal(a, binomial_half(n, numpy.random.default_rng(1)))
    assert not numpy.array_equal(a, binomial_half(n, numpy.random.default_rng(2)))


def test_resplit_keeps_each_pixels_electrons_and_draws_new_halves():
    rng = numpy.random.default_rng(0)
    n = rng.poisson(30, (3, 1, 8, 8))
    a = rng.binomial(n, 0.5)
    loc, scale = numpy.array([15.0, 14.0, 16.0]), numpy.array([3.9, 4.1, 3.7])
    x = ((a - loc[:, None, None, None]) / scale[:, None, None, None]).astype(numpy.float32)
    y = ((n - a - loc[:, None, None, None]) / scale[:, None, None, None]).astype(numpy.float32)
    resplit(x, y, loc, scale, [numpy.random.default_rng(j) for j in range(3)])
    ca = numpy.rint(x * scale[:, None, None, None] + loc[:, None, None, None])
    cb = numpy.rint(y * scale[:, None, None, None] + loc[:, None, None, None])
    assert numpy.array_equal(ca + cb, n)
    assert numpy.abs(x * scale[:, None, None, None] + loc[:, None, None, None] - ca).max() < 1e-4
    assert (ca >= 0).all() and (cb >= 0).all()
    assert (ca != a).mean() > 0.5                          # new halves, not the old ones


def _count_split_store(tmp_path, binning=1):
    rng = numpy.random.default_rng(5)
    paths = [write(tmp_path / ("m%d.mrc" % i), rng.poisson(20.0, (96, 80)).astype(numpy.uint16))
             for i in range(2)]
    o = recipe(paths, pairs="count-split", binning=binning, dose=20.0, **STORE)
    path = str(tmp_path / ("p%d.h5" % binning))
    build_store(path, o, numpy, log=lambda *a: None)
    return paths, PatchStore(path)


def _counts(x, loc, scale):
    return numpy.rint(x * scale[:, None, None, None] + loc[:, None, None, None])


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
        recipe([mic], pairs="gaussian", resplit=True, **STORE)
    with pytest.raises(InputError, match="--resplit"):
        recipe([mic], pairs="count-split", binning=2, resplit=True, **STORE)
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
