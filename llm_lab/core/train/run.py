"""A training run from a config file: the library behind ``llm-lab train`` and the quickstart scripts.

A run config is a JSON object with sections, each a validated dataclass:

=============  ==========================  =====================================================================
section        class                       notes
=============  ==========================  =====================================================================
``model``      ``MiniGPTConfig``           ``vocab_size`` is replaced by the tokenizer's
``train``      :class:`TrainerConfig`
``tokenizer``  :class:`TokenizerSpec`      ``{"type": "char"}``, ``{"type": "bpe", "vocab_size": 512}`` or
                                           ``{"path": DIR}`` (a saved tokenizer)
``data``       :class:`DataConfig`         ``{"val_fraction": 0.1}``: the last 10% of a text file is validation
=============  ==========================  =====================================================================

plus an optional ``"format_version": 1``. The run directory (see the README's "Training" section)::

    RUN_DIR/run.json  tokenizer/  metrics.csv  samples.txt  checkpoints/last.pt  checkpoints/best_val.pt

:func:`prepare_run` checks everything (config, data, tokenizer, out directory, checkpoint) before any file is
written, so a mistake never damages an earlier run; :meth:`PreparedRun.start` then writes the run directory and
returns the :class:`~llm_lab.core.train.trainer.Trainer`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.data.prepare import load_prepared
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer, load_tokenizer
from llm_lab.core.train.checkpoint import CheckpointError, load_checkpoint
from llm_lab.core.train.config import TrainerConfig
from llm_lab.core.train.distributed import DistributedInfo, current_info
from llm_lab.core.train.loggers import check_loggers
from llm_lab.core.train.trainer import SampleCallback, Trainer
from llm_lab.utils.config_loader import apply_overrides, config_from_dict, config_to_dict
from llm_lab.utils.io import atomic_write_json

__all__ = [
    "RUN_FORMAT_VERSION",
    "DataConfig",
    "InitSource",
    "PreparedRun",
    "RunConfig",
    "TokenizerSpec",
    "load_run_config",
    "prepare_run",
    "resolve_run_config",
    "seed_everything",
]

RUN_FORMAT_VERSION = 1
# Keys of run.json that describe where a run came from; they are recorded, not configured.
_RECORD_KEYS = ("format_version", "description", "data_source", "init_from")


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
    """How a plain-text corpus is split. Attributes: val_fraction: the last fraction held out for validation."""

    json_section: ClassVar[str] = "data"

    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")


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
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        return cls.from_dict(data, where=str(path))

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
    run_json = Path(out_dir) / "run.json"
    if not run_json.is_file():
        raise ValueError(f"cannot resume: {out_dir} holds no run (no run.json); drop --resume to start one there")
    saved = load_run_config(run_json, overrides)
    if config_path is not None:
        given = load_run_config(config_path, overrides)
        given = dataclasses.replace(given, model=dataclasses.replace(given.model, vocab_size=saved.model.vocab_size))
        diff = _differences(saved.to_dict(), given.to_dict())
        if diff:
            raise ValueError(
                f"cannot resume: {config_path} differs from the run in {out_dir} ({', '.join(diff)}); resume "
                "without --config to use the run's own run.json, or change it with --set"
            )
    return saved


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices), so model init and everything after it repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class InitSource:
    """Weights to fine-tune from (``--init-from``): the model config, its tokenizer and a state dict."""

    model_config: MiniGPTConfig
    tokenizer: Any
    state_dict: dict[str, torch.Tensor]
    path: str


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); convert it or prepare it first") from None


def _build_tokenizer(spec: TokenizerSpec, text: str) -> Any:
    if spec.path is not None:
        return load_tokenizer(spec.path)
    if spec.type == "char":
        return CharTokenizer.from_text(text)
    return SubwordTokenizer.train(text, spec.vocab_size)


def _same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers map every id to the same bytes (so prepared ids mean the same text)."""
    if a.vocab_size != b.vocab_size:
        return False
    return all(a.decode_bytes([i]) == b.decode_bytes([i]) for i in range(a.vocab_size))


