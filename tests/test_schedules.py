"""Learning-rate schedules (issue: losses and training options)."""

import math

import pytest

from cupyden.optim.schedules import LRSchedule


def test_constant_and_warmup():
    s = LRSchedule("constant", 0.01, 100, warmup=4)
    assert [s.at(t) for t in (1, 2, 4, 5, 100)] == pytest.approx([0.0025, 0.005, 0.01, 0.01, 0.01])


def test_step():
    s = LRSchedule("step", 1.0, 100, step_size=10, gamma=0.5)
    assert [s.at(t) for t in (1, 10, 11, 21, 31)] == [1.0, 1.0, 0.5, 0.25, 0.125]


def test_cosine_with_warmup():
    s = LRSchedule("cosine", 1.0, 110, warmup=10, min_lr=0.0)
    assert s.at(10) == pytest.approx(1.0)
    assert s.at(60) == pytest.approx((1 + math.cos(math.pi * 0.5)) / 2)
    assert s.at(110) == pytest.approx(0.0, abs=1e-12)


def test_plateau():
    s = LRSchedule("plateau", 1.0, 100, patience=2, factor=0.5)
    for v in (1.0, 0.9, 0.9, 0.9):          # improves, then two validations without
        s.observe(v)
    assert s.at(50) == 0.5
    state = s.state()
    t = LRSchedule("plateau", 1.0, 100, patience=2, factor=0.5)
    t.load_state(state)
    assert t.at(50) == 0.5
