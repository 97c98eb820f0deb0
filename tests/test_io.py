"""MRC I/O, pair sources, patches, store, loader (issue: main job)."""

import os

import mrcfile
import numpy
import pytest

from cupyden.backend import to_host
from cupyden.data import k2_crop
from cupyden.errors import InputError
from cupyden.io.loader import Loader
from cupyden.io.movies import even_odd_sums
from cupyden.io.mrc import read_mrc, write_mrc
from cupyden.io.pairs import count_split, pair_halves, poisson_check
from cupyden.io.patches import cut_patches, fourier_bin, normalization
from cupyden.io.store import PatchStore, PatchStoreWriter
from cupyden.metrics import frc

from conftest import shared_data, write

K2 = ("micrographs", "mrcfile_fei-extended_K2counting_3838x3710.mrc")   # in ../shared/data


def test_mrc_round_trip_keeps_pixel_size(tmp_path):
    x = numpy.random.default_rng(0).standard_normal((20, 30)).astype(numpy.float32)
    write_mrc(str(tmp_path / "a.mrc"), x, 1.7)
    mic = read_mrc(str(tmp_path / "a.mrc"), ndim=2)
    assert mic.data.dtype == numpy.float32 and numpy.array_equal(mic.data, x)
    assert abs(mic.pixel_size - 1.7) < 1e-6
    write_mrc(str(tmp_path / "h.mrc"), x, 1.7, float16=True)
    with mrcfile.open(str(tmp_path / "h.mrc")) as m:
        assert m.header.mode == 12
    with pytest.raises(InputError, match="float16"):
        write_mrc(str(tmp_path / "big.mrc"), x * 1e6, 1.0, float16=True)
    assert sorted(os.listdir(tmp_path)) == ["a.mrc", "h.mrc"]     # no temporary left


def test_k2_header_dose_and_pixel_size():
    mic = read_mrc(shared_data(*K2), ndim=2, mmap=True, check_values=False)
    assert mic.data.shape == (3838, 3710)
    assert abs(mic.pixel_size - 0.8538) < 1e-4
    assert abs(mic.dose - 47.6) < 0.1


def test_even_odd_sums_of_a_synthetic_movie():
    rng = numpy.random.default_rng(0)
    frames = rng.poisson(2.0, (7, 16, 12)).astype(numpy.float32)
    even, odd, shifts = even_odd_sums(frames, drop_first=1)
    assert numpy.array_equal(even, frames[1::2].sum(0))           # frames 1, 3, 5
    assert numpy.array_equal(odd, frames[2::2].sum(0))            # frames 2, 4, 6
    assert shifts == [(0, 0)] * 6


def test_even_odd_alignment_undoes_integer_drift():
    rng = numpy.random.default_rng(1)
    base = rng.standard_normal((32, 32)) * 5
    frames = numpy.stack([numpy.roll(base, (i, -i), axis=(0, 1)) + rng.standard_normal((32, 32))
                          for i in range(4)])
    _, _, shifts = even_odd_sums(frames, align=True)
    assert shifts == [(0, 0), (-1, 1), (-2, 2), (-3, 3)]


def test_half_micrographs_pair_by_basename(tmp_path):
    (tmp_path / "even").mkdir()
    (tmp_path / "odd").mkdir()
    img = numpy.ones((8, 8), numpy.float32)
    for n in ("m1", "m2"):
        write(tmp_path / "even" / (n + "_EVN.mrc"), img)
        write(tmp_path / "odd" / (n + "_ODD.mrc"), img)
    pairs = pair_halves(str(tmp_path / "even"), str(tmp_path / "odd"))
    assert [os.path.basename(e) for e, _ in pairs] == ["m1_EVN.mrc", "m2_EVN.mrc"]
    write(tmp_path / "even" / "m3_EVN.mrc", img)
    write(tmp_path / "odd" / "m4_ODD.mrc", img)
    with pytest.raises(InputError, match=r"even only: \[m3\]; odd only: \[m4\]"):
        pair_halves(str(tmp_path / "even"), str(tmp_path / "odd"))
    os.remove(tmp_path / "even" / "m3_EVN.mrc")
    os.remove(tmp_path / "odd" / "m4_ODD.mrc")
    write(tmp_path / "odd" / "m2_ODD.mrc", numpy.ones((8, 9), numpy.float32))
    with pytest.raises(InputError, match="differ in shape"):
        pair_halves(str(tmp_path / "even"), str(tmp_path / "odd"))


