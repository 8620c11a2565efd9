import math

import pytest

from llm_lab.core.train.schedule import SCHEDULES, lr_at, muon_momentum_at


def test_warmup_peak_cosine_and_floor():
    """lr=1e-3, min_lr=1e-4, warmup 10, decay ends at 110.

    step 0 -> 1e-3 * 1/10 = 1e-4; step 9 -> 1e-3 (end of warmup); step 10 -> progress 0 -> lr;
    step 60 -> progress 0.5 -> min + (lr - min) * (1 + cos(pi/2)) / 2 = 1e-4 + 9e-4 / 2 = 5.5e-4;
    step 110 and later -> min_lr.
    """
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(5.5e-4)
    assert lr_at(35, **kw) == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(110, **kw) == lr_at(5000, **kw) == 1e-4
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # monotone decay


def test_no_warmup_starts_at_peak():
    assert lr_at(0, lr=3e-4, min_lr=0.0, warmup_steps=0, decay_steps=100) == pytest.approx(3e-4)


KW = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110, decay_fraction=0.2)


def test_wsd_breakpoints():
    """Warm-up 10, decay over the last 0.2 * 110 = 22 steps: decay starts at 110 - 22 = 88.

    step 0 -> 1e-4 (1/10 of lr); step 9 -> lr (end of warm-up); steps 10..88 -> lr (stable, 88 is the start of
    the decay, progress 0); step 99 -> progress 11/22 = 0.5 -> 1e-3 - 9e-4 / 2 = 5.5e-4;
    step 109 (last step before decay_steps) -> progress 21/22 -> 1e-3 - 9e-4 * 21/22; step 110 and on -> min_lr.
    """
    wsd = SCHEDULES["wsd"].lr_at
    assert wsd(0, **KW) == pytest.approx(1e-4)
    assert wsd(9, **KW) == pytest.approx(1e-3)
    assert all(wsd(s, **KW) == 1e-3 for s in range(10, 89))
    assert SCHEDULES["wsd"].decay_start(warmup_steps=10, decay_steps=110, decay_fraction=0.2) == 88
    assert wsd(89, **KW) < 1e-3
    assert wsd(99, **KW) == pytest.approx(5.5e-4)
    assert wsd(109, **KW) == pytest.approx(1e-3 - 9e-4 * 21 / 22)
    assert wsd(110, **KW) == wsd(10_000, **KW) == 1e-4
    # A decay fraction reaching into warm-up starts the decay right after it.
    assert SCHEDULES["wsd"].decay_start(warmup_steps=10, decay_steps=110, decay_fraction=1.0) == 10


def test_linear_breakpoints():
    """Warm-up 10, then a straight line from 1e-3 at step 10 to min_lr at 110: step 60 is the midpoint 5.5e-4."""
    linear = SCHEDULES["linear"].lr_at
    assert linear(0, **KW) == pytest.approx(1e-4)
    assert linear(9, **KW) == pytest.approx(1e-3)
    assert linear(10, **KW) == pytest.approx(1e-3)
    assert linear(60, **KW) == pytest.approx(5.5e-4)
    assert linear(109, **KW) == pytest.approx(1e-4 + 9e-4 / 100)
    assert linear(110, **KW) == 1e-4
    # min_lr=0: linear decay to zero.
    assert SCHEDULES["linear"].lr_at(110, **(KW | {"min_lr": 0.0})) == 0.0


def test_cosine_entry_is_lr_at():
    cosine_kw = {k: v for k, v in KW.items() if k != "decay_fraction"}
    assert [SCHEDULES["cosine"].lr_at(s, **KW) for s in range(120)] == [lr_at(s, **cosine_kw) for s in range(120)]


def test_muon_momentum_warmup():
    """0.85 at step 0, linear to 0.95 at step 300 (halfway: 0.90), constant after; no warm-up: constant."""
    assert muon_momentum_at(0, momentum=0.95, warmup_steps=300) == pytest.approx(0.85)
    assert muon_momentum_at(150, momentum=0.95, warmup_steps=300) == pytest.approx(0.90)
    assert muon_momentum_at(300, momentum=0.95, warmup_steps=300) == 0.95
    assert muon_momentum_at(0, momentum=0.95, warmup_steps=0) == 0.95
    assert muon_momentum_at(0, momentum=0.5, warmup_steps=10) == 0.5  # never warms *down*
