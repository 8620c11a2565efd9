import math

import pytest

from llm_lab.core.train.schedule import lr_at


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
