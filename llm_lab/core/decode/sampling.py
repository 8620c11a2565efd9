"""Sampling as one type: :class:`SamplingConfig`, built from the registry of logits processors.

Every sampling setting (``temperature``, ``top_k``, ...) is declared exactly once, as a :class:`SamplingParam` on
the :class:`LogitsProcessor` subclass that uses it (``processors.py``). Everything else is derived from that
registry, so a new sampler is one class in ``processors.py`` and shows up everywhere without another edit:

* :class:`SamplingConfig` (its fields, defaults and validation messages),
* the keyword arguments of ``generate``/``stream`` (``generate(model, ids, 20, temperature=0.8, top_k=50)``),
* the processing chain the decoder runs (in each processor's ``order``),
* the server's request schema (``llm_lab.serve.schemas.completion_request_model``),
* the ``llm-lab sample`` flags (``llm_lab.cli.sample.add_sampling_arguments``),
* the playground's controls (``GET /v1/sampling`` returns :func:`describe_sampling`).

Why not a plain dataclass with one field per setting: then the name of a new sampler would be written in the
dataclass, the decoder, the schema, the CLI and the page, which is what this module exists to avoid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "MIN_SAMPLING_TEMPERATURE",
    "PROCESSORS",
    "LogitsProcessor",
    "SamplingConfig",
    "SamplingParam",
    "describe_sampling",
    "is_greedy",
    "register_processor",
    "sampling_params",
]

# Below this temperature decoding is greedy (see processors.py for why nothing is lost).
MIN_SAMPLING_TEMPERATURE = 1e-5


def is_greedy(temperature: float) -> bool:
    """Whether ``temperature`` means greedy decoding: ``0`` or anything below :data:`MIN_SAMPLING_TEMPERATURE`."""
    return temperature < MIN_SAMPLING_TEMPERATURE


@dataclass(frozen=True)
class SamplingParam:
    """One sampling setting: its name, type, default, valid range and how people set it.

    Attributes:
        name: the keyword (``generate(top_k=...)``), JSON field and, with ``-`` for ``_``, the CLI flag.
        kind: ``int`` or ``float`` (a float setting also takes an int; ``bool`` is never a number).
        default: the library default; ``None`` means the processor is off unless the setting is given.
        low, high: the valid range (``None``: unbounded on that side).
        low_open, high_open: whether that bound itself is excluded.
        neutral: the value that changes nothing (``1`` for a temperature or a penalty); with ``default=None``
            the processor also runs only when the value differs from it.
        note: said after the range in error messages, e.g. ``"0 means greedy"``.
        help: one line for ``--help``, the API docs and the playground.
        requirement: the range as error messages say it, when the generated wording is not the right one.
        api_high: a tighter upper bound for the HTTP API (the OpenAI range of ``temperature`` is ``[0, 2]``).
        api_off: a value clients of the HTTP API send to mean "off" (``top_k: 0``), mapped to ``default``.
        control: ``(min, max, step, initial)`` of the playground's slider (``max`` may be ``"vocab_size"``: the served
            model's vocabulary size); ``None``: no control on the page.
    """

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    neutral: Any = None
    note: str = ""
    help: str = ""
    requirement: str | None = None
    api_high: float | None = None
    api_off: Any = None
    control: tuple[float, float | str, float, float] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name.startswith("_"):
            raise ValueError(f"a sampling setting's name must be a public Python identifier, got {self.name!r}")
        if self.kind not in (int, float):
            raise ValueError(f"sampling setting {self.name!r}: kind must be int or float, got {self.kind!r}")
        self.check(self.default)  # a default outside its own range is a bug in the declaration

    @property
    def nullable(self) -> bool:
        """Whether ``None`` is accepted (it turns the processor off)."""
        return self.default is None

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--top-k``."""
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """The valid range in words: ``>= 0``, ``in (0, 1]``, ``an integer >= 1``."""
        if self.requirement is not None:
            return self.requirement
        if self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}" if self.low is not None else "any number"
        else:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            text = f"in {left}{self.low:g}, {self.high:g}{right}"
        return f"an integer {text}" if self.kind is int else text

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def check(self, value: Any) -> Any:
        """Return ``value`` when it is valid for this setting, else raise ``ValueError`` naming the setting."""
        if value is None and self.nullable:
            return None
        notes = [self.note] if self.note else []
        if self.nullable:
            notes.append("or None to disable it")
        suffix = f" ({'; '.join(notes)})" if notes else ""
        is_number = not isinstance(value, bool) and isinstance(value, int if self.kind is int else int | float)
        if is_number and not math.isfinite(value):
            is_number = False
        if not is_number and self.kind is float and self.requirement is None:
            raise ValueError(f"{self.name} must be a finite number {self.range_text()}{suffix}, got {value!r}")
        if not is_number or not self._in_range(value):
            raise ValueError(f"{self.name} must be {self.range_text()}{suffix}, got {value!r}")
        return value

    def is_active(self, value: Any) -> bool:
        """Whether ``value`` makes the processor do something (not ``None`` and not the neutral value)."""
        return value is not None and value != self.neutral

    def describe(self) -> dict[str, Any]:
        """JSON description for clients (the playground renders its controls from it)."""
        high = self.high if self.api_high is None else self.api_high
        described: dict[str, Any] = {
            "name": self.name,
            "type": "integer" if self.kind is int else "number",
            "default": self.default,
            "minimum": self.low,
            "maximum": high,
            "exclusive_minimum": self.low_open,
            "exclusive_maximum": self.high_open,
            "nullable": self.nullable,
            "off": self.api_off,
            "help": self.help,
        }
        if self.control is not None:
            low, top, step, initial = self.control
            described["control"] = {"min": low, "max": top, "step": step, "value": initial}
        return described


