"""core/train: ``Trainer`` + ``TrainerConfig``, checkpoints, LR schedule, optimizer groups, precision and devices.

Public entry points::

    from llm_lab.core.train import Trainer, TrainerConfig
    from llm_lab.core.train.checkpoint import load_checkpoint
"""

from llm_lab.core.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from llm_lab.core.train.config import TrainerConfig
from llm_lab.core.train.trainer import EvalResult, NonFiniteLossError, SampleCallback, Trainer, TrainResult

__all__ = [
    "CheckpointError",
    "EvalResult",
    "NonFiniteLossError",
    "SampleCallback",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "load_checkpoint",
    "save_checkpoint",
]