def _check_split(name: str, n_tokens: int, context_length: int, hint: str) -> None:
    if n_tokens < context_length + 1:
        raise ValueError(
            f"the {name} split has {n_tokens} tokens, fewer than one window of context_length + 1 = "
            f"{context_length + 1}; {hint}"
        )


@dataclass
class PreparedRun:
    """Everything checked and built for a run; nothing written yet. Call :meth:`start`."""

    config: RunConfig
    tokenizer: Any
    model: MiniGPT
    train_data: LanguageModelingDataset
    val_data: LanguageModelingDataset
    out_dir: Path
    data_source: dict[str, Any]
    resume_checkpoint: dict[str, Any] | None
    overwrite: bool
    init_from: str | None
    dist: DistributedInfo

    def run_json(self) -> dict[str, Any]:
        return self.config.to_dict() | {"data_source": self.data_source, "init_from": self.init_from}

    def start(self, sample_callbacks: list[SampleCallback] | tuple[SampleCallback, ...] = (), **trainer_kwargs: Any):
        """Write the run directory (rank 0) and return a :class:`Trainer` ready to ``train()``.

        A new run (or ``overwrite``) starts from an empty directory with ``run.json`` and ``tokenizer/``; a
        resumed run keeps its files (rows of ``metrics.csv`` after the checkpoint are dropped by the trainer).
        """
        out = self.out_dir
        if self.dist.is_main:
            if self.overwrite and (out / "run.json").is_file():
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            if self.resume_checkpoint is None:
                self.tokenizer.save(out / "tokenizer")
            atomic_write_json(out / "run.json", self.run_json())
        if self.dist.enabled:
            torch.distributed.barrier()
        trainer = Trainer(
            self.model,
            self.config.train,
            self.train_data,
            self.val_data,
            out_dir=out,
            sample_callbacks=sample_callbacks,
            **trainer_kwargs,
        )
        if self.resume_checkpoint is not None:
            trainer.load_state(self.resume_checkpoint)
        return trainer


def _saved_data_source(out: Path) -> dict[str, Any]:
    try:
        saved = json.loads((out / "run.json").read_text(encoding="utf-8")).get("data_source")
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory")
    if resume:
        return  # resolve_run_config and the checkpoint check cover it
    if out.is_dir() and any(out.iterdir()):
        if not (out / "run.json").is_file():
            raise ValueError(f"--out {out} is not empty and holds no llm-lab run; choose a new or empty directory")
        if not overwrite:
            raise ValueError(
                f"--out {out} already holds a run (run.json); pass --resume to continue it or --overwrite to replace it"
            )


