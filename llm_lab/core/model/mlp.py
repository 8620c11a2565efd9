"""Feed-forward (MLP) variants, picked by ``config.mlp`` from ``MLPS``; all share the constructor ``(config)``.

* ``gelu``: ``down(gelu(up(x)))`` with the exact erf GELU (Hendrycks & Gimpel, 2016, "Gaussian Error Linear
  Units").
* ``gelu_tanh``: the same with GELU's tanh approximation, the one GPT-2 was trained with (``gelu_new`` in
  Hugging Face).
* ``relu2``: squared ReLU (So et al., 2021, "Primer: Searching for Efficient Transformers").
* ``swiglu``: the gated ``down(silu(gate(x)) * up(x))`` (Shazeer, 2020, "GLU Variants Improve Transformer"),
  as in Llama; its three projections are called ``gate_proj``, ``up_proj``, ``down_proj`` like Llama's.

The hidden width is ``config.hidden_dim`` (``mlp_hidden``, default ``4 * n_embd``) for every variant; for a
SwiGLU with the parameter count of a 4x GELU MLP set ``mlp_hidden`` to about ``8/3 * n_embd``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_lab.core.model.config import MiniGPTConfig

__all__ = ["MLPS", "GeluMLP", "GeluTanhMLP", "ReLU2MLP", "SwiGLUMLP", "build_mlp"]


class GeluMLP(nn.Module):
    """``x -> down_proj(act(up_proj(x)))``; subclasses change only ``activation``."""

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.hidden_dim, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.activation(self.up_proj(x))))  # (B, T, C) -> (B, T, H) -> (B, T, C)


class GeluTanhMLP(GeluMLP):
    """GPT-2's MLP: GELU with the tanh approximation."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class ReLU2MLP(GeluMLP):
    """Primer's squared-ReLU MLP."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLUMLP(nn.Module):
    """Llama's gated MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=config.bias)
        self.up_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.hidden_dim, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.fused: nn.Module | None = None  # gate/up as one product, set only on a decode copy

    #: The projections that read the same input, in the order :meth:`project_gate_up` returns them. A decode copy
    #: (:func:`llm_lab.core.decode.fast_linear.prepare_for_decode`) holds them as one product in ``fused``.
    fuse_for_decode: tuple[str, ...] = ("gate_proj", "up_proj")

    def project_gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gate_proj(x)`` and ``up_proj(x)``, each ``(B, T, H)``."""
        if self.fused is not None:
            return self.fused(x)
        return self.gate_proj(x), self.up_proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.project_gate_up(x)  # (B, T, H) each
        return self.dropout(self.down_proj(F.silu(gate) * up))  # (B, T, C)


MLPS: dict[str, type[nn.Module]] = {
    "gelu": GeluMLP,
    "gelu_tanh": GeluTanhMLP,
    "relu2": ReLU2MLP,
    "swiglu": SwiGLUMLP,
}


def build_mlp(config: MiniGPTConfig) -> nn.Module:
    """The MLP named by ``config.mlp``."""
    if config.mlp not in MLPS:
        raise ValueError(f"mlp={config.mlp!r} is not supported; choose one of: {', '.join(MLPS)}")
    return MLPS[config.mlp](config)
