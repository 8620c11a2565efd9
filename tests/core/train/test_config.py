import dataclasses

import pytest

from llm_lab.core.train import TrainerConfig
from llm_lab.utils.config_loader import apply_overrides, config_from_dict, config_to_dict


def test_defaults_round_trip_through_json():
    cfg = TrainerConfig()
    assert TrainerConfig.json_section == "train"
    assert config_from_dict(TrainerConfig, config_to_dict(cfg)) == cfg
    assert cfg.decay_steps == cfg.max_steps
    assert dataclasses.replace(cfg, lr_decay_steps=500).decay_steps == 500


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ({"grad_accum_steps": -1}, r"grad_accum_steps must be a positive integer"),
        # One step is the unit a checkpoint and Ctrl+C wait for: 1e9 micro-batches made a step that never ended.
        ({"grad_accum_steps": 1_000_000_000}, r"grad_accum_steps must be at most 1024 \(one optimizer step sums"),
        ({"warmup_steps": -1}, r"warmup_steps must be a non-negative integer"),
        ({"lr": 0.0}, r"lr must be positive"),
        ({"lr": float("inf")}, r"lr must be a finite number, got inf"),
        ({"min_lr": 0.01, "lr": 0.001}, r"min_lr must be between 0 and lr \(0.001\)"),
        ({"beta2": 1.0}, r"beta2 must be in \[0, 1\)"),
        ({"grad_clip": -1.0}, r"grad_clip must be non-negative \(0 disables clipping\)"),
        ({"precision": "fp8"}, r"precision='fp8' is not supported; choose one of: auto, fp32, bf16, fp16"),
        ({"device": "tpu"}, r"device='tpu' is not supported; choose one of: auto, cpu, cuda, mps"),
        ({"peak_flops": 0.0}, r"peak_flops must be positive or null"),
        ({"lr_decay_steps": 10, "warmup_steps": 20}, r"lr_decay_steps \(10\) must be at least warmup_steps \(20\)"),
        ({"distributed": "zero3"}, r"distributed='zero3' is not supported; choose one of: ddp, fsdp"),
        ({"schedule": "step"}, r"schedule='step' is not supported; choose one of: cosine, wsd, linear"),
        ({"optimizer": "sgd"}, r"optimizer='sgd' is not supported; choose one of: adamw, muon"),
        ({"decay_fraction": 0.0}, r"decay_fraction must be in \(0, 1\]"),
        ({"muon_lr": 0.0}, r"muon_lr must be positive"),
        ({"muon_momentum": 1.0}, r"muon_momentum must be in \[0, 1\)"),
        ({"muon_ns_steps": 0}, r"muon_ns_steps must be a positive integer"),
        ({"muon_ns_steps": 100}, r"muon_ns_steps must be at most 20"),
        ({"muon_momentum_warmup_steps": -1}, r"muon_momentum_warmup_steps must be a non-negative integer"),
        (
            {"optimizer": "muon", "distributed": "fsdp"},
            r"optimizer='muon' does not run under distributed='fsdp' \(Newton-Schulz needs whole matrices",
        ),
    ],
)
def test_bad_values_say_what_to_change(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**changes)


def test_overrides_are_type_checked_and_unknown_keys_listed():
    sections = {"train": TrainerConfig()}
    out = apply_overrides(sections, ["train.max_steps=7", "train.precision=bf16"])
    assert (out["train"].max_steps, out["train"].precision) == (7, "bf16")
    with pytest.raises(ValueError, match=r"train.max_step: unknown key 'max_step'; valid keys for train: batch_size"):
        apply_overrides(sections, ["train.max_step=7"])
    with pytest.raises(ValueError, match=r"max_steps: expected an integer, got 'many'"):
        apply_overrides(sections, ["train.max_steps=many"])


def test_threads_is_a_count_auto_or_unset():
    assert TrainerConfig().threads == "auto"  # like the command line (llm_lab.utils.threads.settle_threads)
    assert TrainerConfig(threads=None).threads is None  # keep the process setting
    assert config_from_dict(TrainerConfig, {"threads": None}).threads is None  # a run saved before: still loads
    assert TrainerConfig(threads="auto").threads == "auto" and TrainerConfig(threads=3).threads == 3
    assert config_from_dict(TrainerConfig, {"threads": "auto"}).threads == "auto"
    assert config_from_dict(TrainerConfig, {"threads": 2}).threads == 2
    for bad in (0, -1, "many"):
        with pytest.raises(ValueError, match=r"threads must be 'auto' or a positive integer"):
            TrainerConfig(threads=bad)


def test_the_config_names_are_the_registries_names():
    """The config's choices are built from the registries: the same names, in the same order."""
    from typing import get_args

    from llm_lab.core.train.config import OptimizerName, ScheduleName
    from llm_lab.core.train.optim import OPTIMIZERS
    from llm_lab.core.train.schedule import SCHEDULES

    assert get_args(OptimizerName) == tuple(OPTIMIZERS)
    assert get_args(ScheduleName) == tuple(SCHEDULES)