def prepare_run(
    config: RunConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_from: InitSource | None = None,
) -> PreparedRun:
    """Check and build everything a run needs, writing nothing.

    Args:
        config: the run config (see :func:`resolve_run_config`).
        data: a UTF-8 text file (tokenised here; validation = its last ``data.val_fraction``) or a directory
            made by ``llm-lab data prepare`` (its own tokenizer and split).
        out_dir: the run directory.
        resume: continue the run in ``out_dir`` from ``checkpoints/last.pt``.
        overwrite: replace the run in ``out_dir``.
        init_from: start from these weights (fine-tuning); the model config and tokenizer are theirs.

    Returns:
        A :class:`PreparedRun`; its ``config.model.vocab_size`` is the tokenizer's.

    Raises:
        ValueError: (one line, saying what to change) an empty or too short corpus, a validation split without
            one full window, an out directory holding another run, a missing, truncated or foreign checkpoint,
            a checkpoint of another model, contradictory options.
        FileNotFoundError: ``data`` does not exist.
    """
    out = Path(out_dir)
    data = Path(data)
    _check_out_dir(out, resume=resume, overwrite=overwrite)
    if resume and init_from is not None:
        raise ValueError("--init-from starts a new run from other weights; it cannot be combined with --resume")
    dist_info = current_info()
    check_loggers(config.train.loggers)  # a missing tracker package stops the run before anything is written
    T = config.model.context_length

    # --- tokenizer and token ids
    if resume:
        tokenizer = load_tokenizer(out / "tokenizer")
    elif init_from is not None:
        tokenizer = init_from.tokenizer
    else:
        tokenizer = None
    if data.is_dir():
        train_ids, val_ids, meta = load_prepared(data)
        data_tokenizer = load_tokenizer(data / "tokenizer")
        if tokenizer is None:
            tokenizer = data_tokenizer
        elif not _same_tokenizer(tokenizer, data_tokenizer):
            origin = "the run being resumed" if resume else f"--init-from {init_from.path}"  # type: ignore[union-attr]
            raise ValueError(
                f"{data} was prepared with another tokenizer than {origin}; prepare it with that tokenizer "
                "(llm-lab data prepare --tokenizer DIR) or pass a text file"
            )
        source = {"path": str(data), "format": "prepared"}
        hint = f"prepare {data} from more text or lower model.context_length ({T})"
    elif data.is_file():
        text = _read_text(data)
        if not text:
            raise ValueError(f"{data} is empty; give a text file with at least context_length + 1 = {T + 1} tokens")
        n_val_chars = int(len(text) * config.data.val_fraction)
        if tokenizer is None:
            # Only the training part trains a tokenizer; char vocabularies must also cover validation.
            train_text = text if config.tokenizer.type == "char" else text[: len(text) - n_val_chars]
            tokenizer = _build_tokenizer(config.tokenizer, train_text)
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        n_val = int(len(ids) * config.data.val_fraction)
        train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        source = {"path": str(data), "format": "text", "val_fraction": config.data.val_fraction}
        hint = (
            f"use a longer corpus, lower model.context_length ({T}) or raise data.val_fraction "
            f"({config.data.val_fraction})"
        )
    else:
        raise FileNotFoundError(f"--data {data} does not exist (give a text file or a prepared directory)")
    # --- model config: the tokenizer decides the vocabulary; fine-tuning keeps the source's architecture
    if init_from is not None:
        model_config = init_from.model_config
    else:
        model_config = dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size)
    T = model_config.context_length
    _check_split("training", len(train_ids), T, hint)
    _check_split("validation", len(val_ids), T, hint)
    source |= {"train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids))}
    config = dataclasses.replace(config, model=model_config)

    # --- resume checkpoint: read and checked now, so a bad one stops the run before anything is written
    checkpoint = None
    if resume:
        last = out / "checkpoints" / "last.pt"
        if not last.is_file():
            raise ValueError(f"cannot resume: {last} does not exist (the run never reached its first evaluation)")
        checkpoint = load_checkpoint(last, training_state=True)
        saved_source = _saved_data_source(out)
        for key in ("format", "train_tokens", "val_tokens"):
            if key in saved_source and saved_source[key] != source[key]:
                raise ValueError(
                    f"cannot resume: --data {data} gives {key}={source[key]!r} but the run was trained on "
                    f"{saved_source.get('path')} with {key}={saved_source[key]!r}; pass the same data"
                )
        if checkpoint["model_config"] != config_to_dict(model_config):
            diff = _differences(checkpoint["model_config"], config_to_dict(model_config))
            raise CheckpointError(f"{last} holds a different model ({', '.join(diff)}) than {out / 'run.json'}")
        if int(checkpoint["rng"]["world_size"]) != dist_info.world_size:
            raise CheckpointError(
                f"{last} was written by {checkpoint['rng']['world_size']} process(es); resume with the same number"
            )

    # --- each process trains on its own contiguous part of the training tokens (disjoint data under DDP)
    if dist_info.enabled:
        per_rank = len(train_ids) // dist_info.world_size
        start = dist_info.rank * per_rank
        train_ids = train_ids[start : start + per_rank]
        _check_split(f"training (rank {dist_info.rank}'s share)", len(train_ids), T, hint)

    seed_everything(config.train.seed)
    model = MiniGPT(model_config)
    if init_from is not None:
        model.load_state_dict(init_from.state_dict)
    return PreparedRun(
        config=config,
        tokenizer=tokenizer,
        model=model,
        train_data=LanguageModelingDataset(train_ids, T),
        val_data=LanguageModelingDataset(val_ids, T),
        out_dir=out,
        data_source=source,
        resume_checkpoint=checkpoint,
        overwrite=overwrite,
        init_from=init_from.path if init_from is not None else None,
        dist=dist_info,
    )
