"""The run config: the sections of a run config file (``model``, ``train``, ``tokenizer``, ``data``), each a validated
dataclass, read from JSON with unknown sections and keys rejected by name, and the config a new or resumed run uses
(:func:`resolve_run_config`). The run itself is prepared by :func:`llm_lab.core.train.run.prepare_run`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from llm_lab.core.data.datasets import PACKINGS
from llm_lab.core.model.gpt import MiniGPTConfig
from llm_lab.core.train.checkpoint import RUN_FILE
from llm_lab.core.train.config import TrainerConfig
from llm_lab.utils.config_loader import apply_overrides, config_from_dict, config_to_dict, replace_config
from llm_lab.utils.json_input import load_json_file
from llm_lab.utils.paths import check_input_file

RUN_FORMAT_VERSION = 1
# Keys of run.json that describe where a run came from; they are recorded, not configured.
_RECORD_KEYS = ("kind", "format_version", "description", "data_source", "init_from", "files")


@dataclass
class TokenizerSpec:
    """How ``llm-lab train`` gets its tokenizer for a plain-text corpus.

    Attributes:
        type: ``char`` (one id per character of the corpus) or ``bpe`` (byte-level BPE trained on the
            training split); ``None`` when ``path`` is given.
        vocab_size: BPE only: the vocabulary size to train.
        path: a directory holding a saved tokenizer (``tokenizer.save(DIR)``); used as is.
    """

    json_section: ClassVar[str] = "tokenizer"

    type: Literal["char", "bpe"] | None = "char"
    vocab_size: int | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            self.type = None
            if self.vocab_size is not None:
                raise ValueError("tokenizer: give either path (a saved tokenizer) or vocab_size (to train one)")
            return
        if self.type not in ("char", "bpe"):
            raise ValueError(f"tokenizer.type={self.type!r}: choose 'char' or 'bpe', or give tokenizer.path")
        if self.type == "bpe" and (not isinstance(self.vocab_size, int) or self.vocab_size <= 256):
            raise ValueError(
                f"tokenizer type 'bpe' needs vocab_size above 256 (the byte alphabet), got {self.vocab_size!r}"
            )
        if self.type == "char" and self.vocab_size is not None:
            raise ValueError("tokenizer type 'char' takes its vocabulary from the corpus; remove vocab_size")


@dataclass
class DataConfig:
    """How the data is read, split, and where training windows start.

    Attributes:
        val_fraction: the last fraction held out for validation (of the tokens of a text; of the conversations of a
            chat file).
        packing: "contiguous" (default: windows start anywhere) or "bos" (only at document starts); see
            :data:`llm_lab.core.data.datasets.PACKINGS`.
        format: ``"text"`` (a text file or a prepared corpus, trained as windows of tokens) or ``"chat"`` (JSONL
            conversations, ``{"messages": [...]}`` a line: supervised fine-tuning, one conversation a row, the loss
            on the assistant's tokens only; see :mod:`llm_lab.core.chat.sft`).
    """

    json_section: ClassVar[str] = "data"

    val_fraction: float = 0.1
    format: Literal["text", "chat"] = "text"
    packing: str = "contiguous"

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.packing not in PACKINGS:
            raise ValueError(f"data.packing must be one of {sorted(PACKINGS)}, got {self.packing!r}")


@dataclass
class RunConfig:
    """All sections of a run config."""

    model: MiniGPTConfig = dataclasses.field(default_factory=MiniGPTConfig)
    train: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    tokenizer: TokenizerSpec = dataclasses.field(default_factory=TokenizerSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    SECTIONS: ClassVar[dict[str, type]] = {
        "model": MiniGPTConfig,
        "train": TrainerConfig,
        "tokenizer": TokenizerSpec,
        "data": DataConfig,
    }

    @classmethod
    def from_dict(cls, data: Any, where: str = "run config") -> RunConfig:
        """Build from a JSON object; unknown sections and keys are rejected by name.

        Raises:
            ValueError: not an object, an unknown section, a ``format_version`` other than 1, a bad value.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object with sections {', '.join(cls.SECTIONS)}")
        version = data.get("format_version", RUN_FORMAT_VERSION)
        if version != RUN_FORMAT_VERSION:
            raise ValueError(
                f"{where}: format_version {version!r} is from another version of llm-lab; this one reads "
                f"format_version {RUN_FORMAT_VERSION}"
            )
        unknown = [k for k in data if k not in cls.SECTIONS and k not in _RECORD_KEYS]
        if unknown:
            raise ValueError(
                f"{where}: unknown section{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"valid sections are: {', '.join(cls.SECTIONS)}"
            )
        sections = {
            name: config_from_dict(kind, data.get(name) or {}, where=f"{where}: [{name}]")
            for name, kind in cls.SECTIONS.items()
        }
        return cls(**sections)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a run config JSON file."""
        path = check_input_file(path, "config file", "a run config JSON file")  # a directory, a FIFO: said so
        return cls.from_dict(load_json_file(path), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": RUN_FORMAT_VERSION} | {
            name: config_to_dict(getattr(self, name)) for name in self.SECTIONS
        }

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> RunConfig:
        """Apply ``section.key=value`` overrides (type-checked; unknown keys listed)."""
        if not overrides:
            return self
        sections = apply_overrides({name: getattr(self, name) for name in self.SECTIONS}, list(overrides))
        return RunConfig(**sections)


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """``RunConfig.load(path).with_overrides(overrides)``."""
    return RunConfig.load(path).with_overrides(overrides)


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}")
    return out


def resolve_run_config(
    config_path: str | Path | None,
    out_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: bool = False,
) -> RunConfig:
    """The config a run uses.

    A new run reads ``config_path`` (required). A resumed run reads its own ``RUN_DIR/run.json``; when a
    ``config_path`` is given too it must say the same (after the same overrides), so resuming with another
    config is caught instead of silently mixing two runs. ``--set`` overrides apply either way (e.g. a larger
    ``train.max_steps`` extends a finished run; ``vocab_size`` is taken from the tokenizer in both).

    Raises:
        ValueError: no config, an unreadable one, or one that differs from the run being resumed.
    """
    if not resume:
        if config_path is None:
            raise ValueError("a new run needs --config FILE.json (or --resume to continue the run in --out)")
        return load_run_config(config_path, overrides)
    run_json = Path(out_dir) / RUN_FILE
    if not run_json.is_file():
        raise ValueError(f"cannot resume: {out_dir} holds no run (no run.json); drop --resume to start one there")
    saved = load_run_config(run_json, overrides)
    if config_path is not None:
        given = load_run_config(config_path, overrides)
        # The vocabulary comes from the tokenizer, and an execution choice (the attention kernel) does not make
        # another model: a run saved with attn_impl "sdpa" resumes under a config that says "auto".
        kept = {name: getattr(saved.model, name) for name in ("vocab_size", *saved.model.execution_fields)}
        given = dataclasses.replace(given, model=replace_config(given.model, **kept))
        # Compare the configs as built (resolved: n_kv_head=null and n_kv_head=n_head are the same model).
        built = [{name: dataclasses.asdict(getattr(c, name)) for name in c.SECTIONS} for c in (saved, given)]
        diff = _differences(*built)
        if diff:
            raise ValueError(
                f"cannot resume: {config_path} differs from the run in {out_dir} ({', '.join(diff)}); resume "
                "without --config to use the run's own run.json, or change it with --set"
            )
    return saved