def test_count_split_keeps_counts_and_gives_independent_halves():
    mic = k2_crop()                       # shipped: a crop of the K2 micrograph (DATA.md)
    image = numpy.asarray(mic.data[:1024, :1024], numpy.float64)
    a, b, info = count_split(image, mic.pixel_size, mic.dose, seed=0)
    counts = numpy.rint(image / info.scale)
    assert numpy.array_equal(a + b, counts)                      # total counts kept
    assert 95 < info.scale < 110 and abs(info.scale_hf / info.scale - 1) < 0.05   # ~102 per e
    assert 0.8 < info.flatness < 1.2
    # the halves' noise is independent: FRC of the halves is the signal's only, near 0
    # away from the lowest rings (the signal is weak at 0.85 A/px), while the FRC of a
    # half with the full sum is large at every ring. This corner of the shipped crop gives
    # 0.035 (the full micrograph's corner gave < 0.03): the fixed detector pattern common
    # to both halves (DATA.md) counts as signal here
    freq, curve = frc(a, b)
    assert abs(curve[freq > 0.05]).mean() < 0.045
    _, same = frc(a, a + b)
    assert same[freq > 0.05].mean() > 0.6


def test_non_poisson_noise_is_refused():
    rng = numpy.random.default_rng(0)
    counts = rng.poisson(30.0, (256, 256)).astype(numpy.float64)
    assert poisson_check(counts, 1.0).flatness < 1.3
    # spatially correlated noise (a 3x3 box blur, as from an integrating detector's MTF)
    blurred = sum(numpy.roll(counts, (i, j), axis=(0, 1)) for i in (-1, 0, 1) for j in (-1, 0, 1)) / 9
    with pytest.raises(InputError, match="not Poisson-like"):
        count_split(blurred, 1.0)
    # white but with extra (read) noise: variance/mean far from 1 for the given dose
    noisy = counts + rng.normal(0, 10, counts.shape)
    with pytest.raises(InputError, match="variance/mean"):
        count_split(noisy * 10, 1.0, dose=30.0)


def test_fourier_bin_keeps_mean_and_low_frequencies():
    rng = numpy.random.default_rng(0)
    y, x = numpy.mgrid[0:64, 0:64]
    img = 5 + numpy.cos(2 * numpy.pi * 3 * x / 64) + 0.1 * rng.standard_normal((64, 64))
    b = fourier_bin(img, 4)
    assert b.shape == (16, 16)
    assert abs(b.mean() - img.mean()) < 1e-6
    ref = 5 + numpy.cos(2 * numpy.pi * 3 * numpy.arange(16) / 16)
    assert numpy.abs(b.mean(axis=0) - ref).max() < 0.05


def test_store_and_loader_are_deterministic(tmp_path, xp):
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((80, 80)).astype(numpy.float32)
    pa, pb = cut_patches(a, -a, 16, 8, rows=(0, 60))
    assert pa.shape == (7 * 9, 1, 16, 16)     # rows 0..40 step 8, and 44 flush with row 60
    path = str(tmp_path / "p.h5")
    with PatchStoreWriter(path, 16, attrs={"pairs": "test"}) as w:
        w.append("train", pa, pb)
        w.append("val", *cut_patches(a, -a, 16, 16, rows=(60, 80)))
    store = PatchStore(path)
    assert store.size("train") == 63 and store.size("val") == 10 and store.attr("pairs") == "test"
    first = Loader(store, 8, xp, seed=3)
    batches = [tuple(to_host(v).copy() for v in next(first)) for _ in range(8)]
    first.close()
    for x, y in batches:
        assert numpy.array_equal(x, -y)                  # pairs stay aligned through augmentation
    resumed = Loader(store, 8, numpy, seed=3, start=5)   # batch 5 onwards, the same
    for k in range(5, 8):
        x, y = next(resumed)
        assert numpy.array_equal(x, batches[k][0])      # and the same on either device
    resumed.close()


