"""Training-step benchmark: how fast one optimizer step of a model config runs here, and how close to the peak.

Settings measured, on the same random batch of the same shape:

- ``ours``: the Trainer's own loop (``Trainer.train()`` with one logged row per step and nothing written: its
  batch sampling, optimizer, autocast, gradient clipping and ``torch.compile`` wrapper), for each precision
  (``fp32``, ``bf16``), eager / compiled and optimizer (``train.optimizer``: ``adamw``, ``muon``; Muon's
  Newton-Schulz work is inside the step it times); the time per step is the one the Trainer logs as tokens/s;
- ``baseline``: a plain GPT of the same shape run the way the well-known minimal GPT trainers run on a CPU:
  fp32, eager, and AdamW's per-parameter loop (``foreach=False, fused=False``). It is written out here (GPT-2
  architecture: learned positions, LayerNorm, GELU MLP, tied embedding, SDPA attention), not built from
  ``MiniGPT``, so that speed work on our model never moves the yardstick.

- ``ours SFT`` (with ``sft=True``): our step again, on supervised fine-tuning batches of the same shape: a
  :class:`~llm_lab.core.chat.sft.ChatDataset` of conversations exactly ``context_length + 1`` ids long (so a
  batch is ``(batch_size, context_length)`` like the plain one), each trained on its second part only (targets
  ``-100`` on the prompt). It answers "what does the loss mask cost": its tokens/s over the plain step's, for
  the same precision, compilation and optimizer, is in :attr:`StepBenchResult.sft_ratios` and the notes.

For each setting: median ms/step, tokens/s, and MFU, the model FLOPs per second (``tokens/s x
model.flops_per_token()``) over the matmul peak of the precision that ran, measured in the same run (before and
after the steps, the better of the two). A step cannot beat the peak: where it seems to (a peak measured at a busy
moment), MFU is shown as 1.0 with a note saying so. On a CPU without bf16 units
(:func:`llm_lab.core.train.precision.cpu_bf16_slowdown`) bf16 is left out of the default precisions, with a
note; asked for explicitly it runs after one warning. The settings are timed in interleaved rounds
(A B C, A B C, ...), so a noisy neighbour on a shared machine slows all of them alike instead of one.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llm_lab.core.chat.sft import ChatDataset
from llm_lab.core.chat.template import RenderedChat
from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.train import Trainer, TrainerConfig
from llm_lab.core.train.device import compile_unsupported_reason
from llm_lab.core.train.flops import measure_matmul_peak
from llm_lab.core.train.precision import cpu_bf16_slowdown, warn_if_cpu_bf16_is_slow
from llm_lab.experiments.tables import markdown_table, write_csv
from llm_lab.utils.config_loader import apply_overrides, config_from_dict
from llm_lab.utils.devices import synchronize
from llm_lab.utils.io import atomic_write_text
from llm_lab.utils.paths import check_input_file
from llm_lab.utils.words import plural

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
CSV_COLUMNS: tuple[str, ...] = (
    "setting",
    "precision",
    "compile",
    "optimizer",
    "ms_per_step",
    "tokens_per_second",
    "mfu",
    "vs_baseline",
    "loss_first",
    "loss_last",
)


def default_10m_config() -> MiniGPTConfig:
    """The 10M-parameter character model: 6 layers, 6 heads, 384 wide, context 256, vocabulary 65."""
    return MiniGPTConfig(vocab_size=65, context_length=256, n_layer=6, n_head=6, n_embd=384)


@dataclass
class StepBenchConfig:
    """What to measure.

    Attributes:
        model: the model shape.
        batch_size: sequences per step (each ``model.context_length`` tokens).
        device: ``cpu`` or ``cuda``.
        precisions: ``fp32`` and/or ``bf16`` for our step; ``None`` (default): both, except bf16 on a CPU
            without bf16 units (see the module docstring).
        compile_modes: ``False`` (eager) and/or ``True`` (``torch.compile``) for our step.
        optimizers: ``train.optimizer`` names for our step (``adamw``, ``muon``).
        baseline: also run the plain fp32 eager baseline.
        sft: also time each of our settings on SFT batches of the same shape (see the module docstring).
        warmup: untimed steps per setting first (compilation happens here).
        steps: timed steps per setting in all (split over ``rounds``).
        rounds: interleaved timing rounds.
        peak_repeats: trials of each matmul-peak measurement.
        seed: model init and the random batch.
    """

    model: MiniGPTConfig = field(default_factory=default_10m_config)
    batch_size: int = 16
    device: str = "cpu"
    precisions: Sequence[str] | None = None
    compile_modes: Sequence[bool] = (False, True)
    optimizers: Sequence[str] = ("adamw",)
    baseline: bool = True
    sft: bool = False
    warmup: int = 2
    steps: int = 6
    rounds: int = 3
    peak_repeats: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the settings (call again after changing fields)."""
        if self.precisions is None:
            return self._validate_rest()
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise ValueError(f"unknown precision(s) {unknown or list(self.precisions)}; choose from: fp32, bf16")
        self._validate_rest()

    def _validate_rest(self) -> None:
        from llm_lab.core.train.optim import OPTIMIZERS

        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown or not self.optimizers:
            choices = ", ".join(OPTIMIZERS)
            raise ValueError(f"unknown optimizer(s) {unknown or list(self.optimizers)}; choose from: {choices}")
        if not self.compile_modes:
            raise ValueError("compile_modes must hold False (eager), True (compiled) or both")
        for name in ("batch_size", "steps", "rounds", "peak_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {self.warmup!r}")


