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

This module prepares and starts a run; the config's sections are in :mod:`llm_lab.core.train.run_config`, the rule
of which directory a run may write or replace in :mod:`llm_lab.core.train.run_directory`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from llm_lab.core.chat import ChatTemplate, add_chat_tokens, grow_vocab
from llm_lab.core.chat.sft import ChatDataset, read_conversations, render_conversations
from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.data.corpus import corpus_fingerprint, load_corpus_tokenizer, load_prepared
from llm_lab.core.data.datasets import PACKINGS
from llm_lab.core.data.shards import ShardedIds
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.model.memory import MemoryEstimate, check_memory, estimate_memory
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer, load_tokenizer
from llm_lab.core.tokenization.fingerprint import tokenizer_fingerprint
from llm_lab.core.train.checkpoint import (
    RUN_FILE,
    load_resume_checkpoint,
    run_checkpoint_path,
)
from llm_lab.core.train.config import TrainerConfig
from llm_lab.core.train.device import resolve_precision, select_device
from llm_lab.core.train.distributed import DistributedInfo, current_info
from llm_lab.core.train.loggers import check_loggers

# The run config and the run directory's rule; their names also stay importable from here, where they were first
# defined.
from llm_lab.core.train.run_config import (
    RUN_FORMAT_VERSION,
    DataConfig,
    RunConfig,
    TokenizerSpec,
    load_run_config,
    resolve_run_config,
)
from llm_lab.core.train.run_directory import RUN_KIND, check_run_directory
from llm_lab.core.train.trainer import SampleCallback, Trainer
from llm_lab.utils.config_loader import apply_overrides, config_to_dict, replace_config
from llm_lab.utils.dirlock import lock_directory
from llm_lab.utils.dirswap import (
    PendingReplacement,
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

_TOKENIZER_DIR = "tokenizer"


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
