"""Counts in messages: ``1 layer``, ``2 layers``, never ``1 layers``."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int | float, noun: str, plural_form: str | None = None, *, thousands: bool = False) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is exactly 1.

    Args:
        n: the count.
        noun: the singular (``"layer"``).
        plural_form: the plural where it is not ``noun + "s"``.
        thousands: write ``n`` with thousands separators (``12,345 tokens``).

    >>> plural(1, "layer"), plural(2, "thread"), plural(12345, "token", thousands=True)
    ('1 layer', '2 threads', '12,345 tokens')
    """
    word = noun if n == 1 else (plural_form or noun + "s")
    return f"{n:,} {word}" if thousands else f"{n} {word}"
