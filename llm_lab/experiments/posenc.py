"""The positional-encoding study: the same model trained with each encoding, then tested at twice its context.

Every run uses the same corpus, split, tokenizer, model shape, training budget and seeds; only
``model.pos_encoding`` changes (by default every entry of ``POSITIONAL_ENCODINGS``, in its order). The study is a
preset of the sweep (:mod:`llm_lab.experiments.sweep`): one setting per encoding, each trained once per seed through
the real training path, so every run is an ordinary run directory (``run.json``, ``metrics.csv``, ``checkpoints/``)
under ``OUT/runs/<encoding>-seed<N>/``, a killed study resumes where it stopped, and the sweep report (mean +- std
over seeds, 95% intervals, Welch's t-test against the first encoding) is written to ``OUT/report/``.

Length extrapolation: after training, encodings that extrapolate (their class says so) are rebuilt with
``max_seq_len = 2 * context_length`` (same weights) and evaluated on validation windows twice as long as in
training. Two numbers: the mean loss over the whole long window (``val_loss_2x``) and over its second half
only, the positions never seen in training (``val_loss_2x_beyond``). Learned positions have no entries past
the context, so their cells are empty.

Outputs under ``OUT``: ``results.csv``, ``results.md`` (one row per encoding: means over the seeds, plus the
number of seeds and the standard deviation of the final validation loss) and ``loss_curves.png`` (every run's train
and validation loss against the step), ``study_config.json``, and the sweep's own files (``sweep.json``,
``report/``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.model.config import POS_ENCODINGS, MiniGPTConfig
from llm_lab.core.model.gpt import MiniGPT
from llm_lab.core.train.config import TrainerConfig
from llm_lab.core.train.device import autocast_context
from llm_lab.core.train.run import PreparedRun
from llm_lab.core.train.run_config import DataConfig, RunConfig, TokenizerSpec, load_run_config
from llm_lab.experiments.sweep import run_sweep
from llm_lab.experiments.sweep_plan import Setting, SweepPlan
from llm_lab.experiments.tables import markdown_table, write_csv
from llm_lab.utils.io import atomic_write_text
from llm_lab.utils.plotting import plot_runs
from llm_lab.utils.words import plural

RESULT_COLUMNS: tuple[str, ...] = (
    "pos_encoding",
    "parameters",
    "steps",
    "tokens",
    "train_loss",
    "val_loss",
    "best_val_loss",
    "val_loss_2x",
    "val_loss_2x_beyond",
    "tokens_per_second",
    "train_time_s",
    "seeds",
    "val_loss_std",
)
HEADERS = {
    "pos_encoding": "encoding",
    "train_loss": "final train loss",
    "val_loss": "final val loss",
    "best_val_loss": "best val loss",
    "val_loss_2x": "val loss @2x ctx",
    "val_loss_2x_beyond": "val loss @2x, 2nd half",
    "tokens_per_second": "tokens/s",
    "train_time_s": "train time (s)",
    "val_loss_std": "final val loss std",
}


def default_study_config() -> RunConfig:
    """The study's default run: a 0.8M-parameter character model (4 layers, 4 heads, 128 wide, context 64).

    The budget (800 steps of 12 x 64 tokens, 0.6M tokens) takes two to three minutes per encoding on one core
    of a busy shared machine (4-6k tokens/s): the five runs took 13 minutes there.
    """
    return RunConfig(
        model=MiniGPTConfig(context_length=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
        train=TrainerConfig(
            batch_size=12, max_steps=800, lr=1e-3, min_lr=1e-4, warmup_steps=50, beta2=0.99, precision="fp32",
            eval_interval=100, eval_batches=20, log_interval=10, device="cpu", seed=1337,
        ),
        tokenizer=TokenizerSpec(type="char"),
        data=DataConfig(val_fraction=0.1),
    )


def quick_study_config() -> RunConfig:
    """A tiny model and budget (seconds per encoding): for tests and ``--quick``."""
    return RunConfig(
        model=MiniGPTConfig(context_length=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
        train=TrainerConfig(
            batch_size=8, max_steps=40, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=20, eval_batches=4,
            log_interval=5, device="cpu", precision="fp32", seed=1337,
        ),
        tokenizer=TokenizerSpec(type="char"),
        data=DataConfig(val_fraction=0.1),
    )


@dataclass
class PosEncStudy:
    """What to run.

    Attributes:
        base: the run config every encoding shares (its ``model.pos_encoding`` is replaced).
        data: the corpus (a text file or a prepared directory).
        out_dir: where the run directories and the results go.
        encodings: which encodings, in order.
        extrapolation_factor: evaluate at this multiple of the training context (2 = twice).
        seeds: train every encoding once per seed (default: the base config's ``train.seed``).
        progress: show progress bars.
    """

    base: RunConfig
    data: Path
    out_dir: Path
    encodings: Sequence[str] = POS_ENCODINGS
    extrapolation_factor: int = 2
    progress: bool = True
    seeds: Sequence[int] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data, self.out_dir = Path(self.data), Path(self.out_dir)
        self.seeds = tuple(self.seeds) if self.seeds is not None else (self.base.train.seed,)
        unknown = [e for e in self.encodings if e not in POS_ENCODINGS]
        if unknown or not self.encodings:
            raise ValueError(
                f"unknown positional encoding(s) {unknown or list(self.encodings)}; choose from: "
                f"{', '.join(POS_ENCODINGS)}"
            )
        if len(set(self.encodings)) != len(self.encodings):
            raise ValueError(f"each encoding may appear once, got {list(self.encodings)}")
        if not isinstance(self.extrapolation_factor, int) or self.extrapolation_factor < 2:
            raise ValueError(f"extrapolation_factor must be an integer of at least 2, got {self.extrapolation_factor}")
        if not self.data.exists():
            raise FileNotFoundError(f"--data {self.data} does not exist (give a text file or a prepared directory)")


def load_study_config(path: str | Path | None, overrides: Sequence[str] = (), quick: bool = False) -> RunConfig:
    """The shared run config: a run-config JSON file if given, else the default (or quick) one, plus overrides."""
    config = load_run_config(path) if path is not None else (quick_study_config() if quick else default_study_config())
    return config.with_overrides(list(overrides))


@torch.no_grad()
def extrapolation_losses(
    model: MiniGPT,
    val_ids: Any,
    factor: int,
    batch_size: int,
    max_batches: int,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Mean validation loss on windows ``factor`` times the training context: whole window and beyond-context part.

    The model's weights are loaded into a copy built with ``max_seq_len = factor * context_length``.

    Returns:
        ``(loss over all positions, loss over positions >= context_length)``.

    Raises:
        ValueError: the encoding cannot run past its context (learned positions), or the validation split has
            no window of the longer length.
    """
    config = model.config
    if not config.extrapolates:
        raise ValueError(f"pos_encoding={config.pos_encoding!r} has no positions past context_length")
    T = config.context_length
    long_config = dataclasses.replace(config, max_seq_len=factor * T)
    long_model = MiniGPT(long_config).to(device)
    long_model.load_state_dict(model.state_dict())
    long_model.eval()
    try:
        data = LanguageModelingDataset(val_ids, factor * T)
    except ValueError as e:
        raise ValueError(f"validation split too short for {factor}x context: {e}") from None
    total = beyond = 0.0
    n_total = n_beyond = 0
    for x, y in data.eval_batches(batch_size, max_batches=max_batches, device=device):
        with autocast_context(precision, torch.device(device)):
            logits, _ = long_model(x)
        losses = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), y, reduction="none"
        )  # (B, factor * T)
        total += losses.sum().item()
        n_total += losses.numel()
        beyond += losses[:, T:].sum().item()
        n_beyond += losses[:, T:].numel()
    return total / n_total, beyond / n_beyond


