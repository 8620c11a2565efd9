"""Extra token embeddings from the GPT speedruns (Jordan et al., modded-nanogpt, 2024-2025), each optional.

* :class:`PreviousTokenEmbedding` (``bigram_embedding``): a second table, looked up with the *previous* token's id
  and added to the residual stream next to the token embedding. The first block then sees the bigram
  ``(previous, current)`` directly instead of having to fetch the previous token through attention.
* :class:`ValueEmbeddings` (``value_embeddings``): one table per layer, looked up with the current token's id and
  added to that layer's attention values (Zhou et al., 2024, "Value Residual Learning"; the speedrun's "value
  embeddings"): token identity reaches every layer's values without passing through the residual stream.

Both tables start at zero, so a model with them computes exactly what the plain model computes until training
moves them (and the loss at init stays ``ln(vocab)``).
"""

from __future__ import annotations

import torch
from torch import nn

from llm_lab.core.model.config import MiniGPTConfig

__all__ = ["PreviousTokenEmbedding", "ValueEmbeddings", "previous_tokens"]


def previous_tokens(ids: torch.Tensor, seq_len: int, padding_mask: torch.Tensor | None, none_id: int) -> torch.Tensor:
    """The id before each of the last ``seq_len`` positions of ``ids``, or ``none_id`` where there is none.

    Args:
        ids: ``(B, S)`` ids of the whole sequence so far (the cached prefix and the new tokens).
        seq_len: how many positions at the end to answer for (the new tokens).
        padding_mask: ``(B, S)`` bool, False at padding, or None. A token whose predecessor is padding (the
            first real token of a left-padded row) has no previous token, exactly as in the unpadded sequence.
        none_id: the id that means "no previous token" (the first position of a sequence).

    Returns:
        ``(B, seq_len)`` long ids.
    """
    B, S = ids.shape
    prev = torch.cat([ids.new_full((B, 1), none_id), ids[:, :-1]], dim=1)  # (B, S)
    if padding_mask is not None:
        prev_real = torch.cat([padding_mask.new_zeros(B, 1), padding_mask[:, :-1]], dim=1)
        prev = prev.masked_fill(~prev_real, none_id)
    return prev[:, S - seq_len :]


class PreviousTokenEmbedding(nn.Module):
    """``table[previous id]``, ``(B, T, n_embd)``; row ``vocab_size`` is "no previous token"."""

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        self.none_id = config.vocab_size
        self.weight = nn.Parameter(torch.zeros(config.vocab_size + 1, config.n_embd))

    def forward(self, ids: torch.Tensor, seq_len: int, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Embeddings of the tokens before the last ``seq_len`` of ``ids`` (see :func:`previous_tokens`)."""
        return self.weight[previous_tokens(ids, seq_len, padding_mask, self.none_id)]


class ValueEmbeddings(nn.Module):
    """One ``(vocab_size, n_kv_head * head_dim)`` table per layer; ``forward(ids)`` gives each layer's lookup."""

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        width = config.n_kv_head * config.head_dim  # type: ignore[operator]
        self.weight = nn.Parameter(torch.zeros(config.n_layer, config.vocab_size, width))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(n_layer, B, T, n_kv_head * head_dim)``: layer ``i``'s value embedding of each token."""
        return self.weight[:, ids]
