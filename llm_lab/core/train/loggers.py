"""Where a run's logged rows go: ``metrics.csv`` always, and the trackers people already use when asked.

``train.loggers`` (default ``["csv"]``) names them; :data:`LOGGERS` is the only list of the names:

===============  ==============================================  ===================================
name             writes                                          needs
===============  ==============================================  ===================================
``csv``          ``RUN_DIR/metrics.csv`` (the run's record)      nothing
``tensorboard``  event files under ``RUN_DIR/tensorboard/``      ``pip install 'foundry-llm[tensorboard]'``
``wandb``        Weights & Biases, offline, ``RUN_DIR/wandb/``   ``pip install 'foundry-llm[wandb]'``
===============  ==============================================  ===================================

``csv`` cannot be left out: resuming, ``llm-lab plot``, the run report and the sweep report all read
``metrics.csv``. Each tracker receives the same rows as the CSV, keyed by step. A resumed run continues the same
records: the CSV drops rows after the checkpoint, TensorBoard is told to purge the steps after it
(``purge_step``), and W&B resumes the run with the same id (derived from the run directory).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, ClassVar, Protocol

from llm_lab.core.train.metrics import MetricsLog

__all__ = ["LOGGERS", "RunLogger", "check_loggers", "is_logger_file", "open_loggers"]

# The metrics.csv columns a tracker receives as scalars (step is the x axis; tokens and elapsed_s are included so
# curves can be read against them too).
SCALAR_COLUMNS: tuple[str, ...] = (
    "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_second", "mfu", "tokens", "elapsed_s",
)  # fmt: skip


class RunLogger(Protocol):
    """One destination of logged rows."""

    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {key: float(row[key]) for key in SCALAR_COLUMNS if row.get(key) is not None}


class CsvLogger:
    """``metrics.csv`` (see :class:`~llm_lab.core.train.metrics.MetricsLog`)."""

    package: ClassVar[str | None] = None

    @staticmethod
    def owns(name: str) -> bool:
        """``metrics.csv`` is one of the run's own files (run preparation lists it), not a tracker's."""
        return False

    def __init__(self, run_dir: Path, run_name: str, start_step: int, config: dict[str, Any]) -> None:
        self._log = MetricsLog(run_dir / "metrics.csv", keep_until_step=start_step)

    def write(self, row: dict[str, Any]) -> None:
        self._log.write(row)

    def close(self) -> None:
        self._log.close()


class TensorBoardLogger:
    """TensorBoard event files in ``RUN_DIR/tensorboard/`` (``tensorboard --logdir RUNS`` shows every run)."""

    package: ClassVar[str | None] = "tensorboard"

    @staticmethod
    def owns(name: str) -> bool:
        """Whether ``name`` (relative to the run directory) is a file this logger writes."""
        folder, _, file = name.partition("/")
        return folder == "tensorboard" and "/" not in file and file.startswith("events.out.tfevents.")

    def __init__(self, run_dir: Path, run_name: str, start_step: int, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: steps logged after the checkpoint by an interrupted segment are hidden, as in metrics.csv.
        self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step or None)

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        for key, value in _scalars(row).items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()  # a killed run keeps what it logged, as metrics.csv does

    def close(self) -> None:
        self._writer.close()


class WandbLogger:
    """Weights & Biases in offline mode (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later)."""

    package: ClassVar[str | None] = "wandb"

    @staticmethod
    def owns(name: str) -> bool:
        """Whether ``name`` (relative to the run directory) is a file this logger writes: W&B's own offline tree."""
        return name.startswith("wandb/")

    def __init__(self, run_dir: Path, run_name: str, start_step: int, config: dict[str, Any]) -> None:
        import wandb

        # The same id for every segment of a run, so a resumed run continues its W&B record.
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self._run = wandb.init(
            mode="offline", dir=str(run_dir), name=run_name, id=run_id, resume="allow", config=config
        )

    def write(self, row: dict[str, Any]) -> None:
        self._run.log(_scalars(row), step=int(row["step"]))

    def close(self) -> None:
        self._run.finish()


LOGGERS: dict[str, type[CsvLogger | TensorBoardLogger | WandbLogger]] = {
    "csv": CsvLogger,
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
}


def is_logger_file(name: str) -> bool:
    """Whether ``name`` (a relative POSIX path in a run directory) is a file one of the trackers writes, so that
    ``train --overwrite`` may replace it with the run. ``metrics.csv`` is a run file of its own."""
    return any(cls.owns(name) for cls in LOGGERS.values())


def validate_logger_names(names: Any) -> None:
    """Check ``train.loggers``: known names, no repeats, ``csv`` included (what the config validates).

    Raises:
        ValueError: naming the bad entry and the valid ones.
    """
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"train.loggers must be a list of names from {', '.join(LOGGERS)}, got {names!r}")
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"train.loggers: unknown logger {unknown[0]!r}; choose from: {', '.join(LOGGERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"train.loggers: each logger may appear once, got {list(names)}")
    if "csv" not in names:
        raise ValueError(
            "train.loggers must include 'csv': metrics.csv is the run's record (resume, plots and reports read it)"
        )


def check_loggers(names: Any) -> None:
    """Check that the packages of the named loggers are installed (before a run writes anything).

    Raises:
        ValueError: one line naming the logger, the package and the extra that installs it.
    """
    for name in names:
        package = LOGGERS[name].package
        if package is not None and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"train.loggers asks for {name!r} but the {package} package is not installed; "
                f"pip install 'foundry-llm[{name}]' (or drop {name!r} from train.loggers)"
            )


def open_loggers(names: Any, run_dir: Path, *, start_step: int, config: dict[str, Any]) -> list[RunLogger]:
    """Open every named logger for ``run_dir`` (named after the directory), continuing from ``start_step``."""
    check_loggers(names)
    opened: list[RunLogger] = []
    try:
        for name in names:
            opened.append(LOGGERS[name](run_dir, run_dir.name, start_step, config))
    except BaseException:
        for logger in opened:
            logger.close()
        raise
    return opened
