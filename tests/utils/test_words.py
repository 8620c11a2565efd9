"""Counts in messages (llm_lab/utils/words.py)."""

from __future__ import annotations

import pytest

from llm_lab.utils.words import plural


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [((1, "layer"), {}, "1 layer"), ((2, "layer"), {}, "2 layers"), ((0, "thread"), {}, "0 threads"),
     ((1, "process", "processes"), {}, "1 process"), ((3, "process", "processes"), {}, "3 processes"),
     ((1234, "token"), {"thousands": True}, "1,234 tokens"), ((1, "token"), {"thousands": True}, "1 token")],
)  # fmt: skip
def test_plural(args, kwargs, expected):
    assert plural(*args, **kwargs) == expected
