"""Picking a variant by name from a registry, with the one error message every registry gives.

The model's variants live in small registries next to their classes (``NORMS`` in ``norms.py``,
``POSITIONAL_ENCODINGS`` in ``positional.py``, ``MLPS`` in ``mlp.py``, ``ATTENTION_IMPLS`` and ``ATTENTION_TYPES``
in ``attention.py``). Each registry is the only list of its names: :class:`~llm_lab.core.model.config.MiniGPTConfig`
validates against it, its ``Literal`` field types (what JSON loading checks) are built from it, and the builders
look names up in it through :func:`lookup`, so an unknown name is refused in the same words everywhere.

This module imports nothing of the model, so every module may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["check_choice", "lookup"]

V = TypeVar("V")


def check_choice(field: str, value: Any, choices: Mapping[str, Any] | tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (the keys of a registry, in their order)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{field}={value!r} is not supported; choose one of: {', '.join(choices)}")


def lookup(registry: Mapping[str, V], field: str, value: Any) -> V:
    """``registry[value]``, or a ``ValueError`` naming ``field`` and listing the valid names."""
    check_choice(field, value, registry)
    return registry[value]