def quick_step_config(device: str = "cpu") -> StepBenchConfig:
    """A tiny model and a few steps, eager only (for tests and ``--quick``)."""
    model = MiniGPTConfig(vocab_size=65, context_length=32, n_layer=2, n_head=2, n_embd=32)
    return StepBenchConfig(
        model=model,
        batch_size=4,
        device=device,
        compile_modes=(False,),
        warmup=1,
        steps=2,
        rounds=1,
        peak_repeats=2,
    )


def load_step_model_config(path: str | Path | None, overrides: Sequence[str] = ()) -> tuple[MiniGPTConfig, int]:
    """The model config and batch size to benchmark: from a run config JSON, else the 10M default.

    The file may be a run config (``model`` and ``train`` sections; the batch size is ``train.batch_size``) or
    a flat model config. ``overrides`` are ``section.key=value`` strings: any ``model.*`` key, and
    ``train.batch_size`` (the only training setting a single step depends on; precision and compilation are
    chosen with ``precisions`` and ``compile_modes``).
    """
    import json

    batch_size = 16
    if path is None:
        model = default_10m_config()
    else:
        path = check_input_file(path, "config file", "a run config JSON file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            model = config_from_dict(MiniGPTConfig, data["model"], where=f"{path}: model")
            train = data.get("train", {})
            if not isinstance(train, dict):
                raise ValueError(f"{path}: the train section must be a JSON object, got {type(train).__name__}")
            batch_size = train.get("batch_size", batch_size)
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"{path}: train.batch_size must be a positive integer, got {batch_size!r}")
        else:
            model = config_from_dict(MiniGPTConfig, data, where=str(path))
    if overrides:
        sections = apply_overrides({"model": model, "train": _StepTrainSection(batch_size)}, list(overrides))
        model, batch_size = sections["model"], sections["train"].batch_size
    return model, batch_size


@dataclass
class _StepTrainSection:
    batch_size: int = 16


# ----------------------------------------------------------------------------------------------------------------
# The plain baseline: a GPT-2-shaped model and the textbook training step.


class _PlainBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, hidden: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, hidden)
        self.fc_out = nn.Linear(hidden, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))


class PlainGPT(nn.Module):
    """A GPT-2-shaped model with the width, depth, heads, context and vocabulary of ``config`` (the baseline)."""

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.context_length, config.n_embd)
        self.blocks = nn.ModuleList(
            _PlainBlock(config.n_embd, config.n_head, config.hidden_dim) for _ in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied, as in GPT-2
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, vocab)


# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Setting:
    name: str
    precision: str
    compiled: bool
    optimizer_kind: str
    run: Callable[[int], list[tuple[float, float]]]  # runs n optimizer steps -> [(seconds, loss)] per step
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def _ours_setting(
    config: StepBenchConfig,
    precision: str,
    compiled: bool,
    optimizer: str,
    data: LanguageModelingDataset | ChatDataset,
    peak: float,
    name: str = "ours",
) -> _Setting:
    """Our step is the Trainer's: ``Trainer.train()`` itself, one CSV-style row per step, nothing written."""
    torch.manual_seed(config.seed)
    model = MiniGPT(config.model)
    train_config = TrainerConfig(
        batch_size=config.batch_size,
        max_steps=1,
        warmup_steps=0,
        log_interval=1,
        eval_interval=10**9,
        precision=precision,
        compile=compiled,
        optimizer=optimizer,
        device=config.device,
        seed=config.seed,
        peak_flops=peak,
    )
    trainer = Trainer(model, train_config, data, None, out_dir=None, progress=False)

    def run(n_steps: int) -> list[tuple[float, float]]:
        # Continue the same run for n more steps; every step logs its own tokens/s (log_interval=1).
        trainer.config.max_steps = trainer.step + n_steps
        rows = trainer.train().history[-n_steps:]
        return [(trainer.tokens_per_step / row["tokens_per_second"], row["train_loss"]) for row in rows]

    if optimizer == "adamw":
        kind = "AdamW fused" if trainer.optimizer.defaults.get("fused") else "AdamW foreach"
    else:
        kind = "Muon, NS in " + str(trainer.optimizer.ns_dtype).removeprefix("torch.")
    return _Setting(name, precision, compiled, kind, run)


