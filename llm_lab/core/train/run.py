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

plus an optional ``"format_version": 1``. The run directory (see ``docs/reference/file-formats.md``)::

    RUN_DIR/run.json  tokenizer/  metrics.csv  samples.txt  checkpoints/last.pt  checkpoints/best_val.pt

``run.json`` carries the marker ``"kind": "llm-lab run"``, the data's record (path, split sizes, the content's and
the tokenizer's fingerprints) and the list of the tokenizer's files; only a directory with that marker and nothing
but a run's files is ever replaced (:func:`check_run_directory`).

:func:`prepare_run` checks everything (out directory, device, data, tokenizer, split lengths, the checkpoint and
data of a resumed run, the memory estimate, the model and its precision) before any file is written, so a mistake
never damages an earlier run; :meth:`PreparedRun.start` then builds the
:class:`~llm_lab.core.train.trainer.Trainer` and only then writes the run directory (a new run is built beside
the old one and swapped in).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from llm_lab.core.chat import ChatTemplate, add_chat_tokens, grow_vocab
from llm_lab.core.chat.sft import ChatDataset, read_conversations, render_conversations
from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.data.datasets import PACKINGS
from llm_lab.core.data.prepare import corpus_fingerprint, load_corpus_tokenizer, load_prepared
from llm_lab.core.data.shards import ShardedIds
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.model.memory import MemoryEstimate, check_memory, estimate_memory
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer, load_tokenizer
from llm_lab.core.tokenization.fingerprint import tokenizer_fingerprint
from llm_lab.core.train.checkpoint import (
    CHECKPOINT_DIR,
    RUN_FILE,
    load_resume_checkpoint,
    run_checkpoint_path,
)
from llm_lab.core.train.config import TrainerConfig
from llm_lab.core.train.device import resolve_precision, select_device
from llm_lab.core.train.distributed import DistributedInfo, current_info
from llm_lab.core.train.loggers import check_loggers, is_logger_file
from llm_lab.core.train.trainer import RUNTIME_FILE, SampleCallback, Trainer
from llm_lab.utils.config_loader import apply_overrides, config_from_dict, config_to_dict, replace_config
from llm_lab.utils.dirlock import lock_directory, refuse_symlink
from llm_lab.utils.dirswap import (
    PendingReplacement,
    holds_working_directory,
    recover_directory,
    remove_stale_temp_files,
    unexpected_files,
)
from llm_lab.utils.io import atomic_write_json
from llm_lab.utils.json_input import load_json_file
from llm_lab.utils.paths import check_input_file

__all__ = [
    "RUN_FORMAT_VERSION",
    "RUN_KIND",
    "DataConfig",
    "InitSource",
    "PreparedRun",
    "RunConfig",
    "TokenizerSpec",
    "check_run_directory",
    "check_training_memory",
    "load_run_config",
    "prepare_run",
    "resolve_run_config",
    "seed_everything",
]

