"""Helpers for the experiment and benchmark tests."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path, min_size: tuple[int, int] = (200, 150)) -> None:
    """The file is a PNG (signature) that PIL and matplotlib both decode, of a plausible size."""
    from matplotlib import image as mpimg
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0  # not a blank canvas


def as_float(cell: str) -> float:
    value = float(cell)
    assert math.isfinite(value), cell
    return value


@pytest.fixture
def png_ok():
    return check_png