def test_patches_held_on_the_gpu_give_the_batches_read_from_the_store(tmp_path, xp):
    """On a GPU the training patches are copied once and each batch is gathered and
    augmented by one kernel (``kernels.augment``): the same batches, bit for bit, as
    reading and augmenting every batch on the host (``resident_gib=0``; NumPy's loader),
    for the whole batch and for each rank's share; on the CPU nothing is resident."""
    from cupyden.settings import using
    rng = numpy.random.default_rng(1)
    a = rng.standard_normal((96, 96)).astype(numpy.float32)
    path = str(tmp_path / "p.h5")
    with PatchStoreWriter(path, 16) as w:
        w.append("train", *cut_patches(a, rng.standard_normal((96, 96)).astype(numpy.float32),
                                       16, 8))
    store = PatchStore(path)
    runs = {"resident": {}, "read": {"resident_gib": 0}}
    ref = Loader(store, 8, numpy, seed=4)
    want = [tuple(v.copy() for v in next(ref)) for _ in range(18)]   # 15 per epoch
    ref.close()
    for name, settings in runs.items():
        with using(**settings):
            whole = Loader(store, 8, xp, seed=4)
            ranks = [Loader(store, 8, xp, seed=4, rank=r, world=2) for r in (0, 1)]
        assert bool(whole.resident) == (xp is not numpy and name == "resident")
        assert whole.resident in (0, 2 * store.size("train") * 16 * 16 * 4)
        for k in range(18):
            got = [to_host(v) for v in next(whole)]
            shares = [[to_host(v) for v in next(r)] for r in ranks]
            for j in (0, 1):
                assert numpy.array_equal(got[j], want[k][j]), (name, k)
                assert numpy.array_equal(numpy.concatenate([s[j] for s in shares]), got[j])
        for loader in [whole] + ranks:
            loader.close()
    store.close()


def test_normalization_robust():
    rng = numpy.random.default_rng(0)
    x = rng.normal(10, 2, (200, 200))
    n = normalization(x)
    assert abs(n.loc - 10) < 0.05 and abs(n.scale - 2) < 0.05
    assert abs(n.apply(x).std() - 1) < 0.02


def test_stack_without_map_id_is_read_with_a_warning():
    path = shared_data("particles", "cryodrgn", "relion31.mrcs")
    with pytest.warns(UserWarning, match="no MAP ID"):
        mic = read_mrc(path, ndim=3)
    assert mic.data.shape == (5, 256, 256)


def test_count_movie_keeps_int16_labels_and_ordinary_permissions(tmp_path):
    movie = numpy.random.default_rng(0).poisson(1.0, (3, 8, 10)).astype(numpy.int16)
    path = str(tmp_path / "m.mrcs")
    write_mrc(path, movie, 1.5, labels=["cupyden test label"])
    with mrcfile.open(path) as m:
        assert m.data.dtype == numpy.int16 and int(m.header.mode) == 1
        assert m.header.ispg == 0                          # an image stack, not a volume
        labels = [bytes(x).decode().strip() for x in m.header.label[:int(m.header.nlabl)]]
        assert "cupyden test label" in labels
        assert numpy.array_equal(m.data, movie)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


def test_cpu_loader_thread_blocks_while_its_slots_are_full(tmp_path):
    """The CPU loader's prefetching thread waits on a queue, not in a polling loop: with
    both slots full and no consumer it takes (almost) no CPU time. A behaviour check on
    the thread's own CPU clock, not a speed claim: a polling thread would use the whole
    wait."""
    import time
    a = numpy.random.default_rng(0).standard_normal((64, 64)).astype(numpy.float32)
    path = str(tmp_path / "p.h5")
    with PatchStoreWriter(path, 16) as w:
        w.append("train", *cut_patches(a, -a, 16, 8, rows=(0, 64)))
    loader = Loader(PatchStore(path), 4, numpy, seed=0)
    try:
        next(loader)                                  # running, and refilling its slots
        time.sleep(0.3)
        clock = time.pthread_getcpuclockid(loader.thread.ident)
        t0 = time.clock_gettime(clock)
        time.sleep(0.5)
        assert time.clock_gettime(clock) - t0 < 0.05
    finally:
        loader.close()