RUN_FORMAT_VERSION = 1
RUN_KIND = "llm-lab run"  # run.json's marker: only a directory whose run.json carries it may be replaced
# Keys of run.json that describe where a run came from; they are recorded, not configured.
_RECORD_KEYS = ("kind", "format_version", "description", "data_source", "init_from", "files")
_TOKENIZER_DIR = "tokenizer"
# Files a run writes besides run.json, its tokenizer (listed in run.json's "files") and checkpoints/*.pt:
# the metrics and samples of the Trainer, and the default figure of `llm-lab plot`.
_RUN_FILES = frozenset({RUN_FILE, RUNTIME_FILE, "metrics.csv", "samples.txt", "loss.png"})


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


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices), so model init and everything after it repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class InitSource:
    """Weights to fine-tune from (``--init-from``): the model config, its tokenizer and a state dict."""

    #: Model settings a fine-tuning run may change: they change neither the tensors nor what they compute.
    FREE_FIELDS: ClassVar[tuple[str, ...]] = ("dropout", "max_seq_len", *MiniGPTConfig.execution_fields)

    model_config: MiniGPTConfig
    tokenizer: Any
    state_dict: dict[str, torch.Tensor]
    path: str

    @classmethod
    def load(cls, path: str | Path) -> InitSource:
        """The weights, model config and tokenizer of a run directory (best checkpoint) or a model package."""
        from llm_lab.core.package.io import load_package_or_run  # the package layer reads runs; run.py is below it

        config, tokenizer, model = load_package_or_run(path)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(model_config=config, tokenizer=tokenizer, state_dict=state, path=str(path))

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> InitSource:
        """Apply the ``model.*`` values of ``--set`` overrides to the source's model config.

        Only :attr:`FREE_FIELDS` may differ from the source; any other value that differs (``model.n_embd=64`` on
        16-wide weights, ``model.norm=rmsnorm`` on LayerNorm weights) contradicts the weights and is refused.

        Raises:
            ValueError: names each contradicting key, the source's value and what may change.
        """
        model_overrides = [item for item in overrides if item.split("=", 1)[0].startswith("model.")]
        if not model_overrides:
            return self
        changed = apply_overrides({"model": self.model_config}, model_overrides)["model"]
        old, new = config_to_dict(self.model_config), config_to_dict(changed)
        contradict = [k for k in new if new[k] != old[k] and k not in self.FREE_FIELDS]
        if contradict:
            said = ", ".join(f"model.{k}={new[k]!r} (the weights have {old[k]!r})" for k in contradict)
            free = ", ".join(f"model.{k}" for k in self.FREE_FIELDS)
            raise ValueError(
                f"--init-from {self.path}: {said} contradict{'s' if len(contradict) == 1 else ''} the weights; "
                f"fine-tuning keeps the source's architecture, so drop that --set (only {free} may change)"
            )
        return dataclasses.replace(self, model_config=changed)


