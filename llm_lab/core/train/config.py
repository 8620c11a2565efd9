"""``TrainerConfig``: every knob of a training run, validated when it is built.

The JSON form (the ``train`` section of a run config) is ``dataclasses.asdict`` verbatim; loading goes through
``llm_lab.utils.config_loader``, which rejects unknown keys by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from llm_lab.core.train.loggers import validate_logger_names
from llm_lab.core.train.optim import OPTIMIZERS
from llm_lab.core.train.schedule import SCHEDULES
from llm_lab.utils.seeds import check_seed
from llm_lab.utils.threads import parse_threads

Precision = Literal["auto", "fp32", "bf16", "fp16"]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DistributedStrategy = Literal["ddp", "fsdp"]
# The registries (``optim.OPTIMIZERS``, ``schedule.SCHEDULES``) are the only lists of these names: the config's
# choices (and so JSON validation and the error messages) are built from them, so a new entry is a new choice.
OptimizerName = Literal[tuple(OPTIMIZERS)]  # type: ignore[valid-type]
ScheduleName = Literal[tuple(SCHEDULES)]  # type: ignore[valid-type]
MuonNSDtype = Literal["auto", "fp32", "bf16"]

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DISTRIBUTED_STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")


#: The most micro-batches one optimizer step may sum. One step is the unit of progress: a checkpoint, a log row
#: and Ctrl+C all wait for it, so its work must stay bounded (``grad_accum_steps=1000000000`` made a step that
#: never ended). 1024 covers the large-batch recipes on one device (GPT-2's 0.5M tokens a step are 32 micro-batches
#: of 16 x 1024 tokens) with room to spare.
MAX_GRAD_ACCUM_STEPS = 1024


def _positive_int(name: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


@dataclass
class TrainerConfig:
    """Optimisation, evaluation, logging and hardware settings of a run.

    Attributes:
        batch_size: sequences per micro-batch (per process under DDP/FSDP).
        grad_accum_steps: micro-batches summed into one optimizer step, at most :data:`MAX_GRAD_ACCUM_STEPS`.
            The tokens of one step are ``batch_size * grad_accum_steps * context_length * world_size``.
        max_steps: optimizer steps of the whole run; training stops there.
        lr: peak learning rate, reached at the end of warmup.
        min_lr: the floor the schedule's decay ends at.
        warmup_steps: linear warmup from ``lr / warmup_steps`` to ``lr``.
        lr_decay_steps: step where the schedule reaches ``min_lr``; ``None`` means ``max_steps``.
        schedule: ``cosine`` | ``wsd`` (warm-up, stable, linear decay over the last ``decay_fraction``) |
            ``linear`` (straight line to ``min_lr``); see :mod:`llm_lab.core.train.schedule`.
        decay_fraction: ``wsd`` only: the final fraction of ``lr_decay_steps`` spent decaying, in (0, 1].
        optimizer: ``adamw`` | ``muon`` (Muon for the blocks' matrices, AdamW for the rest; see
            :mod:`llm_lab.core.train.optim`).
        muon_lr: Muon's peak learning rate (its updates have a fixed size per step, so it is ~10x AdamW's);
            the schedule scales it like ``lr``.
        muon_momentum: Muon's momentum after warm-up.
        muon_momentum_warmup_steps: Muon's momentum rises linearly from 0.85 to ``muon_momentum`` over these
            steps (0: constant).
        muon_ns_steps: Newton-Schulz iterations per Muon update.
        muon_ns_dtype: the Newton-Schulz iteration's dtype: ``auto`` (bf16 on CUDA and on CPUs with bf16 matrix
            units, where it is about 2x faster; else fp32) | ``fp32`` | ``bf16``.
        weight_decay: AdamW decoupled weight decay, applied to matrices and embeddings only (never to biases
            or norm gains).
        beta1: AdamW first-moment decay.
        beta2: AdamW second-moment decay (0.99 suits small models and batches; 0.95 large ones).
        eps: AdamW epsilon.
        grad_clip: clip the global gradient norm to this value; 0 disables clipping (the norm is still logged).
        eval_interval: evaluate (and write ``last.pt``) every this many steps, and at the last step.
        eval_batches: validation batches per evaluation (the same fixed batches every time).
        log_interval: write a CSV row every this many steps (rows are also written at every evaluation).
        sample_interval: call the sample callbacks every this many steps and at the last step; 0 never.
        checkpoint_interval: also write ``last.pt`` every this many steps between evaluations; ``None`` writes it
            at evaluations only.
        precision: ``fp32`` | ``bf16`` (autocast, CPU and CUDA) | ``fp16`` (autocast + grad scaler, CUDA only) |
            ``auto`` (see :func:`llm_lab.core.train.device.resolve_precision`).
        compile: ``torch.compile`` the model; falls back to eager with a warning where it is unsupported.
        device: ``auto`` (cuda, then mps, then cpu) or a device type.
        seed: seeds model init, dropout and data sampling; the same seed gives the same run.
        peak_flops: the hardware's peak FLOP/s for MFU; ``None`` measures a matmul peak once per process.
        distributed: under ``torchrun``: ``ddp`` (replicate the model) or ``fsdp`` (shard it with
            ``torch.distributed.fsdp.fully_shard``).
        threads: torch's CPU threads for this run: a number; ``auto`` (the default, as on the command line: one
            per core idle at start-up, or ``$LLM_LAB_THREADS``, or torch's ``$OMP_NUM_THREADS`` choice; settled once
            per process, so ``llm-lab --threads`` and an earlier call are kept, see
            :func:`llm_lab.utils.threads.settle_threads`); or ``None`` to keep the process setting untouched (a run
            saved with ``null`` resumes that way).
        loggers: where logged rows go: ``csv`` (``metrics.csv``, required) plus ``tensorboard`` and/or ``wandb``
            (offline); see :mod:`llm_lab.core.train.loggers`.
    """

    json_section: ClassVar[str] = "train"

    batch_size: int = 12
    grad_accum_steps: int = 1
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: int | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_batches: int = 20
    log_interval: int = 10
    sample_interval: int = 0
    checkpoint_interval: int | None = None
    precision: Precision = "auto"
    compile: bool = False
    device: DeviceName = "auto"
    seed: int = 1337
    peak_flops: float | None = None
    distributed: DistributedStrategy = "ddp"
    threads: int | Literal["auto"] | None = "auto"
    loggers: tuple[str, ...] = ("csv",)
    schedule: ScheduleName = "cosine"
    decay_fraction: float = 0.2
    optimizer: OptimizerName = "adamw"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_momentum_warmup_steps: int = 0
    muon_ns_steps: int = 5
    muon_ns_dtype: MuonNSDtype = "auto"

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum_steps", "max_steps", "eval_interval", "eval_batches", "log_interval")
        for name in (*positive, "muon_ns_steps"):
            _positive_int(name, getattr(self, name))
        if self.grad_accum_steps > MAX_GRAD_ACCUM_STEPS:
            raise ValueError(
                f"grad_accum_steps must be at most {MAX_GRAD_ACCUM_STEPS} (one optimizer step sums that many "
                f"micro-batches before it can log or checkpoint), got {self.grad_accum_steps}; for more tokens per "
                "step raise batch_size"
            )
        for name in ("warmup_steps", "sample_interval", "muon_momentum_warmup_steps"):
            _positive_int(name, getattr(self, name), allow_zero=True)
        for name in ("lr_decay_steps", "checkpoint_interval"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        numbers = ("lr", "min_lr", "weight_decay", "beta1", "beta2", "eps", "grad_clip", "peak_flops")
        for name in (*numbers, "decay_fraction", "muon_lr", "muon_momentum"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        check_seed(self.seed)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be between 0 and lr ({self.lr}), got {self.min_lr}")
        if self.lr_decay_steps is not None and self.lr_decay_steps < self.warmup_steps:
            raise ValueError(
                f"lr_decay_steps ({self.lr_decay_steps}) must be at least warmup_steps ({self.warmup_steps})"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be non-negative (0 disables clipping), got {self.grad_clip}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"peak_flops must be positive or null (null measures it), got {self.peak_flops}")
        for name, value, choices in (
            ("precision", self.precision, PRECISIONS),
            ("device", self.device, DEVICES),
            ("distributed", self.distributed, DISTRIBUTED_STRATEGIES),
            ("schedule", self.schedule, get_args(ScheduleName)),
            ("optimizer", self.optimizer, get_args(OptimizerName)),
            ("muon_ns_dtype", self.muon_ns_dtype, get_args(MuonNSDtype)),
        ):
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not supported; choose one of: {', '.join(choices)}")
        if self.threads is not None:
            self.threads = parse_threads(self.threads)
        validate_logger_names(self.loggers)
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1] (the share that decays), got {self.decay_fraction}")
        if not self.muon_lr > 0:
            raise ValueError(f"muon_lr must be positive, got {self.muon_lr}")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.muon_ns_steps > 20:
            raise ValueError(f"muon_ns_steps must be at most 20 (5 is the usual), got {self.muon_ns_steps}")
        if self.optimizer == "muon" and self.distributed == "fsdp":
            raise ValueError(
                "optimizer='muon' does not run under distributed='fsdp' (Newton-Schulz needs whole matrices, FSDP "
                "shards them); use distributed='ddp' or optimizer='adamw'"
            )
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}")

    @property
    def decay_steps(self) -> int:
        """The step at which the learning rate reaches ``min_lr``."""
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps
