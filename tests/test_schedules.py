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


def test_cosine_fitted_to_a_budget_and_its_state_round_trip():
    s = LRSchedule("cosine", 1.0, 1000, warmup=10, min_lr=0.1)
    s.fit_budget(100, 20)                   # the budget holds 20 more steps: T = 120
    assert s.T == 120
    assert s.at(65) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.5)) / 2)
    assert s.at(120) == pytest.approx(0.1) and s.at(130) == pytest.approx(0.1)
    s.fit_budget(100, 5000)                 # never beyond total_steps
    assert s.T == 1000
    s.fit_budget(100, -3)                   # out of time: the curve ends now
    assert s.T == 100 and s.at(100) == pytest.approx(0.1)
    s.fit_budget(300, 40)
    t = LRSchedule("cosine", 1.0, 1000, warmup=10, min_lr=0.1)
    t.load_state(s.state())
    assert t.T == 340 and [t.at(k) for k in (200, 340)] == [s.at(k) for k in (200, 340)]
    old = {k: v for k, v in s.state().items() if k != "T"}   # a checkpoint from before budgets
    u = LRSchedule("cosine", 1.0, 1000, warmup=10, min_lr=0.1)
    u.load_state(old)
    assert u.T == 1000
