"""Load, check and override config dataclasses from JSON.

Every config in the lab is a plain dataclass (``MiniGPTConfig``, ``TrainerConfig``, ...) that validates
itself in ``__post_init__``. This module is the one place that turns JSON into those dataclasses:

* ``config_from_dict(cls, data)`` type-checks each value against the field's annotation
  (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``, ``tuple``/``list``) and rejects unknown
  keys by name, listing the valid ones.
* ``load_json_config(path, cls)`` reads a JSON file. A run config holds sections (``{"model": {...},
  "train": {...}, "tokenizer": {...}}``); a class names its section with a ``json_section`` class attribute,
  and a file without sections is taken as the config itself.
* ``apply_overrides(sections, ["train.lr=3e-4", ...])`` applies ``--set`` style overrides with the same checks.

JSON is written with :func:`config_to_dict`, which is ``dataclasses.asdict`` except for one generic rule: a field
backed by a data descriptor (``MiniGPTConfig.n_kv_head``, whose attribute reads back a value derived when none was
given) is written and overridden as it was given, so a derived value is never stored and goes stale.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from llm_lab.utils.json_input import load_json_file, loads_strict
from llm_lab.utils.paths import check_input_file

T = TypeVar("T")

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_json_config",
    "parse_override_value",
    "replace_config",
]


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` checked (and, for int -> float or list -> tuple, converted) against ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in get_args(tp))}")
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return _coerce(value, option, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{where}: {value!r} does not match {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ValueError(f"{where}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {value!r}")
        return config_from_dict(tp, value, where=where)
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], *, where: str | None = None) -> T:
    """Build the dataclass ``cls`` from ``data``, checking every key and value.

    Args:
        cls: a dataclass type.
        data: a mapping of field names to JSON values.
        where: a prefix for error messages (a file name or section).

    Returns:
        An instance of ``cls`` (its ``__post_init__`` validation has run).

    Raises:
        ValueError: an unknown key (the message lists the valid ones) or a value of the wrong type.
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ValueError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys are: {', '.join(fields)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _derived_when_omitted(cls: type, name: str) -> bool:
    """Whether field ``name`` of ``cls`` is a data descriptor that derives its value when given ``None``."""
    return hasattr(type(inspect.getattr_static(cls, name, None)), "__set__")


def _given_values(config: Any) -> dict[str, Any]:
    """The init fields of ``config`` as the caller gave them.

    A plain field reads back what was given. A field backed by a data descriptor may derive its value when given
    ``None`` (see ``llm_lab.core.model.config.GivenOrDerived``); the given value sits in the instance dict, and
    that is what JSON and overrides keep, so the derived value follows the other fields.
    """
    return {
        f.name: vars(config).get(f.name) if _derived_when_omitted(type(config), f.name) else getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.init
    }


def replace_config(config: T, **changes: Any) -> T:
    """``dataclasses.replace`` from the values ``config`` was given, so a field it derived derives again.

    ``dataclasses.replace`` reads every other field back through its attribute, which turns a derived value
    (``MiniGPTConfig.n_kv_head`` of an MHA model) into a given one that would then go stale. Validated again.
    """
    return type(config)(**{**_given_values(config), **changes})


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON form of a config dataclass: ``dataclasses.asdict`` with tuples as lists, derived-when-omitted
    fields as given (``null`` for "derive it")."""
    data = dataclasses.asdict(config)
    data.update({k: v for k, v in _given_values(config).items() if _derived_when_omitted(type(config), k)})
    return json.loads(json.dumps(data))


def _read_json(path: str | Path) -> Any:
    path = check_input_file(path, "config file", "a JSON file")  # a directory, a FIFO: said so
    return load_json_file(path)  # strict: a duplicate key, NaN or deep nesting is refused, never last-one-wins


def load_json_config(path: str | Path, cls: type[T]) -> T:
    """Load the config dataclass ``cls`` from a JSON file.

    A run config file holds sections such as ``{"model": {...}, "train": {...}}``; ``cls.json_section``
    names the section this class reads. A file with no such section is taken as the config itself.

    Example:
        >>> from llm_lab.core.model.gpt import MiniGPTConfig
        >>> cfg = load_json_config("configs/p1/gpt_small_subword.json", MiniGPTConfig)  # doctest: +SKIP
    """
    data = _read_json(path)
    section = getattr(cls, "json_section", None)
    if isinstance(data, dict) and section and isinstance(data.get(section), dict):
        return config_from_dict(cls, data[section], where=f"{path}: [{section}]")
    return config_from_dict(cls, data, where=str(path))


def parse_override_value(text: str) -> Any:
    """Parse the value of a ``--set key=value`` override: JSON if it parses (numbers, true, null, lists),
    otherwise the raw string (so ``model.norm=rmsnorm`` needs no quotes). Parsed strictly
    (:func:`~llm_lab.utils.json_input.loads_strict`): what is not strict JSON stays a string, which the field's
    type check then refuses by name."""
    try:
        return loads_strict(text, what="--set value")
    except ValueError:
        return text


def apply_overrides(sections: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a dict of config dataclasses.

    Args:
        sections: e.g. ``{"model": MiniGPTConfig(...), "train": TrainerConfig(...)}``.
        overrides: strings like ``"train.max_steps=100"`` or ``"model.pos_encoding=rope"``.

    Returns:
        A new dict with the overridden sections rebuilt (and so re-validated).

    Raises:
        ValueError: a malformed override, an unknown section or key (listing the valid ones), a wrong type.
    """
    updates: dict[str, dict[str, Any]] = {}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. train.max_steps=100")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        if section not in sections:
            raise ValueError(f"--set {item!r}: unknown section {section!r}; valid sections: {', '.join(sections)}")
        updates.setdefault(section, {})[key] = parse_override_value(raw)
    result = dict(sections)
    for section, changes in updates.items():
        current = sections[section]
        # Rebuild from what the config was given, so a value it derived (MiniGPTConfig.n_kv_head) is derived afresh.
        data = _given_values(current)
        valid = set(data)
        for key in changes:
            if key not in valid:
                raise ValueError(
                    f"--set {section}.{key}: unknown key {key!r}; valid keys for {section}: {', '.join(data)}"
                )
        data.update(changes)
        result[section] = config_from_dict(type(current), data, where=f"--set {section}")
    return result
