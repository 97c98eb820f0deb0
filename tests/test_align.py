"""In-plane alignment of particle images (issue 19): transform, polar rotational
correlation, alignment against a reference, aligned class averages."""

import numpy
import pytest

from cupyden.align import (align, align_classes, average_aligned, inverse,
                           rotational_correlation, rotational_correlation_loop, transform,
                           transform_loop)
from cupyden.backend import to_host
from cupyden.cluster import class_averages
from cupyden.simulate import DEFAULT_MODEL, particle_stack, read_atoms

from conftest import rel


@pytest.fixture(scope="module")
def groel():
    return read_atoms(DEFAULT_MODEL)


def test_transform_matches_its_loop_reference(xp):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((3, 9, 8))
    angles, shifts = numpy.array([0.0, 37.0, 200.0]), rng.uniform(-2, 2, (3, 2))
    got = transform(xp.asarray(x), angles, shifts)
    assert rel(got, transform_loop(x, angles, shifts)) < 1e-12


def test_quarter_turn_and_whole_pixel_shift_are_exact():
    x = numpy.random.default_rng(1).standard_normal((1, 8, 8))
    # a 90-degree turn counter-clockwise in (x = column, y = row) about (4, 4):
    # out(c + r) = in(c + R(-90) r), R(-90) (rx, ry) = (ry, -rx)
    out = transform(x, [90.0], [[0.0, 0.0]])[0]
    assert out[4 + 1, 4 + 2] == pytest.approx(x[0, 4 - 2, 4 + 1])       # r = (2, 1)
    moved = transform(x, [0.0], [[2.0, -1.0]])[0]
    assert numpy.array_equal(moved[0:7, 2:], x[0, 1:8, :6])


def test_inverse_undoes_a_transform():
    x = numpy.zeros((1, 32, 32))
    x[0, 10:20, 12:18] = 1.0
    a, t = numpy.array([63.0]), numpy.array([[1.5, -2.25]])
    ia, it = inverse(a, t)
    back = transform(transform(x, a, t), ia, it)
    assert numpy.abs(back - x)[0, 6:26, 6:26].mean() < 0.05       # two bilinear blurs


def test_rotational_correlation_matches_its_loop_reference(xp):
    rng = numpy.random.default_rng(2)
    r, g = rng.standard_normal((5, 16)), rng.standard_normal((5, 16))
    got = to_host(rotational_correlation(xp.asarray(r), xp.asarray(g)))
    assert numpy.abs(got - rotational_correlation_loop(r, g)).max() < 1e-10


def test_particle_stack_images_are_turned_and_moved_clean_projections(groel):
    xyz, z = groel
    st = particle_stack(xyz, z, 2, 3, 48, 5.0, 1e6, numpy.random.default_rng(0))
    assert st.images.shape == (6, 48, 48) and st.clean.shape == (2, 48, 48)
    assert list(st.labels) == [0, 0, 0, 1, 1, 1]
    assert (numpy.hypot(*st.shifts.T) <= 3).all() and ((st.angles >= 0) & (st.angles < 360)).all()
    assert float(numpy.concatenate([st.images]).std()) == pytest.approx(1.0, abs=0.01)
    made = transform(st.clean[st.labels].astype(numpy.float64), st.angles, st.shifts)
    disc = numpy.hypot(*(numpy.mgrid[:48, :48] - 24)) < 20
    for n in range(6):        # exact projection vs interpolated clean one: close, not equal
        assert numpy.corrcoef(made[n][disc], st.images[n][disc])[0, 1] > 0.95


def test_align_recovers_known_angles_and_shifts(xp, groel):
    xyz, z = groel
    st = particle_stack(xyz, z, 2, 4, 64, 4.0, 5.0, numpy.random.default_rng(3))
    angles, shifts, scores = align(xp.asarray(st.images), xp.asarray(st.clean), st.labels, 4.0)
    error = (angles - st.angles + 180) % 360 - 180
    assert numpy.abs(error).max() < 2.0                     # degrees
    assert numpy.abs(shifts - st.shifts).max() < 0.5        # px
    assert (scores > 0.3).all()


def test_align_without_rotation_finds_the_shift_only(xp, groel):
    """rotate=False: every angle 0, the shift of unturned images recovered."""
    xyz, z = groel
    st = particle_stack(xyz, z, 2, 4, 64, 4.0, 5.0, numpy.random.default_rng(3))
    moved = transform(xp.asarray(st.clean[st.labels]), numpy.zeros(8), st.shifts)
    angles, shifts, scores = align(moved, xp.asarray(st.clean), st.labels, 4.0, rotate=False)
    assert (angles == 0).all() and numpy.abs(shifts - st.shifts).max() < 0.3
    assert (scores > 0.9).all()                       # at the whole-pixel peak


def test_aligned_class_averages_beat_plain_ones(xp, groel):
    """Members at random angles: the plain average blurs into rings, the aligned one
    resembles the projection (PSNR against it at least 3 dB higher)."""
    xyz, z = groel
    st = particle_stack(xyz, z, 2, 12, 48, 5.0, 0.5, numpy.random.default_rng(4))
    averages, angles, shifts = align_classes(xp.asarray(st.images), st.labels, 2,
                                             iterations=2, max_shift=4.0)
    again = to_host(average_aligned(xp.asarray(st.images), st.labels, 2, angles, shifts))
    assert numpy.abs(again - averages).max() < 1e-4
    plain = class_averages(st.images, st.labels, 2)
    disc = numpy.hypot(*(numpy.mgrid[:48, :48] - 24)) < 22
    for c in range(2):
        ref = st.clean[c]
        gains = []
        for avg in (plain[c], averages[c]):
            a, t, _ = align(avg[None], ref[None])            # onto the clean projection
            back = transform(avg[None].astype(numpy.float64), *inverse(a, t))[0]
            gains.append(-10 * numpy.log10(((back - ref)[disc] ** 2).mean()))
        assert gains[1] - gains[0] > 3.0
