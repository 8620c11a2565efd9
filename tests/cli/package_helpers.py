"""Small packages and run directories for the package/sample/eval/HF command tests."""

from __future__ import annotations

from pathlib import Path

import torch

from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.package.io import save_model_package
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer

TEXT = "the quick brown fox jumps over the lazy dog.\nto be, or not to be: that is the question.\n" * 12

GPT2_LIKE: dict = {}
LLAMA_LIKE: dict = dict(
    pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=1
)


def char_tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


def bpe_tokenizer() -> SubwordTokenizer:
    return SubwordTokenizer.train(TEXT, 300, show_progress=False)


def make_package(path: Path, tokenizer, seed: int = 0, **overrides) -> tuple[Path, MiniGPT]:
    """A random tiny model saved as a package at ``path``."""
    settings = dict(vocab_size=tokenizer.vocab_size, context_length=32, n_layer=2, n_head=4, n_embd=32)
    config = MiniGPTConfig(**(settings | overrides))
    torch.manual_seed(seed)
    model = MiniGPT(config).eval()
    save_model_package(path, config, tokenizer, model, step=3, tokens_seen=300, best_val_loss=3.0)
    return path, model
