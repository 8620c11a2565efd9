"""The training loop: ``Trainer(model, config, train_data, val_data).train()``.

One optimizer step is: set the scheduled learning rate; for each of ``grad_accum_steps`` micro-batches draw a
random batch (only from the trainer's own ``torch.Generator``), run forward under autocast, and backpropagate
``loss / grad_accum_steps``; check the loss is finite; unscale (fp16), clip the gradient norm, step the
optimizer (AdamW, or Muon + AdamW: ``train.optimizer``).
Every ``eval_interval`` steps the model is evaluated on fixed validation batches and ``last.pt`` (and
``best_val.pt`` on improvement) is written; every ``log_interval`` steps a CSV row is appended.

Exact resume: a checkpoint holds the model, optimizer, grad scaler, step, every RNG state and the batch
generator's state, so continuing from it replays the same batches and dropout masks and yields bitwise the same
losses (on CPU). Sample callbacks and evaluation run with the RNG states saved and restored around them, so
they never shift the training stream.

Hard days: while it trains, the trainer holds its run directory's lock (:mod:`llm_lab.utils.dirlock`; a second
writer is refused). SIGTERM (preemption) does not stop it mid-step: the step finishes, ``last.pt`` is written and
:class:`~llm_lab.utils.signals.Stopped` is raised (exit code 143 in ``llm-lab``); resuming continues exactly as
from any checkpoint. A run that replaces an earlier one (:meth:`Trainer.replace_on_first_checkpoint`) trains
beside it and swaps in at its first checkpoint, so a kill before that leaves the earlier run as it was.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from llm_lab.core.model import MiniGPT, lm_loss
from llm_lab.core.model.gpt import IGNORE_INDEX
from llm_lab.core.train.checkpoint import (
    BEST_FILE,
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    LAST_FILE,
    CheckpointError,
    check_checkpoint,
    load_checkpoint,
    load_resume_checkpoint,
    run_checkpoint_path,
    save_checkpoint,
)
from llm_lab.core.train.config import TrainerConfig
from llm_lab.core.train.device import (
    autocast_context,
    maybe_compile,
    precision_dtype,
    resolve_precision,
    select_device,
)
from llm_lab.core.train.distributed import current_info, shard_model
from llm_lab.core.train.flops import measure_matmul_peak
from llm_lab.core.train.loggers import open_loggers
from llm_lab.core.train.optim import apply_config, make_optimizer, set_step_values
from llm_lab.core.train.rng_state import capture_rng_state, restore_rng_state
from llm_lab.core.train.schedule import SCHEDULES
from llm_lab.utils.config_loader import config_to_dict
from llm_lab.utils.devices import synchronize
from llm_lab.utils.dirlock import lock_directory
from llm_lab.utils.dirswap import PendingReplacement
from llm_lab.utils.io import atomic_write_json, reporting_disk_full
from llm_lab.utils.malloc import retain_freed_memory
from llm_lab.utils.modules import eval_mode
from llm_lab.utils.signals import Stopped, deferred_stop, stop_requested
from llm_lab.utils.threads import settle_threads

__all__ = ["RUNTIME_FILE", "EvalResult", "NonFiniteLossError", "SampleCallback", "TrainResult", "Trainer"]

#: In a run directory: the device, precision and threads the run actually used (see ``Trainer.runtime``).
RUNTIME_FILE = "runtime.json"

SampleCallback = Callable[[torch.nn.Module, int], str]
"""``callback(model, step) -> text``: called every ``sample_interval`` steps; the text is printed and logged."""


class NonFiniteLossError(RuntimeError):
    """The loss (or, without a grad scaler, the gradient norm) became NaN or infinite."""


@dataclass
class EvalResult:
    """Mean validation loss over the fixed evaluation batches and its perplexity, ``exp(loss)``."""

    loss: float
    perplexity: float


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` ends with."""

    step: int
    tokens_seen: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


@functools.cache
def _cached_peak(device: str, dtype: torch.dtype) -> float:
    # Measured once per process and dtype: the probe takes a fraction of a second.
    return measure_matmul_peak(torch.device(device), dtype)


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Run a block (sampling, evaluation) without moving any global RNG the training stream depends on."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