def _read_text(path: Path) -> tuple[str, str]:
    """The text of a UTF-8 file and the sha256 of its bytes (the corpus's fingerprint)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); convert it or prepare it first") from None


def _build_tokenizer(spec: TokenizerSpec, text: str) -> Any:
    if spec.path is not None:
        return load_tokenizer(spec.path)
    if spec.type == "char":
        return CharTokenizer.from_text(text)
    return SubwordTokenizer.train(text, spec.vocab_size)


def _check_split(name: str, n_tokens: int, context_length: int, hint: str) -> None:
    if n_tokens < context_length + 1:
        raise ValueError(
            f"the {name} split has {n_tokens} tokens, fewer than one window of context_length + 1 = "
            f"{context_length + 1}; {hint}"
        )


# ------------------------------------------------------------------------------------------ the run directory


def _is_run_file(name: str, listed: set[str]) -> bool:
    """Whether ``name`` (relative POSIX path) is a file the project writes into a run directory."""
    if name in _RUN_FILES or name in listed or is_logger_file(name):
        return True
    folder, _, file = name.partition("/")
    return folder == CHECKPOINT_DIR and "/" not in file and file.endswith(".pt") and not file.startswith(".")


def _recognised_run(out: Path) -> dict[str, Any]:
    """``run.json`` of ``out`` when this project wrote it (marker and format version), else ``ValueError``."""
    run_json = out / RUN_FILE
    data = load_json_file(run_json)
    if not isinstance(data, dict) or data.get("kind") != RUN_KIND or data.get("format_version") != RUN_FORMAT_VERSION:
        raise ValueError(
            f"{run_json} was not written by this version of llm-lab (no \"kind\": \"{RUN_KIND}\" with "
            f"format_version {RUN_FORMAT_VERSION}), so --overwrite will not replace {out}; nothing was changed"
        )
    return data


def check_run_directory(
    out_dir: str | Path, *, resume: bool = False, overwrite: bool = False, clean_up: bool = True
) -> None:
    """May ``out_dir`` receive this run? Raise if not; change nothing but what killed writers left behind.

    A new run needs a missing or empty directory. ``overwrite`` replaces only a run this project wrote and can
    recognise: ``run.json`` with ``"kind": "llm-lab run"`` and this format version, and nothing but the files a run
    writes (``run.json``, the tokenizer files it lists, ``metrics.csv``, ``samples.txt``, ``loss.png``,
    ``checkpoints/*.pt``). Anything else is refused with the first foreign file named, and stays untouched.

    With ``clean_up`` (one process of a group does it), interrupted replacements of ``out_dir`` are finished or
    rolled back, and temporary files of killed writes (``.last.pt.PID.XXXX.tmp``) are removed, first.

    Raises:
        ValueError: contradictory options, ``out_dir`` a file, or a directory that may not be replaced.
    """
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    refuse_symlink(out)  # the one rule of every command that writes a directory (llm_lab.utils.dirlock)
    if clean_up:
        recover_directory(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(blocker))
    if not resume and holds_working_directory(out):
        raise ValueError(
            f"--out {out} is the current directory (or holds it); a run is written beside it and swapped in, so "
            "give a sub-directory or run from elsewhere"
        )
    if not out.is_dir():
        return
    if clean_up:
        remove_stale_temp_files(out)
        remove_stale_temp_files(out / CHECKPOINT_DIR)
    if resume:
        return  # resolve_run_config and the checkpoint check cover it
    found = unexpected_files(out, ())
    if not found:
        return
    if not (out / RUN_FILE).is_file():
        raise ValueError(
            f"--out {out} is not empty and holds no llm-lab run (found {found[0]}); choose a new or empty directory"
        )
    if not overwrite:
        raise ValueError(
            f"--out {out} already holds a run (run.json); pass --resume to continue it or --overwrite to replace it"
        )
    listed = _recognised_run(out).get("files")
    listed = {f for f in listed if isinstance(f, str)} if isinstance(listed, list) else set()
    foreign = [name for name in found if not _is_run_file(name, listed)]
    if foreign:
        raise ValueError(
            f"--out {out} holds {foreign[0]}, which llm-lab did not write; move it out (or choose another --out) "
            "before --overwrite replaces the run"
        )


# ----------------------------------------------------------------------------------------------- run preparation


@dataclass
class _Corpus:
    """Token ids of both splits, the tokenizer they belong to, and where they came from (``data_source``).

    A chat corpus has no token stream: its splits are :class:`~llm_lab.core.chat.sft.ChatDataset` s (``chats``).
    """

    train_ids: np.ndarray | ShardedIds
    val_ids: np.ndarray | ShardedIds
    tokenizer: Any
    source: dict[str, Any]
    hint: str  # what to change when a split is too short
    chats: tuple[ChatDataset, ChatDataset] | None = None


def _load_corpus(config: RunConfig, data: Path, tokenizer: Any, origin: str) -> _Corpus:
    """Step: token ids from a prepared directory (its own tokenizer) or a text file (tokenised here).

    ``tokenizer`` is the one the run must use (resume, fine-tuning) or ``None`` (a new run decides it).
    """
    T = config.model.context_length
    if not data.is_dir():
        check_input_file(data, "--data", "a text file or a prepared directory")  # missing, a FIFO, a device: said so
    if data.is_dir():
        train_ids, val_ids, meta = load_prepared(data)
        data_tokenizer = load_corpus_tokenizer(data, meta)
        if tokenizer is None:
            tokenizer = data_tokenizer
        elif tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(data_tokenizer):
            raise ValueError(
                f"{data} was prepared with another tokenizer than {origin} (its ids mean other text); prepare it "
                "with that tokenizer (llm-lab data prepare --tokenizer DIR) or pass a text file"
            )
        source = {"path": str(data), "format": "prepared", "fingerprint": corpus_fingerprint(meta)}
        hint = f"prepare {data} from more text or lower model.context_length ({T})"
    else:
        text, digest = _read_text(data)
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
        source = {"path": str(data), "format": "text", "val_fraction": config.data.val_fraction, "fingerprint": digest}
        hint = (
            f"use a longer corpus, lower model.context_length ({T}) or raise data.val_fraction "
            f"({config.data.val_fraction})"
        )
    source |= {
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
    }
    return _Corpus(train_ids, val_ids, tokenizer, source, hint)


def _load_chats(config: RunConfig, data: Path, tokenizer: Any) -> _Corpus:
    """Step: conversations from a JSONL file, rendered with the chat template (the tokenizer gains the chat tokens).

    ``tokenizer`` is the one the run must use (resume, fine-tuning) or ``None``: a new run builds one from the
    conversations' text, as for a text file.
    """
    if data.is_dir() or not data.is_file():
        raise ValueError(f"--data {data}: data.format 'chat' reads a JSONL file of conversations ({{\"messages\": "
                         "[...]}} a line)")
    conversations = read_conversations(data)
    if tokenizer is None:
        text = "\n".join(m["content"] for _, messages in conversations for m in messages)
        tokenizer = _build_tokenizer(config.tokenizer, text)
    tokenizer = add_chat_tokens(tokenizer)
    template = ChatTemplate(tokenizer)
    T = config.model.context_length
    chats = render_conversations(conversations, template, T, data)
    n_val = max(1, int(len(chats) * config.data.val_fraction))
    if n_val >= len(chats):
        raise ValueError(f"{data} has {len(chats)} conversation(s): too few to hold out data.val_fraction "
                         f"({config.data.val_fraction}) for validation and train on the rest")
    train = ChatDataset(chats[:-n_val], T, template.end_id)
    val = ChatDataset(chats[-n_val:], T, template.end_id)
    source = {
        "path": str(data),
        "format": "chat",
        "val_fraction": config.data.val_fraction,
        "fingerprint": hashlib.sha256(data.read_bytes()).hexdigest(),
        "conversations": len(chats),
        "train_tokens": train.num_tokens,
        "val_tokens": val.num_tokens,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
    }
    empty = np.zeros(0, dtype=np.int64)
    return _Corpus(empty, empty, tokenizer, source, "", chats=(train, val))


def _saved_data_source(out: Path) -> dict[str, Any]:
    try:
        saved = load_json_file(out / RUN_FILE).get("data_source")
    except (ValueError, AttributeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _check_resume(
    out: Path, data: Path, config: RunConfig, source: dict[str, Any], dist_info: DistributedInfo
) -> dict[str, Any]:
    """Step: the checkpoint to resume, read and checked against this invocation (nothing is written yet).

    The data must be the run's own (same format, split sizes, content fingerprint and tokenizer), the model the
    checkpoint's, ``train.max_steps`` not below the checkpoint's step, the process count the same.
    """

    def expected() -> dict[str, torch.Tensor]:
        with torch.device("meta"):  # names, shapes and dtypes only: nothing is allocated
            return MiniGPT(config.model).state_dict()

    # Checked whole against this run (config, tensors, counters, RNG and data states) before anything is touched;
    # then best_val.pt is repaired if a kill at the final evaluation left it behind.
    checkpoint = load_resume_checkpoint(
        out, model_config=config_to_dict(config.model), expected_model=expected, world_size=dist_info.world_size
    )
    saved = _saved_data_source(out)
    for key in ("format", "train_tokens", "val_tokens"):
        if key in saved and saved[key] != source[key]:
            raise ValueError(
                f"cannot resume: --data {data} gives {key}={source[key]!r} but the run was trained on "
                f"{saved.get('path')} with {key}={saved[key]!r}; pass the same data"
            )
    for key, what in (("fingerprint", "content"), ("tokenizer_fingerprint", "tokenizer")):
        if saved.get(key) is not None and source[key] is not None and saved[key] != source[key]:
            raise ValueError(
                f"cannot resume: --data {data} has the same length as the run's data ({saved.get('path')}) but "
                f"another {what} (fingerprint {source[key][:12]} vs {saved[key][:12]}); pass the same data"
            )
    if config.train.max_steps < int(checkpoint["step"]):
        raise ValueError(
            f"cannot resume: train.max_steps={config.train.max_steps} is below the checkpoint's step "
            f"{int(checkpoint['step'])}; set train.max_steps to at least {int(checkpoint['step'])}"
        )
    return checkpoint


def _rank_share(chats: ChatDataset, dist_info: DistributedInfo) -> ChatDataset:
    """This process's conversations: every ``world_size``-th one (disjoint data under DDP)."""
    if not dist_info.enabled:
        return chats
    return ChatDataset(chats.chats[dist_info.rank :: dist_info.world_size], chats.context_length, chats.pad_id)


def _warn_about_schedule(train: TrainerConfig) -> None:
    """Step: a schedule that cannot do what it says trains, but not silently."""
    if train.warmup_steps > train.max_steps:
        warnings.warn(
            f"train.warmup_steps ({train.warmup_steps}) is greater than train.max_steps ({train.max_steps}): the "
            f"learning rate only reaches {train.max_steps / train.warmup_steps:.0%} of train.lr ({train.lr:g}) and "
            "never decays; lower train.warmup_steps",
            UserWarning,
            stacklevel=3,
        )


def check_training_memory(model_config: MiniGPTConfig, train: TrainerConfig, device: torch.device) -> MemoryEstimate:
    """Step: refuse a run whose weights, optimizer state and one micro-batch's activations cannot fit on ``device``.

    Returns:
        The estimate (:func:`llm_lab.core.model.memory.estimate_memory`).

    Raises:
        ValueError: one line with the estimate and the device's memory.
    """
    estimate = estimate_memory(model_config, batch_size=train.batch_size, training=True)
    check_memory(
        estimate,
        device,
        what=f"training with train.batch_size={train.batch_size} x context_length={model_config.context_length}",
        hint="lower train.batch_size (raise train.grad_accum_steps to keep the tokens per step) or make the model "
        "smaller (model.n_layer, model.n_embd)",
    )
    return estimate


@dataclass
class PreparedRun:
    """Everything checked and built for a run; nothing written yet. Call :meth:`start`."""

    config: RunConfig
    tokenizer: Any
    model: MiniGPT
    train_data: LanguageModelingDataset | ChatDataset
    val_data: LanguageModelingDataset | ChatDataset
    out_dir: Path
    data_source: dict[str, Any]
    resume_checkpoint: dict[str, Any] | None
    overwrite: bool
    init_from: str | None
    dist: DistributedInfo
    memory: MemoryEstimate | None = None

    def run_json(self, files: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
        """The content of ``run.json``: the config, the marker, the data's record and the tokenizer's files."""
        return (
            {"kind": RUN_KIND}
            | self.config.to_dict()
            | {"data_source": self.data_source, "init_from": self.init_from, "files": sorted(files)}
        )

    def start(self, sample_callbacks: list[SampleCallback] | tuple[SampleCallback, ...] = (), **trainer_kwargs: Any):
        """Build the :class:`Trainer`, then write the run directory (rank 0), and return the trainer.

        The trainer (device, precision, optimizer, the resumed state) is built *before* anything is written, so a
        failure there leaves the directory as it was. A new run (or ``overwrite``) is written in a hidden
        directory beside ``out_dir`` (``run.json`` and ``tokenizer/``), trains there and is swapped in at its first
        checkpoint (:meth:`Trainer.replace_on_first_checkpoint`): a run that replaces an earlier one leaves it
        whole, and it is what the next command finds, until the new run has something to resume; a new run
        stopped before its first checkpoint leaves nothing behind. A resumed run keeps its files and gets its
        ``run.json`` updated (rows of ``metrics.csv`` after the checkpoint are dropped by the trainer). Writing
        holds ``out_dir``'s lock (:func:`llm_lab.utils.dirlock.lock_directory`).
        """
        trainer = Trainer(
            self.model,
            self.config.train,
            self.train_data,
            self.val_data,
            out_dir=self.out_dir,
            sample_callbacks=sample_callbacks,
            **trainer_kwargs,
        )
        if self.resume_checkpoint is not None:
            trainer.load_state(self.resume_checkpoint, run_checkpoint_path(self.out_dir, "last"))
        if self.dist.is_main:
            with lock_directory(self.out_dir):
                pending = self._write_run_directory()
            if pending is not None:
                trainer.replace_on_first_checkpoint(pending)
        if self.dist.enabled:
            torch.distributed.barrier()
        return trainer

    def _write_run_directory(self) -> PendingReplacement | None:
        """Write ``run.json`` and the tokenizer: into the new run beside ``out_dir`` (returned, swapped in at the first
        checkpoint), or into ``out_dir`` itself when resuming (``None``)."""
        out = self.out_dir
        if self.resume_checkpoint is not None:
            files = [f"{_TOKENIZER_DIR}/{name}" for name in unexpected_files(out / _TOKENIZER_DIR, ())]
            atomic_write_json(out / RUN_FILE, self.run_json(files))
            return None
        check_run_directory(out, overwrite=self.overwrite)  # nothing foreign appeared since prepare_run
        pending = PendingReplacement(out)
        with pending.writing() as staged:
            self.tokenizer.save(staged / _TOKENIZER_DIR)
            atomic_write_json(staged / RUN_FILE, self.run_json(unexpected_files(staged, ())))
        return pending


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

    The steps, in order: the options and the out directory (:func:`check_run_directory`); the device; the
    tokenizer and token ids (:func:`_load_corpus`); the model config and the split lengths; the resume checkpoint
    against this invocation (:func:`_check_resume`); the schedule; each process's share of the data; the memory
    of training (:func:`check_training_memory`) before the model is built; the model and its precision.

    Args:
        config: the run config (see :func:`resolve_run_config`).
        data: a UTF-8 text file (tokenised here; validation = its last ``data.val_fraction``) or a directory
            made by ``llm-lab data prepare`` (its own tokenizer and split).
        out_dir: the run directory.
        resume: continue the run in ``out_dir`` from ``checkpoints/last.pt``.
        overwrite: replace the run in ``out_dir`` (only a run this project wrote, see :func:`check_run_directory`).
        init_from: start from these weights (fine-tuning); the model config and tokenizer are theirs.

    Returns:
        A :class:`PreparedRun`; its ``config.model.vocab_size`` is the tokenizer's.

    Raises:
        ValueError: (one line, saying what to change) an empty or too short corpus, a validation split without
            one full window, an out directory holding another run or files llm-lab did not write, a missing,
            truncated or foreign checkpoint, a checkpoint of another model, data other than the resumed run's,
            ``train.max_steps`` below the resumed step, an unavailable device or precision, a run too large for
            the device's memory, contradictory options.
        FileNotFoundError: ``data`` does not exist.
    """
    out = Path(out_dir)
    data = Path(data)
    dist_info = current_info()
    check_run_directory(out, resume=resume, overwrite=overwrite, clean_up=dist_info.is_main)
    if resume and init_from is not None:
        raise ValueError("--init-from starts a new run from other weights; it cannot be combined with --resume")
    device = select_device(config.train.device, dist_info.local_rank)
    check_loggers(config.train.loggers)  # a missing tracker package stops the run before anything is written

    if resume:
        tokenizer, origin = load_tokenizer(out / _TOKENIZER_DIR), "the run being resumed"
    elif init_from is not None:
        tokenizer, origin = init_from.tokenizer, f"--init-from {init_from.path}"
    else:
        tokenizer, origin = None, ""
    chat = config.data.format == "chat"
    if chat and init_from is not None:  # conversations are rendered for the source model's context
        config = dataclasses.replace(config, model=init_from.model_config)
    corpus = _load_chats(config, data, tokenizer) if chat else _load_corpus(config, data, tokenizer, origin)

    # The tokenizer decides the vocabulary; fine-tuning keeps the source's architecture (a chat fine-tune grows
    # its vocabulary by the chat tokens, see llm_lab.core.chat.grow_vocab).
    if init_from is not None:
        model_config = replace_config(init_from.model_config, vocab_size=corpus.tokenizer.vocab_size)
    else:
        model_config = replace_config(config.model, vocab_size=corpus.tokenizer.vocab_size)  # n_kv_head stays derived
    T = model_config.context_length
    if not chat:
        _check_split("training", len(corpus.train_ids), T, corpus.hint)
        _check_split("validation", len(corpus.val_ids), T, corpus.hint)
    config = dataclasses.replace(config, model=model_config)

    checkpoint = _check_resume(out, data, config, corpus.source, dist_info) if resume else None
    _warn_about_schedule(config.train)

    # Each process trains on its own contiguous part of the training tokens (disjoint data under DDP).
    train_ids = corpus.train_ids
    if dist_info.enabled and not chat:
        per_rank = len(train_ids) // dist_info.world_size
        start = dist_info.rank * per_rank
        train_ids = train_ids[start : start + per_rank]
        _check_split(f"training (rank {dist_info.rank}'s share)", len(train_ids), T, corpus.hint)

    memory = check_training_memory(model_config, config.train, device)
    seed_everything(config.train.seed)
    model = MiniGPT(model_config)
    if init_from is not None:
        source = MiniGPT(init_from.model_config)
        source.load_state_dict(init_from.state_dict)
        model.load_state_dict(grow_vocab(source, model_config.vocab_size).state_dict())
    resolve_precision(config.train.precision, device, model)  # fp16 off CUDA, bf16 on an old GPU: refused now
    return PreparedRun(
        config=config,
        tokenizer=corpus.tokenizer,
        model=model,
        train_data=_rank_share(corpus.chats[0], dist_info)
        if chat
        else LanguageModelingDataset(
            train_ids, T, PACKINGS[config.data.packing].window_starts(train_ids, T, corpus.tokenizer.eot_token_id)
        ),
        val_data=corpus.chats[1] if chat else LanguageModelingDataset(corpus.val_ids, T),
        out_dir=out,
        data_source=corpus.source,
        resume_checkpoint=checkpoint,
        overwrite=overwrite,
        init_from=init_from.path if init_from is not None else None,
        dist=dist_info,
        memory=memory,
    )
