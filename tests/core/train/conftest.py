"""Tiny models and datasets for the trainer tests (a few thousand parameters, steps of milliseconds)."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.data import LanguageModelingDataset
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.core.train import TrainerConfig

CONTEXT = 16


@pytest.fixture
def char_data(small_text):
    """(train, val, vocab_size) over the self-made text: the last 10% is validation."""
    tok = CharTokenizer.from_text(small_text)
    ids = tok.encode(small_text)
    n_val = len(ids) // 10
    return (
        LanguageModelingDataset(ids[:-n_val], CONTEXT),
        LanguageModelingDataset(ids[-n_val:], CONTEXT),
        tok.vocab_size,
    )


def _tiny_model(vocab_size: int, seed: int = 0, **kw) -> MiniGPT:
    torch.manual_seed(seed)
    return MiniGPT(MiniGPTConfig(vocab_size=vocab_size, context_length=CONTEXT, n_layer=2, n_head=2, n_embd=32, **kw))


def _tiny_config(**kw) -> TrainerConfig:
    base = dict(
        batch_size=8,
        max_steps=12,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        eval_interval=4,
        eval_batches=2,
        log_interval=1,
        precision="fp32",
        device="cpu",
        peak_flops=1e12,
        seed=0,
    )
    base.update(kw)
    return TrainerConfig(**base)


@pytest.fixture
def tiny_model():
    """``tiny_model(vocab_size, seed=0, **model_config)``: a 2-layer, 32-wide MiniGPT seeded for repeatability."""
    return _tiny_model


@pytest.fixture
def tiny_config():
    """``tiny_config(**changes)``: a fast fp32 CPU ``TrainerConfig`` (12 steps, eval every 4, log every step)."""
    return _tiny_config
