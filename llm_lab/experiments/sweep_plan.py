"""The plan of an ablation sweep: its settings (a grid, named settings, or both crossed), seeds and budget, checked
before anything runs, and its record in the sweep folder's ``sweep.json``.

A :class:`SweepPlan` expands to one :class:`RunSpec` per setting x seed, each with its full validated run config;
:func:`load_sweep_file` reads a sweep file, :func:`read_manifest` and :func:`plan_from_manifest` read back the plan
a sweep wrote. Running it is :func:`llm_lab.experiments.sweep.run_sweep`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_lab.core.train.run_config import RunConfig
from llm_lab.utils.config_loader import parse_override_value
from llm_lab.utils.json_input import load_json_file
from llm_lab.utils.seeds import check_seed

SWEEP_FORMAT_VERSION = 1
MANIFEST = "sweep.json"
_KIND = "llm-lab sweep"
# Keys a sweep owns: seeds come from the sweep's seed list, so a setting may not fix them.
_RESERVED_KEYS = ("train.seed",)
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
# Bounds on what one value may ask of a sweep. Each run is a directory and a row of the report, so a sweep is
# bounded by what a report can show and a person can compare: 1000 seeds per setting is far past the few a
# confidence interval needs, 10,000 runs far past any grid worth reading. ``--seeds 1000000000`` built a list
# of a billion seeds (23 GiB) before anything ran.
MAX_SEEDS = 1000
MAX_RUNS = 10_000
#: The most values one grid axis may take: past 100, an axis is a curve to fit, not settings to compare side by
#: side (each value is a row of the report and a line or bar of its plots). ``--grid train.lr=`` with 5000 values
#: was accepted (5000 runs, under :data:`MAX_RUNS`) and ran for hours.
MAX_GRID_VALUES = 100
#: The longest wall-time budget per run: a week. ``--time-budget 1e12`` (31,700 years) calibrated 3.2e14 steps.
MAX_TIME_BUDGET_S = 7 * 24 * 3600.0


# ------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Setting:
    """One configuration of the sweep: a name and the ``section.key=value`` overrides that make it.

    Attributes:
        name: shown in tables and plots, e.g. ``"norm=rmsnorm mlp=swiglu"`` or ``"baseline"``.
        overrides: applied to the base config in order (values as JSON text, e.g. ``model.n_layer=3``).
    """

    name: str
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The name made safe for a directory name (``norm=rmsnorm mlp=swiglu`` -> ``norm_rmsnorm_mlp_swiglu``)."""
        return _SLUG_UNSAFE.sub("_", self.name.replace("=", "-")).strip("_") or "setting"


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: a setting at a seed, its directory name and its full (validated) config."""

    setting: Setting
    seed: int
    config: RunConfig

    @property
    def name(self) -> str:
        return f"{self.setting.slug}-seed{self.seed}"


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """``model.norm`` -> ``norm`` where the last part is unique among the keys, else the full key."""
    last = [k.split(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def grid_settings(
    grid: Mapping[str, Sequence[Any]] | None = None, named: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Setting]:
    """The settings of a grid (every combination of its values), of named settings, or of both crossed.

    Args:
        grid: ``{"model.norm": ["layernorm", "rmsnorm"], ...}``; the first key varies slowest.
        named: ``{"baseline": {}, "muon+wsd": {"train.lr": 0.002}}``: settings that are not a grid.

    Raises:
        ValueError: an empty grid axis, a malformed key, no settings at all.
    """
    grid = dict(grid or {})
    named = dict(named or {"": {}})
    for key, values in grid.items():
        _check_key(key, "grid")
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"grid {key}: give a non-empty list of values, got {values!r}")
        if len(values) > MAX_GRID_VALUES:
            raise ValueError(
                f"grid {key}: {len(values):,} values; one grid axis may have at most {MAX_GRID_VALUES} (each value is "
                "a row of the report); sample the range more coarsely"
            )
        if len(set(map(json.dumps, values))) != len(values):
            raise ValueError(f"grid {key}: each value may appear once, got {list(values)}")
    combinations = math.prod(len(values) for values in grid.values()) * len(named)
    if combinations > MAX_RUNS:
        raise ValueError(f"the grid makes {combinations:,} settings; a sweep may have at most {MAX_RUNS:,} runs")
    short = _short_keys(list(grid))
    settings = []
    for label, fixed in named.items():
        if not isinstance(fixed, Mapping):
            raise ValueError(f"setting {label!r}: expected an object of section.key: value, got {fixed!r}")
        for key in fixed:
            _check_key(key, f"setting {label!r}")
        base = [_override(k, v) for k, v in fixed.items()]
        for combo in itertools.product(*grid.values()):
            parts = [f"{short[k]}={_show(v)}" for k, v in zip(grid, combo, strict=True)]
            name = " ".join(([label] if label else []) + parts) or "base"
            overrides = base + [_override(k, v) for k, v in zip(grid, combo, strict=True)]
            settings.append(Setting(name, tuple(overrides)))
    return settings


def seed_list(first: int, count: int) -> list[int]:
    """``count`` consecutive seeds from ``first`` (``--seeds N``), refused above :data:`MAX_SEEDS` before any is
    made.

    Raises:
        ValueError: ``count`` below 1 or above :data:`MAX_SEEDS`.
    """
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SEEDS:
        raise ValueError(f"--seeds must be at least 1 and at most {MAX_SEEDS} (seeds per setting), got {count!r}")
    check_seed(first + count - 1, f"the last seed (train.seed {first} + --seeds {count} - 1)")
    return [first + i for i in range(count)]


def _check_key(key: str, where: str) -> None:
    if not isinstance(key, str) or "." not in key or "=" in key:
        raise ValueError(f"{where}: {key!r} is not a section.key name (e.g. model.norm)")
    if key in _RESERVED_KEYS:
        raise ValueError(f"{where}: {key} is set by the sweep for each run; use --seeds instead")


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``"model.norm=layernorm,rmsnorm"`` -> ``("model.norm", ["layernorm", "rmsnorm"])`` (values parsed as JSON
    where they parse, so ``model.n_layer=2,3`` gives integers). Lists as values need a sweep file.

    Raises:
        ValueError: no ``=`` or no values.
    """
    if "=" not in text:
        raise ValueError(f"--grid {text!r}: expected section.key=value1,value2 (e.g. model.norm=layernorm,rmsnorm)")
    key, raw = text.split("=", 1)
    values = [parse_override_value(v.strip()) for v in raw.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--grid {text!r}: no values after '='")
    _check_key(key, f"--grid {text!r}")
    return key, values


@dataclass
class SweepPlan:
    """What a sweep runs.

    Attributes:
        base: the run config every run starts from (shared ``--set`` values already applied).
        data: the corpus (a text file or a prepared directory), the same for every run.
        settings: the configurations compared, in order.
        seeds: every setting runs once per seed (``train.seed``).
        time_budget_s: ``None``: equal steps (the config's); a number: equal wall time per run, in seconds.
        baseline: the setting the report compares the others against (default: the first).
    """

    base: RunConfig
    data: Path
    settings: Sequence[Setting]
    seeds: Sequence[int]
    time_budget_s: float | None = None
    baseline: str | None = None

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.settings = tuple(self.settings)
        self.seeds = tuple(self.seeds)
        if not self.settings:
            raise ValueError("the sweep has no settings; give --grid section.key=v1,v2 or a sweep file")
        if not self.seeds:
            raise ValueError("the sweep needs at least one seed (--seeds N with N >= 1)")
        for seed in self.seeds:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
        if len(self.seeds) > MAX_SEEDS:
            raise ValueError(f"a sweep may have at most {MAX_SEEDS} seeds per setting, got {len(self.seeds):,}")
        if len(self.settings) * len(self.seeds) > MAX_RUNS:
            raise ValueError(
                f"{len(self.settings):,} settings x {len(self.seeds):,} seeds make "
                f"{len(self.settings) * len(self.seeds):,} runs; a sweep may have at most {MAX_RUNS:,}"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"each seed may appear once, got {list(self.seeds)}")
        names = [s.name for s in self.settings]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two settings are both named {name!r}; name them apart")
        slugs = [s.slug for s in self.settings]
        for setting in self.settings:
            if slugs.count(setting.slug) > 1:
                raise ValueError(f"settings {[s.name for s in self.settings if s.slug == setting.slug]} would share "
                                 f"the directory name {setting.slug!r}; rename one")  # fmt: skip
        if self.baseline is None:
            self.baseline = self.settings[0].name
        elif self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not a setting of this sweep; choose from: {names}")
        if self.time_budget_s is not None and not (
            isinstance(self.time_budget_s, int | float) and math.isfinite(self.time_budget_s) and self.time_budget_s > 0
        ):
            raise ValueError(f"--time-budget must be a positive number of seconds, got {self.time_budget_s!r}")
        if self.time_budget_s is not None and self.time_budget_s > MAX_TIME_BUDGET_S:
            raise ValueError(
                f"--time-budget {self.time_budget_s:g}s is more than a week per run; the most is "
                f"{MAX_TIME_BUDGET_S:g}s (for longer runs, train them with llm-lab train)"
            )
        if not self.data.exists():
            raise FileNotFoundError(f"--data {self.data} does not exist (give a text file or a prepared directory)")

    def runs(self) -> list[RunSpec]:
        """Every setting x seed with its validated config (settings in order, seeds inside).

        Raises:
            ValueError: one line naming the setting and the fault (unknown key, wrong type, invalid config).
        """
        specs = []
        for setting in self.settings:
            for seed in self.seeds:
                try:
                    config = self.base.with_overrides([*setting.overrides, f"train.seed={seed}"])
                except ValueError as e:
                    raise ValueError(f"setting {setting.name!r}: {e}") from None
                specs.append(RunSpec(setting, seed, config))
        return specs

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": _KIND,
            "format_version": SWEEP_FORMAT_VERSION,
            "base": self.base.to_dict(),
            "data": str(self.data.resolve()),
            "time_budget_s": self.time_budget_s,
            "settings": [{"name": s.name, "overrides": list(s.overrides)} for s in self.settings],
            "seeds": list(self.seeds),
            "baseline": self.baseline,
        }