def extrapolation_results(factor: int, trainer: Any, prepared: PreparedRun) -> dict[str, Any]:
    """The sweep's after-run evaluation for this study: the validation loss at ``factor`` times the context.

    Learned positions have no entries past the context: their results are empty.
    """
    model: MiniGPT = trainer.model
    if not model.config.extrapolates:
        return {"val_loss_2x": None, "val_loss_2x_beyond": None}
    train_config = prepared.config.train
    # The same number of tokens as a training-length evaluation: half as many windows, each twice as long.
    max_batches = max(1, math.ceil(train_config.eval_batches / factor))
    whole, beyond = extrapolation_losses(
        model, prepared.val_data.ids, factor, train_config.batch_size, max_batches,
        precision=trainer.precision, device=trainer.device,
    )  # fmt: skip
    return {"val_loss_2x": whole, "val_loss_2x_beyond": beyond}


def study_plan(study: PosEncStudy) -> SweepPlan:
    """The sweep the study is: one setting per encoding (named by it), every seed, equal steps."""
    settings = [Setting(e, (f"model.pos_encoding={json.dumps(e)}",)) for e in study.encodings]
    return SweepPlan(base=study.base, data=study.data, settings=settings, seeds=study.seeds)


def _mean(values: Sequence[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def study_rows(study: PosEncStudy) -> list[dict[str, Any]]:
    """One row per encoding from the sweep's finished runs: the mean over seeds of every column."""
    from llm_lab.experiments.sweep_report import collect_sweep

    runs = collect_sweep(study.out_dir).rows
    rows = []
    for encoding in study.encodings:
        mine = [row for spec, row in runs if spec.setting.name == encoding]
        if not mine:
            continue
        losses = [r["val_loss"] for r in mine if r["val_loss"] is not None]
        row: dict[str, Any] = {
            "pos_encoding": encoding,
            "parameters": mine[0]["parameters"],
            "steps": mine[0]["steps"],
            "tokens": mine[0]["tokens"],
            "seeds": len(mine),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else None,
            "train_time_s": _mean([r["wall_time_s"] for r in mine]),
        }
        for column in ("train_loss", "val_loss", "best_val_loss", "tokens_per_second"):
            row[column] = _mean([r[column] for r in mine])
        for column in ("val_loss_2x", "val_loss_2x_beyond"):
            row[column] = _mean([r["extra"].get(column) for r in mine])
        rows.append(row)
    return rows


def run_study(study: PosEncStudy) -> dict[str, Path]:
    """Train and evaluate every encoding x seed as a sweep (resuming one that was interrupted), then write the
    results; returns the paths of what was written."""
    from llm_lab.experiments.sweep_report import write_sweep_report

    evaluate = functools.partial(extrapolation_results, study.extrapolation_factor)
    run_sweep(study_plan(study), study.out_dir, progress=study.progress, evaluate=evaluate)
    study.rows = study_rows(study)
    paths = write_study_results(study)
    report = write_sweep_report(study.out_dir, study.out_dir / "report", title="Positional-encoding study")
    return paths | {"report": report["md"]}


def study_table(study: PosEncStudy) -> str:
    """The results as a markdown table."""
    return markdown_table(study.rows, RESULT_COLUMNS, headers=HEADERS, digits=4)


def write_study_results(study: PosEncStudy) -> dict[str, Path]:
    """``results.csv``, ``results.md`` (with the shared settings) and ``loss_curves.png`` under ``out_dir``."""
    out = study.out_dir
    base = study.base
    m, t = base.model, base.train
    factor = study.extrapolation_factor
    summary = (
        f"Corpus: `{study.data}` ({'character' if base.tokenizer.type == 'char' else base.tokenizer.type} "
        f"tokens, last {base.data.val_fraction:.0%} for validation). Model: "
        f"{plural(m.n_layer, 'layer')}, {plural(m.n_head, 'head')}, "
        f"{m.n_embd} wide, context {m.context_length}, {m.norm}, {m.mlp}. Budget: {t.max_steps} steps of "
        f"{t.batch_size} x {m.context_length} tokens, lr {t.lr:g} (warmup {t.warmup_steps}, cosine to "
        f"{t.min_lr:g}), seeds {', '.join(map(str, study.seeds))} (numbers are means over the seeds), precision "
        f"{t.precision}, device {t.device}. Validation: {t.eval_batches} "
        f"batches; at {factor}x context: windows of {factor * m.context_length} tokens (same number of tokens); "
        f"'2nd half' counts only the positions past the training context. Empty cells: learned positions cannot "
        f"run past their table.\n"
    )
    paths = {
        "csv": write_csv(out / "results.csv", study.rows, RESULT_COLUMNS),
        "md": out / "results.md",
        "png": out / "loss_curves.png",
        "config": out / "study_config.json",
    }
    atomic_write_text(paths["md"], "# Positional-encoding study\n\n" + summary + "\n" + study_table(study))
    study_json = base.to_dict() | {"encodings": list(study.encodings), "seeds": list(study.seeds)}
    atomic_write_text(paths["config"], json.dumps(study_json, indent=2))
    labels = {e if len(study.seeds) == 1 else f"{e} seed {s}": out / "runs" / f"{Setting(e).slug}-seed{s}"
              for e in study.encodings for s in study.seeds}  # fmt: skip
    plot_runs(
        {label: run for label, run in labels.items() if (run / "metrics.csv").is_file()},
        paths["png"],
        x_axes=("step",),
        title=f"positional encodings: loss ({m.n_layer}x{m.n_embd}, context {m.context_length})",
    )
    return paths