class LogitsProcessor:
    """One step of the sampling chain: reads its settings from a :class:`SamplingConfig`, reshapes ``(B, V)`` logits.

    Subclass it in ``processors.py``, declare ``params`` and ``order``, implement ``__call__``, and decorate it with
    :func:`register_processor`; that is all a new sampler needs.

    Class attributes:
        params: the settings this processor owns (their names are written nowhere else).
        order: where it runs in the chain (lower first): penalty 10, temperature 20, top-k 30, top-p 40, min-p 50.
        runs_when_greedy: whether it still runs under greedy decoding (only what can change an argmax should).
        needs_seen: whether ``__call__`` needs ``seen``, the ``(B, V)`` flags of tokens already in each row.
    """

    params: ClassVar[tuple[SamplingParam, ...]] = ()
    order: ClassVar[int] = 100
    runs_when_greedy: ClassVar[bool] = False
    needs_seen: ClassVar[bool] = False

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config

    @classmethod
    def is_enabled(cls, config: SamplingConfig) -> bool:
        """Whether this processor changes anything under ``config`` (default: any of its settings is active)."""
        return any(param.is_active(getattr(config, param.name)) for param in cls.params)

    def __call__(self, logits: Any, seen: Any = None) -> Any:
        """Return the processed ``(B, V)`` logits (tokens that may no longer be drawn get ``-inf``)."""
        raise NotImplementedError


# The registry: processor class name -> class. The only list of samplers.
PROCESSORS: dict[str, type[LogitsProcessor]] = {}


def register_processor(cls: type[LogitsProcessor]) -> type[LogitsProcessor]:
    """Class decorator: add ``cls`` to :data:`PROCESSORS`; its settings become part of :class:`SamplingConfig`."""
    if not (isinstance(cls, type) and issubclass(cls, LogitsProcessor)):
        raise ValueError(f"register_processor takes a LogitsProcessor subclass, got {cls!r}")
    for param in cls.params:
        if hasattr(SamplingConfig, param.name):
            raise ValueError(
                f"sampling setting {param.name!r} of {cls.__name__} would hide SamplingConfig.{param.name}"
            )
    owners = {param.name: other for other in PROCESSORS.values() if other is not cls for param in other.params}
    for param in cls.params:
        if param.name in owners:
            raise ValueError(
                f"sampling setting {param.name!r} of {cls.__name__} is already owned by {owners[param.name].__name__}"
            )
    PROCESSORS[cls.__name__] = cls
    return cls


def ordered_processors() -> list[type[LogitsProcessor]]:
    """The registered processors in chain order."""
    return sorted(PROCESSORS.values(), key=lambda cls: cls.order)


def sampling_params() -> list[SamplingParam]:
    """Every registered sampling setting, in chain order."""
    return [param for cls in ordered_processors() for param in cls.params]


class SamplingConfig(Mapping[str, Any]):
    """Validated sampling settings, immutable, built once and passed whole (``generate(..., sampling=config)``).

    Its fields are the registered processors' :class:`SamplingParam`\\ s: ``SamplingConfig(temperature=0.8,
    top_k=50)``; anything not given takes its default. A value out of range is a ``ValueError`` naming the setting;
    an unknown name a ``TypeError`` listing the known ones (as for a misspelled keyword argument). Read a setting as
    an attribute (``config.top_k``) or a key; :meth:`replace` gives a changed copy.
    """

    __slots__ = ("_values",)
    _values: dict[str, Any]

    def __init__(self, **settings: Any) -> None:
        params = {param.name: param for param in sampling_params()}
        unknown = sorted(set(settings) - set(params))
        if unknown:
            raise TypeError(f"unknown sampling setting {unknown[0]!r}; the settings are: {', '.join(sorted(params))}")
        values = {}
        for name, param in params.items():
            value = param.check(settings.get(name, param.default))
            values[name] = float(value) if param.kind is float and value is not None else value
        object.__setattr__(self, "_values", values)

    @classmethod
    def from_kwargs(cls, base: SamplingConfig | None = None, **settings: Any) -> SamplingConfig:
        """``base`` (default: the defaults) with ``settings`` replacing some of its values."""
        if base is not None and not isinstance(base, SamplingConfig):
            raise ValueError(f"sampling must be a SamplingConfig, got {type(base).__name__}")
        return cls(**{**(base._values if base is not None else {}), **settings})

    def replace(self, **changes: Any) -> SamplingConfig:
        """A copy with ``changes`` applied (validated again)."""
        return SamplingConfig.from_kwargs(self, **changes)

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (argmax): a temperature of 0 or below :data:`MIN_SAMPLING_TEMPERATURE`."""
        return is_greedy(self._values.get("temperature", 1.0))

    def processors(self) -> list[LogitsProcessor]:
        """The processors that change anything under these settings, in chain order (greedy: only penalties)."""
        greedy = self.greedy
        return [
            cls(self) for cls in ordered_processors() if cls.is_enabled(self) and (cls.runs_when_greedy or not greedy)
        ]

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"SamplingConfig has no setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SamplingConfig is immutable; use .replace(...)")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SamplingConfig) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self._values.items())
        return f"SamplingConfig({shown})"


def describe_sampling() -> dict[str, Any]:
    """The JSON the server gives at ``GET /v1/sampling``: every setting, in chain order, for clients to render."""
    return {"object": "sampling", "params": [param.describe() for param in sampling_params()]}