def load_sweep_file(path: str | Path) -> dict[str, Any]:
    """Read a sweep file: named settings and/or a grid, shared values, seeds, budget and baseline.

    Format (every key optional; ``settings`` or ``grid`` needed)::

        {"settings": {"baseline": {}, "muon+wsd": {"train.lr": 0.002, "train.warmup_steps": 50}},
         "grid": {"model.n_layer": [3, 4]},
         "set": {"train.max_steps": 300},
         "seeds": 3, "baseline": "baseline", "time_budget_s": 60}

    Returns:
        The checked dict (keys ``settings``, ``grid``, ``set``, ``seeds``, ``baseline``, ``time_budget_s``).

    Raises:
        ValueError: not strict JSON, an unknown key, a value of the wrong kind.
    """
    data = load_json_file(path)
    allowed = ("settings", "grid", "set", "seeds", "baseline", "time_budget_s")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with keys {', '.join(allowed)}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}")
    for key in ("settings", "grid", "set"):
        if key in data and not isinstance(data[key], dict):
            raise ValueError(f"{path}: {key!r} must be an object, got {data[key]!r}")
    if "seeds" in data and (not isinstance(data["seeds"], int) or isinstance(data["seeds"], bool)):
        raise ValueError(f"{path}: 'seeds' must be a number of seeds, got {data['seeds']!r}")
    for key in data.get("set", {}):
        _check_key(key, f"{path}: set")
    return data


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """``DIR/sweep.json``, checked to be a sweep's.

    Raises:
        ValueError: no sweep there, or a file that is not one.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{out_dir} holds no sweep (no {MANIFEST}); run `llm-lab sweep --out {out_dir}` first")
    data = load_json_file(path)
    if not isinstance(data, dict) or data.get("kind") != _KIND:
        raise ValueError(f"{path} is not an llm-lab sweep file")
    if data.get("format_version") != SWEEP_FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {data.get('format_version')!r} is from another version of llm-lab")
    settings, seeds = data.get("settings"), data.get("seeds")
    if (
        not isinstance(data.get("base"), dict)
        or not isinstance(data.get("data"), str)
        or not isinstance(settings, list)
        or not all(isinstance(x, dict) and isinstance(x.get("name"), str) and isinstance(x.get("overrides"), list)
                   for x in settings)  # fmt: skip
        or not isinstance(seeds, list)
        or not all(isinstance(x, int) for x in seeds)
        or not isinstance(data.get("steps", {}), dict)
    ):
        raise ValueError(f"{path} is damaged (base, data, settings, seeds or steps missing or of the wrong kind)")
    return data


def plan_from_manifest(manifest: dict[str, Any], *, check_data: bool = True) -> SweepPlan:
    """The :class:`SweepPlan` a manifest describes."""
    settings = [Setting(s["name"], tuple(s["overrides"])) for s in manifest["settings"]]
    plan = SweepPlan.__new__(SweepPlan)  # __post_init__ checks the data exists; a report does not need it
    plan.base = RunConfig.from_dict(manifest["base"], where=MANIFEST)
    plan.data, plan.settings, plan.seeds = Path(manifest["data"]), tuple(settings), tuple(manifest["seeds"])
    plan.time_budget_s, plan.baseline = manifest.get("time_budget_s"), manifest.get("baseline")
    if check_data:
        plan.__post_init__()
    return plan
