"""The pre-norm Transformer block (GPT-2, Radford et al., 2019; Xiong et al., 2020, "On Layer Normalization
in the Transformer Architecture"): ``x + attn(norm(x))`` then ``x + mlp(norm(x))``. Normalising the input of
each branch instead of the residual stream keeps gradients well scaled without learning-rate warm-up tricks.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_lab.core.model.attention import CausalSelfAttention
from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.kv_cache import KVCache
from llm_lab.core.model.mlp import build_mlp
from llm_lab.core.model.norms import build_norm
from llm_lab.core.model.trace import ForwardTrace

__all__ = ["Block"]


class Block(nn.Module):
    """One pre-norm residual block: attention, then MLP."""

    def __init__(self, config: MiniGPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = build_norm(config.norm, config.n_embd, config.norm_eps, config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp_norm = build_norm(config.norm, config.n_embd, config.norm_eps, config.bias)
        self.mlp = build_mlp(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        value_embed: torch.Tensor | None = None,
        trace: ForwardTrace | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask, rotary, cache, value_embed, trace)  # (B, T, C)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, C)