def _baseline_setting(config: StepBenchConfig, data: LanguageModelingDataset) -> _Setting:
    """The textbook loop: batch, forward, cross-entropy, backward, clip, AdamW step (per-parameter loop)."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = PlainGPT(config.model).to(device)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
        foreach=False,
        fused=False,
    )
    generator = torch.Generator().manual_seed(config.seed)

    def run(n_steps: int) -> list[tuple[float, float]]:
        out = []
        for _ in range(n_steps):
            synchronize(device)
            start = time.perf_counter()
            x, y = data.get_batch(config.batch_size, generator, device=device)
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()  # waits for the step to finish
            out.append((time.perf_counter() - start, value))
        return out

    return _Setting("baseline", "fp32", False, "AdamW for-loop", run)


def sft_bench_data(model: MiniGPTConfig, seed: int, n_chats: int = 256) -> ChatDataset:
    """Random conversations of exactly ``context_length + 1`` ids (batches as wide as the plain ones), each with a
    prompt of 1 to ``context_length // 2`` untrained ids and the rest trained, as an assistant reply is."""
    generator = torch.Generator().manual_seed(seed)
    n_ids = model.context_length + 1
    chats = []
    for _ in range(n_chats):
        ids = torch.randint(0, model.vocab_size, (n_ids,), generator=generator).tolist()
        prompt = int(torch.randint(1, max(2, model.context_length // 2 + 1), (1,), generator=generator))
        chats.append(RenderedChat(ids, [0] * prompt + [1] * (n_ids - prompt)))
    return ChatDataset(chats, model.context_length, pad_id=0)


@dataclass
class StepBenchResult:
    """Rows (one per setting, ``CSV_COLUMNS``) and what they were measured against."""

    rows: list[dict[str, Any]]
    model: dict[str, Any]
    batch_size: int
    tokens_per_step: int
    num_parameters: int
    flops_per_token: float
    peak_gflops: dict[str, float]
    device: str
    notes: list[str] = field(default_factory=list)
    #: SFT tokens/s over the plain step's, per (precision, compile, optimizer) of our settings (``sft=True``).
    sft_ratios: dict[tuple[str, bool, str], float] = field(default_factory=dict)


def _measure_peaks(device: torch.device, repeats: int, precisions: Sequence[str]) -> dict[str, float]:
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    return {precision: measure_matmul_peak(device, dtypes[precision], repeats=repeats) for precision in precisions}


def step_precisions(config: StepBenchConfig, device: torch.device, notes: list[str]) -> tuple[str, ...]:
    """The precisions to time: the config's, else fp32 and bf16 (bf16 left out, with a note, on a CPU without
    bf16 units). An explicit bf16 on such a CPU is timed after one warning."""
    if device.type != "cpu":
        return tuple(config.precisions or PRECISIONS)
    if config.precisions is not None:
        if "bf16" in config.precisions:
            warn_if_cpu_bf16_is_slow("bench step --precisions bf16")
        return tuple(config.precisions)
    slowdown = cpu_bf16_slowdown()
    if slowdown is None:
        return PRECISIONS
    notes.append(f"bf16 left out: this CPU has no bf16 units and a bf16 matrix product ran {slowdown:.1f}x slower "
                 "than fp32 (time it anyway with --precisions fp32 bf16)")  # fmt: skip
    return ("fp32",)


def run_step_benchmark(config: StepBenchConfig, progress: bool = True) -> StepBenchResult:
    """Build every setting, time them in interleaved rounds and compute tokens/s and MFU."""
    config.validate()
    device = torch.device(config.device)
    notes: list[str] = []
    precisions = step_precisions(config, device, notes)
    measured = tuple(dict.fromkeys(("fp32", *precisions)))  # fp32 for the baseline too
    peaks = _measure_peaks(device, config.peak_repeats, measured)

    # Random token ids: the speed of a step does not depend on what the tokens are.
    generator = torch.Generator().manual_seed(config.seed)
    n_tokens = max(100_000, 4 * config.batch_size * (config.model.context_length + 1))
    ids = torch.randint(0, config.model.vocab_size, (n_tokens,), generator=generator).numpy()
    data = LanguageModelingDataset(ids, config.model.context_length)
    sft_data = sft_bench_data(config.model, config.seed) if config.sft else None

    compile_modes = list(config.compile_modes)
    if True in compile_modes and (reason := compile_unsupported_reason(device)) is not None:
        notes.append(f"compiled settings skipped: {reason}")
        compile_modes = [mode for mode in compile_modes if not mode] or [False]
    settings = []
    if config.baseline:
        settings.append(_baseline_setting(config, data))
    for optimizer in config.optimizers:
        for precision in precisions:
            for compiled in compile_modes:
                settings.append(_ours_setting(config, precision, compiled, optimizer, data, peaks[precision]))
                if config.sft:
                    settings.append(_ours_setting(config, precision, compiled, optimizer, sft_data,
                                                  peaks[precision], name="ours SFT"))

    per_round = max(1, math.ceil(config.steps / config.rounds))
    total = len(settings) * (config.warmup + per_round * config.rounds)
    with tqdm(total=total, desc="train step", disable=not progress, leave=False) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compile and autocast chatter
        for setting in settings:
            bar.set_postfix_str(f"warm-up {setting.name} {setting.precision} compile={setting.compiled}")
            if config.warmup:
                setting.losses += [loss for _, loss in setting.run(config.warmup)]
            bar.update(config.warmup)
        for _ in range(config.rounds):
            for setting in settings:
                bar.set_postfix_str(f"{setting.name} {setting.precision} compile={setting.compiled}")
                for seconds, loss in setting.run(per_round):
                    setting.times.append(seconds)
                    setting.losses.append(loss)
                bar.update(per_round)

    # Measured again after the steps: the best of both is the machine's peak (a busy moment only lowers it).
    after = _measure_peaks(device, config.peak_repeats, measured)
    peaks = {precision: max(peak, after[precision]) for precision, peak in peaks.items()}
    with torch.device("meta"):  # shapes only: counting needs no memory and no init
        shape_only = MiniGPT(config.model)
    flops_per_token = shape_only.flops_per_token()
    num_parameters = shape_only.num_parameters()
    tokens_per_step = config.batch_size * config.model.context_length
    rows = []
    baseline_tps = None
    for setting in settings:
        seconds = statistics.median(setting.times)
        tokens_per_second = tokens_per_step / seconds
        if setting.name == "baseline":
            baseline_tps = tokens_per_second
        achieved = tokens_per_second * flops_per_token
        mfu = achieved / peaks[setting.precision]  # only against the peak of the precision that ran
        if mfu > 1.0:
            notes.append(f"{setting.name} {setting.precision}: MFU shown as 1.0, the step ran at "
                         f"{achieved / 1e9:.1f} GFLOP/s, above the {peaks[setting.precision] / 1e9:.1f} GFLOP/s "
                         "matmul peak measured (a busy moment during the peak): rerun on a quiet machine")  # fmt: skip
            mfu = 1.0
        rows.append(
            {
                "setting": setting.name,
                "precision": setting.precision,
                "compile": setting.compiled,
                "optimizer": setting.optimizer_kind,
                "ms_per_step": seconds * 1e3,
                "tokens_per_second": tokens_per_second,
                "mfu": mfu,
                "vs_baseline": None,
                "loss_first": setting.losses[0],
                "loss_last": setting.losses[-1],
            }
        )
    if baseline_tps is not None:
        for row in rows:
            row["vs_baseline"] = row["tokens_per_second"] / baseline_tps
    sft_ratios = {}
    plain = {(r["precision"], r["compile"], r["optimizer"]): r for r in rows if r["setting"] == "ours"}
    for row in rows:
        if row["setting"] == "ours SFT":
            key = (row["precision"], row["compile"], row["optimizer"])
            sft_ratios[key] = row["tokens_per_second"] / plain[key]["tokens_per_second"]
            notes.append(f"SFT (masked loss) / plain tokens/s, {key[0]} compile={key[1]} {key[2]}: "
                         f"{sft_ratios[key]:.3f}")  # fmt: skip
    return StepBenchResult(
        rows=rows,
        model={k: getattr(config.model, k) for k in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd")},
        batch_size=config.batch_size,
        tokens_per_step=tokens_per_step,
        num_parameters=num_parameters,
        flops_per_token=flops_per_token,
        peak_gflops={k: v / 1e9 for k, v in peaks.items()},
        device=str(device),
        notes=notes,
        sft_ratios=sft_ratios,
    )


def step_summary_table(result: StepBenchResult) -> str:
    """The result as text: a header with the shape and peaks, then the markdown table."""
    m = result.model
    header = (
        f"model: {plural(m['n_layer'], 'layer')}, {plural(m['n_head'], 'head')}, {m['n_embd']} wide, "
        f"context {m['context_length']}, "
        f"vocab {m['vocab_size']}, {result.num_parameters / 1e6:.2f}M parameters; batch {result.batch_size} "
        f"({result.tokens_per_step} tokens/step), {result.flops_per_token / 1e6:.1f} MFLOP/token; {result.device}\n"
        "matmul peak measured in this run: "
        + ", ".join(f"{name} {gflops:.1f} GFLOP/s" for name, gflops in result.peak_gflops.items())
        + "\n"
    )
    notes = "".join(f"note: {note}\n" for note in result.notes)
    headers = {
        "ms_per_step": "ms/step",
        "tokens_per_second": "tokens/s",
        "mfu": "MFU (its precision's peak)",
        "vs_baseline": "x baseline",
    }
    table = markdown_table(result.rows, CSV_COLUMNS, headers=headers, digits=3)
    return header + notes + "\n" + table


def write_step_results(result: StepBenchResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``step.csv`` and ``step.md`` under ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(out_dir / "step.csv", result.rows, CSV_COLUMNS), "md": out_dir / "step.md"}
    atomic_write_text(paths["md"], "# Training-step benchmark\n\n" + step_summary_table(result))
    return paths