class Trainer:
    """Trains a language model on token windows.

    Args:
        model: a ``MiniGPT`` (any module mapping ``(B, T)`` ids to ``(logits, _)`` works; ``flops_per_token()``
            and ``config`` are used when present). It is moved to the trainer's device.
        config: the :class:`TrainerConfig`.
        train_data: a ``LanguageModelingDataset``; batches come from ``get_batch(B, generator, device)``. Its ids
            are checked against the model's vocabulary once, here (``check_vocab_size``), not on every step.
        val_data: a ``LanguageModelingDataset`` for evaluation, or ``None`` (no evaluation, no ``best_val.pt``).
        out_dir: the run directory for ``metrics.csv``, ``samples.txt`` and ``checkpoints/``; ``None`` keeps
            everything in memory (``TrainResult.history``).
        sample_callbacks: ``callback(model, step) -> str``, called every ``sample_interval`` steps and at the
            end, on the unwrapped model in eval mode.
        progress: show a tqdm bar; ``None`` shows it only on a terminal. Without a bar, logged rows are printed.

    Under ``torchrun`` (an initialised process group) the model is wrapped in DDP or sharded with FSDP
    (``config.distributed``); each process draws its own batches (generator seeded with ``seed + rank``, on its
    own part of the training data when the caller shards it), and rank 0 alone writes files.

    Raises:
        ValueError: an id of ``train_data`` or ``val_data`` lies outside the model's vocabulary.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainerConfig,
        train_data: Any,
        val_data: Any | None = None,
        *,
        out_dir: str | Path | None = None,
        sample_callbacks: Sequence[SampleCallback] = (),
        progress: bool | None = None,
    ) -> None:
        self.config = config
        self.dist = current_info()
        settle_threads(config.threads)
        self.device = select_device(config.device, self.dist.local_rank)
        if self.device.type == "cpu":
            retain_freed_memory()  # large temporaries are reused instead of faulted in each step (llm_lab.utils.malloc)
        self.precision = resolve_precision(config.precision, self.device, model)
        self.train_data = train_data
        self.val_data = val_data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.sample_callbacks = list(sample_callbacks)
        self.progress = progress
        self._pending: PendingReplacement | None = None  # a replacement of out_dir swapped in at the first checkpoint
        self._loggers: list[Any] = []  # open during train()
        self._segment_rows, self._segment_step = 0, None  # where the current train() began: history row, step
        self._step_kwargs = self._check_token_ids(model)  # what the training step passes to the model

        self.model = model.to(self.device)  # the plain module: checkpoints, evaluation and sampling use it
        self.context_length = int(train_data.context_length)
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None
        self._fsdp = False
        wrapped: torch.nn.Module = self.model
        if self.dist.enabled:
            if config.distributed == "fsdp":
                wrapped = shard_model(self.model)
                self._fsdp = True
            else:
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                self._ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
                wrapped = self._ddp
            # Different dropout masks per process (the data already differs through the batch generator).
            torch.manual_seed(config.seed + 1_000_003 * self.dist.rank)
        self._eager_model = wrapped
        self._train_model = maybe_compile(wrapped, self.device) if config.compile else wrapped
        self._compile_checked = not config.compile

        self.optimizer = make_optimizer(self.model, config, self.device, fused=not self._fsdp)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.data_generator = torch.Generator().manual_seed(config.seed + self.dist.rank)

        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss: float | None = None
        self.best_step: int | None = None  # the step whose weights best_val.pt holds
        self.elapsed_before = 0.0  # wall time of earlier segments of a resumed run
        self.history: list[dict[str, Any]] = []
        flops = getattr(self.model, "flops_per_token", None)
        self.flops_per_token: float | None = float(flops()) if callable(flops) else None

    def _check_token_ids(self, model: torch.nn.Module) -> dict[str, Any]:
        """Check the data's ids against the model's vocabulary once, here where the data enters.

        Returns the keyword arguments of the training step's forward call: ``check_id_range=False`` when every
        training id is known to be in range (a ``MiniGPT`` on data that can check itself, a
        ``LanguageModelingDataset``), so that no step pays for the model's per-call range check, a reduction that
        is a host-device sync on a GPU. Evaluation keeps the model's own check.

        Raises:
            ValueError: an id of the training or validation data lies outside the vocabulary.
        """
        if not isinstance(model, MiniGPT):
            return {}
        for name, data in (("train_data", self.train_data), ("val_data", self.val_data)):
            check = getattr(data, "check_vocab_size", None)
            if check is not None:
                try:
                    check(model.config.vocab_size)
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from None
        return {"check_id_range": False} if hasattr(self.train_data, "check_vocab_size") else {}

    # ------------------------------------------------------------------------------------------------ paths
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / CHECKPOINT_DIR if self.out_dir is not None else None

    @property
    def tokens_per_step(self) -> int:
        """Training tokens consumed by one optimizer step, all processes together."""
        c = self.config
        return c.batch_size * c.grad_accum_steps * self.context_length * self.dist.world_size

    def _print(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message, file=sys.stdout)

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """Mean loss over the fixed validation batches (the first ``eval_batches`` of ``val_data``).

        ``eval_batches`` counts batches per process, like ``batch_size``: N processes score the first
        ``N * eval_batches`` batches between them (the sums combined), which are the windows one process with an
        N times larger batch scores, so runs at the same global batch are scored on the same text.

        Raises:
            ValueError: there is no validation data.
        """
        if self.val_data is None:
            raise ValueError("no validation data: pass val_data to the Trainer to evaluate")
        model = self.model
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        # DDP splits the batches between processes. FSDP's forward is collective, so there every process must run
        # the same number of batches: each evaluates all of them (and the sums need no combining).
        split = self.dist.enabled and not self._fsdp
        with _preserved_rng(), eval_mode(model):
            batches = self.val_data.eval_batches(
                self.config.batch_size,
                max_batches=self.config.eval_batches * self.dist.world_size,
                device=self.device,
                rank=self.dist.rank if split else 0,
                world_size=self.dist.world_size if split else 1,
            )
            for x, y in batches:
                with autocast_context(self.precision, self.device):
                    logits, _ = model(x)
                # Weighted by the targets that count: a chat batch's padding and prompt tokens are not scored.
                counted = (y != IGNORE_INDEX).sum()
                total += lm_loss(logits, y).double() * counted
                count += counted
        if split:
            dist.all_reduce(total)
            dist.all_reduce(count)
        loss = (total / count).item()
        return EvalResult(loss=loss, perplexity=math.exp(loss) if loss < 700 else math.inf)

    # ------------------------------------------------------------------------------------------- checkpoints
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _optimizer_state(self) -> dict[str, Any]:
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.optimizer.state_dict()

    def _gather(self, obj: Any) -> list[Any]:
        if not self.dist.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def state_dict(self) -> dict[str, Any]:
        """The full checkpoint dict (see :mod:`llm_lab.core.train.checkpoint`). Collective under DDP/FSDP."""
        model_config = getattr(self.model, "config", None)
        return {
            "format_version": FORMAT_VERSION,
            "model_config": config_to_dict(model_config) if model_config is not None else {},
            "model": self._model_state(),
            "optimizer": self._optimizer_state(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "elapsed_s": self.elapsed_before + self._segment_elapsed(),
            "train_config": config_to_dict(self.config),
            "rng": {"world_size": self.dist.world_size, "states": self._gather(capture_rng_state())},
            "data_state": {"generators": self._gather(self.data_generator.get_state())},
        }

    def save_checkpoint(self, path: str | Path) -> None:
        """Write the checkpoint to ``path`` atomically (rank 0 writes; every process must call this)."""
        state = self.state_dict()
        if self.dist.is_main:
            save_checkpoint(state, path)

    def _expected(self) -> dict[str, Any]:
        """What a checkpoint must fit to be loaded into this trainer (see ``check_checkpoint``)."""
        # Under FSDP2 the module's state dict holds DTensors under the plain names, whose shapes are the full ones a
        # checkpoint holds; its saved optimizer state is keyed by parameter names, so only its form is checked.
        optimizer = None if self._fsdp else self.optimizer
        return {"expected_model": self.model.state_dict(), "optimizer": optimizer, "world_size": self.dist.world_size}

    def load_state(self, checkpoint: dict[str, Any], where: str | Path = "the checkpoint") -> None:
        """Restore everything a checkpoint holds, so training continues exactly where it stopped.

        Nothing is restored before the whole checkpoint has been checked against this trainer
        (:func:`~llm_lab.core.train.checkpoint.check_checkpoint`).

        Raises:
            CheckpointError: the checkpoint is for another model architecture or another number of processes, or
                it is damaged (tensors, counters, optimizer, RNG or data states); the message names ``where``.
        """
        model_config = getattr(self.model, "config", None)
        if model_config is not None and checkpoint.get("model_config") != config_to_dict(model_config):
            raise CheckpointError(f"{where} was written for a different model config than this run's")
        check_checkpoint(checkpoint, where, training_state=True, **self._expected())
        if self._fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, checkpoint["model"], options=options)
            set_optimizer_state_dict(self.model, self.optimizer, checkpoint["optimizer"], options=options)
        else:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        # The config may have been changed on resume (e.g. betas); the loaded param groups must follow it.
        apply_config(self.optimizer, self.config)
        if self.scaler is not None and checkpoint.get("grad_scaler"):
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
        self.step = int(checkpoint["step"])
        self.tokens_seen = int(checkpoint["tokens_seen"])
        self.best_val_loss = checkpoint["best_val_loss"]
        self.best_step = checkpoint.get("best_step")
        self.elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
        restore_rng_state(checkpoint["rng"]["states"][self.dist.rank])
        self.data_generator.set_state(checkpoint["data_state"]["generators"][self.dist.rank])

    def resume(self, path: str | Path) -> None:
        """Load a checkpoint file (or a run directory's ``checkpoints/last.pt``) and continue from it.

        A run directory is cleaned of a killed run's leftovers and its best checkpoint reconciled first.
        """
        path = Path(path)
        expected = self._expected()
        if path.is_dir():
            checkpoint, where = load_resume_checkpoint(path, **expected), run_checkpoint_path(path, "last")
        else:
            checkpoint, where = load_checkpoint(path, training_state=True, **expected), path
        self.load_state(checkpoint, where)

    # ---------------------------------------------------------------------------------------------- training
    def _segment_elapsed(self) -> float:
        start = getattr(self, "_segment_start", None)
        return time.perf_counter() - start if start is not None else 0.0

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.precision, self.device):
            if self._compile_checked:
                logits, _ = self._train_model(x, **self._step_kwargs)
            else:
                self._compile_checked = True
                try:
                    logits, _ = self._train_model(x, **self._step_kwargs)
                except Exception as e:  # noqa: BLE001 (any compiler failure means: run eagerly)
                    warnings.warn(
                        f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "running eagerly",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self._train_model = self._eager_model
                    logits, _ = self._train_model(x, **self._step_kwargs)
            return lm_loss(logits, y)

    def _sync_context(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        # Gradients are averaged across processes only on the last micro-step of an accumulation.
        if self._ddp is not None and not last_micro_step:
            return self._ddp.no_sync()
        if self._fsdp:
            self.model.set_requires_gradient_sync(last_micro_step)  # type: ignore[operator]
        return contextlib.nullcontext()

    def _train_step(self, lr: float) -> tuple[float, float]:
        """One optimizer step; returns ``(train_loss, grad_norm)``."""
        c = self.config
        set_step_values(self.optimizer, c, self.step, lr)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(c.grad_accum_steps):
            x, y = self.train_data.get_batch(c.batch_size, self.data_generator, device=self.device)
            with self._sync_context(micro == c.grad_accum_steps - 1):
                loss = self._forward_loss(x, y)
                scaled = loss / c.grad_accum_steps
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach()
        mean_loss = loss_sum / c.grad_accum_steps
        if self.dist.enabled:
            dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG if dist.get_backend() == "nccl" else dist.ReduceOp.SUM)
            if dist.get_backend() != "nccl":  # gloo has no AVG
                mean_loss /= self.dist.world_size
        train_loss = mean_loss.item()
        if not math.isfinite(train_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"the training loss became {train_loss} at step {self.step + 1}")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # max_norm=inf still returns the norm (for the log) and scales the gradients by exactly 1.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip if c.grad_clip > 0 else math.inf)
        if hasattr(norm, "full_tensor"):  # FSDP: a DTensor
            norm = norm.full_tensor()
        grad_norm = norm.item()
        if self.scaler is None and not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"the gradient norm became {grad_norm} at step {self.step + 1}")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return train_loss, grad_norm

    def _peak_flops(self) -> float | None:
        if self.config.peak_flops is not None:
            return self.config.peak_flops
        if self.flops_per_token is None:
            return None
        return _cached_peak(str(self.device), precision_dtype(self.precision))

    def _run_samples(self, step: int) -> None:
        if not self.sample_callbacks:
            return
        # Under FSDP the forward pass is collective, so every process samples; otherwise rank 0 alone.
        if not (self.dist.is_main or self._fsdp):
            return
        with eval_mode(self.model):
            for callback in self.sample_callbacks:
                with _preserved_rng(), torch.no_grad():
                    text = callback(self.model, step)
                if self.dist.is_main:
                    self._print(f"--- sample at step {step} ---\n{text}\n---")
                    if self.out_dir is not None:
                        with open(self.out_dir / "samples.txt", "a", encoding="utf-8") as f:
                            f.write(f"=== step {step} ===\n{text}\n")

    def runtime(self) -> dict[str, Any]:
        """What this run resolved its ``auto`` settings to: device, precision and CPU threads. Written to
        ``RUN_DIR/runtime.json`` when training starts, so reports show what ran, not ``auto``."""
        return {"device": str(self.device), "precision": self.precision, "threads": torch.get_num_threads()}

    def replace_on_first_checkpoint(self, pending: PendingReplacement) -> None:
        """Train into ``pending`` (a new run being built beside the one it replaces) and swap it in when the first
        checkpoint is written (or when training ends); until then the run it replaces stays as it was, and a
        failure or a stop before it discards the new run. Rank 0 only."""
        self._pending = pending
        self.out_dir = pending.path

    def _checkpoint(self, name: str) -> None:
        if self.checkpoint_dir is not None:
            self.save_checkpoint(self.checkpoint_dir / name)
            if self._pending is not None:
                self._commit_replacement()

    def _commit_replacement(self) -> None:
        assert self._pending is not None
        self.out_dir = self._pending.commit()
        self._pending = None
        if self._segment_step is not None:  # inside train(): the trackers start now, with the rows logged so far
            self._open_loggers()
            for row in self.history[self._segment_rows :]:
                for logger in self._loggers:
                    logger.write(row)

    def _open_loggers(self) -> None:
        c = self.config
        self._loggers = open_loggers(c.loggers, self.out_dir, start_step=self._segment_step, config=config_to_dict(c))

    def _stop_agreed(self) -> bool:
        """Whether a stop was requested (SIGTERM); under torchrun every process learns it, so all stop together."""
        requested = stop_requested() is not None
        if self.dist.enabled:
            flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        return requested

    def _stopped(self) -> Stopped:
        signum = stop_requested() or signal.SIGTERM  # a process of a group that did not get the signal itself
        kept = (
            f"checkpoint {self.checkpoint_dir / LAST_FILE} written; resume the run to continue "
            f"(llm-lab train --resume --out {self.out_dir})"
            if self.checkpoint_dir is not None
            else "no out_dir, so nothing was saved"
        )
        name = signal.Signals(signum).name
        return Stopped(f"stopped by {name} after step {self.step}/{self.config.max_steps}: {kept}", signum)

    def train(self) -> TrainResult:
        """Run until ``config.max_steps`` (continuing from the current step after :meth:`resume`).

        Returns:
            The final step, tokens, losses and the logged rows.

        Raises:
            NonFiniteLossError: the loss became NaN/inf; the message names the step. Nothing is written for that
                step, so ``last.pt`` stays the last good checkpoint.
            Stopped: SIGTERM arrived; the step it came in finished and ``last.pt`` holds it.
            DirectoryLockedError: another process is writing the run directory.
        """
        pending = self._pending
        target = pending.target if pending is not None else self.out_dir
        holds = target is not None and self.dist.is_main
        with contextlib.ExitStack() as stack:
            if holds:
                stack.enter_context(lock_directory(target))
            stack.enter_context(deferred_stop())
            if pending is not None:  # a failure before the first checkpoint discards the new run, the old one stays
                stack.enter_context(pending.writing())
            if target is not None:  # metrics.csv, samples.txt and the trackers' files fill a disk too
                stack.enter_context(reporting_disk_full(target))
            try:
                result = self._train_loop()
            except BaseException:
                self._pending = None
                raise
            if self._pending is not None:
                self._commit_replacement()
        return result

    def _train_loop(self) -> TrainResult:
        c = self.config
        is_main = self.dist.is_main
        # metrics.csv and any trackers in config.loggers (rank 0 only); a run not swapped in yet opens them at its
        # first checkpoint, in its final place (trackers reopen their files by path), and writes the rows so far
        self._loggers, self._segment_rows, self._segment_step = [], len(self.history), self.step
        if self.out_dir is not None and is_main and self._pending is None:
            self._open_loggers()
        if self.out_dir is not None and is_main:
            atomic_write_json(self.out_dir / RUNTIME_FILE, self.runtime())
        peak = self._peak_flops()
        self._segment_start = time.perf_counter()
        # progress=None: a bar on a terminal only (tqdm's disable=None); False: never; True: always.
        disable = True if (not is_main or self.progress is False) else (None if self.progress is None else False)
        bar = tqdm(total=c.max_steps, initial=self.step, disable=disable, unit="step", dynamic_ncols=True)
        show_rows = bool(bar.disable) and is_main and self.progress is not False
        self.model.train()
        train_loss: float | None = None
        val_loss: float | None = None
        window_start, window_tokens = time.perf_counter(), 0
        try:
            while self.step < c.max_steps:
                lr = SCHEDULES[c.schedule].lr_at(
                    self.step,
                    lr=c.lr,
                    min_lr=c.min_lr,
                    warmup_steps=c.warmup_steps,
                    decay_steps=c.decay_steps,
                    decay_fraction=c.decay_fraction,
                )
                train_loss, grad_norm = self._train_step(lr)
                self.step += 1
                self.tokens_seen += self.tokens_per_step
                window_tokens += self.tokens_per_step
                bar.update(1)
                last = self.step == c.max_steps
                do_eval = self.val_data is not None and (self.step % c.eval_interval == 0 or last)
                improved = False
                saved = False
                if do_eval or last or self.step % c.log_interval == 0:
                    synchronize(self.device)  # queued GPU work belongs to these steps' time
                    # tokens/s over the training steps since the last row (evaluation and saving excluded)
                    tokens_per_second = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    row: dict[str, Any] = {
                        "step": self.step,
                        "tokens": self.tokens_seen,
                        "lr": lr,
                        "train_loss": train_loss,
                        "val_loss": None,
                        "grad_norm": grad_norm,
                        "tokens_per_second": tokens_per_second,
                        "mfu": self.flops_per_token * tokens_per_second / peak
                        if peak and self.flops_per_token is not None
                        else None,
                        "elapsed_s": self.elapsed_before + self._segment_elapsed(),
                    }
                    if do_eval:
                        result = self.evaluate()
                        val_loss = row["val_loss"] = result.loss
                        improved = self.best_val_loss is None or result.loss < self.best_val_loss
                        if improved:
                            self.best_val_loss, self.best_step = result.loss, self.step
                        self._print(
                            f"step {self.step}: train loss {train_loss:.4f}, val loss {result.loss:.4f}, "
                            f"val perplexity {result.perplexity:.2f}"
                        )
                    self.history.append(row)
                    for logger in self._loggers:
                        logger.write(row)
                    bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_per_second:,.0f}")
                    if show_rows:
                        self._print(
                            f"step {self.step}/{c.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                            f"{tokens_per_second:,.0f} tok/s"
                        )
                    window_tokens = 0
                if do_eval:
                    # last.pt first: it records best_step, so a kill before best_val.pt is repaired on resume
                    self._checkpoint(LAST_FILE)
                    saved = True
                    if improved:
                        self._checkpoint(BEST_FILE)
                elif c.checkpoint_interval and self.step % c.checkpoint_interval == 0:
                    self._checkpoint(LAST_FILE)
                    saved = True
                if c.sample_interval and (self.step % c.sample_interval == 0 or last):
                    self._run_samples(self.step)
                if not last and self._stop_agreed():  # SIGTERM: this step is done; keep it and stop
                    if not saved:
                        self._checkpoint(LAST_FILE)
                    raise self._stopped()
                if window_tokens == 0:
                    window_start = time.perf_counter()
            if self.val_data is None and self.checkpoint_dir is not None and self.step > 0:
                self._checkpoint(LAST_FILE)  # without evaluation there is still a final checkpoint to resume from
        finally:
            bar.close()
            for logger in self._loggers:
                logger.close()
            self._loggers, self._segment_step = [], None
        return TrainResult(
            step=self.step,
            tokens_seen=self.tokens_seen,
            train_loss=train_loss,
            val_loss=val_loss,
            best_val_loss=self.best_val_loss,
            history=self.history,
        )
