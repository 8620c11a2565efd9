"""Giving a base model the chat's tokens: new special ids at the end of the tokenizer, and rows for them in the model.

The new ids come after every existing id, so a base model's ids keep their meaning and its weights carry over.
The model's token embedding and output head (and any other table with one row per token) grow by the new rows,
initialised to the mean of the existing rows: the new tokens start as an "average token", which keeps the first
logits and losses of fine-tuning close to the base model's (a zero or random row would give them an arbitrary
start; Hewitt, 2021, "Initializing new word embeddings for pretrained language models", argues for the mean).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from llm_lab.core.chat.template import CHAT_SPECIAL_TOKENS
from llm_lab.core.model import MiniGPT
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer

__all__ = ["add_chat_tokens", "grow_vocab"]


def add_chat_tokens(tokenizer: Any) -> CharTokenizer | SubwordTokenizer:
    """The tokenizer with the chat's special tokens added (new ids at the end); unchanged if it has them all.

    Raises:
        ValueError: a tokenizer that has some of the chat tokens but not all, or one of another type.
    """
    have = [token for token in CHAT_SPECIAL_TOKENS if token in tokenizer.special_tokens]
    if len(have) == len(CHAT_SPECIAL_TOKENS):
        return tokenizer
    if have:
        raise ValueError(f"the tokenizer has some chat tokens ({have}) but not all; it was not made by add_chat_tokens")
    specials = dict(tokenizer.special_tokens)
    specials.update({token: tokenizer.vocab_size + i for i, token in enumerate(CHAT_SPECIAL_TOKENS)})
    if isinstance(tokenizer, SubwordTokenizer):
        return SubwordTokenizer(tokenizer.vocab, tokenizer.merges, specials, tokenizer.pattern)
    if isinstance(tokenizer, CharTokenizer):
        return CharTokenizer(tokenizer.vocab, tokenizer.unknown, specials)
    raise ValueError(f"cannot add chat tokens to a {type(tokenizer).__name__}; use a char or BPE tokenizer")


def grow_vocab(model: MiniGPT, vocab_size: int) -> MiniGPT:
    """A copy of ``model`` with ``vocab_size`` token ids, the existing rows kept and new rows set to their mean.

    Every parameter with one row per token id (the token embedding, the output head, a bigram table) grows; a tied
    embedding and head stay tied. The model's old ids give the same logits as before (checked by the tests).

    Raises:
        ValueError: ``vocab_size`` smaller than the model's.
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the model's {old}: a vocabulary only grows")
    config = dataclasses.replace(model.config, vocab_size=vocab_size)
    grown = MiniGPT(config).to(next(model.parameters()).device)
    old_state = model.state_dict()
    state = {}
    for name, new in grown.state_dict().items():
        tensor = old_state[name]
        if new.shape != tensor.shape:  # a per-token table: (vocab, ...) rows
            mean_row = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
            extra = mean_row.expand(vocab_size - old, *tensor.shape[1:])
            tensor = torch.cat([tensor, extra], dim=0)
        state[name] = tensor
    grown.load_state_dict(state)
    return grown

