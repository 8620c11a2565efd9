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

Every MLP is an :class:`MLP` and declares what the rest of the lab needs to know about it, so that nothing there
matches its name: ``residual_projections`` (the layers that write into the residual stream, which ``init_weights``
gives the scaled residual init) and ``hf_activation`` (how Hugging Face's GPT-2 or Llama config names it, read by
the HF export and import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from llm_lab.core.model.registry import lookup

if TYPE_CHECKING:  # config.py imports this module for MLPS
    from llm_lab.core.model.config import MiniGPTConfig

__all__ = ["MLP", "MLPS", "GeluMLP", "GeluTanhMLP", "ReLU2MLP", "SwiGLUMLP", "build_mlp"]


class MLP(nn.Module):
    """The base of every MLP: constructor ``(config)``, ``forward`` ``(B, T, C) -> (B, T, C)``, and declarations.

    Attributes:
        residual_projections: names of this module's ``nn.Linear`` layers whose output is added to the residual
            stream (``init_weights`` gives them ``std / sqrt(2 * n_layer)``, or zeros with ``zero_init_residual``).
        hf_activation: Hugging Face family (``"gpt2"``, ``"llama"``) -> that family's name of this MLP
            (GPT-2's ``activation_function``, Llama's ``hidden_act``); a family missing here cannot hold it. Not
            inherited: a subclass computes something else, so it is exportable only if it declares so itself.
    """

    residual_projections: ClassVar[tuple[str, ...]] = ("down_proj",)
    hf_activation: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "hf_activation" not in cls.__dict__:
            cls.hf_activation = {}


class GeluMLP(MLP):
    """``x -> down_proj(act(up_proj(x)))``; subclasses change only ``activation``."""

    hf_activation = {"gpt2": "gelu"}

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

    hf_activation = {"gpt2": "gelu_new"}

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class ReLU2MLP(GeluMLP):
    """Primer's squared-ReLU MLP."""

    hf_activation = {"gpt2": "relu2"}

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLUMLP(MLP):
    """Llama's gated MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    hf_activation = {"llama": "silu"}

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=config.bias)
        self.up_proj = nn.Linear(config.n_embd, config.hidden_dim, bias=config.bias)
        self.down_proj = nn.Linear(config.hidden_dim, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.fused: nn.Module | None = None  # gate/up as one product, set only on a decode copy

    #: The projections that read the same input, in the order :meth:`project_gate_up` returns them. A decode copy
    #: (:func:`llm_lab.core.decode.fast_linear.prepare_for_decode`) holds them as one product in ``fused``.
    fuse_for_decode: ClassVar[tuple[str, ...]] = ("gate_proj", "up_proj")

    def project_gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``gate_proj(x)`` and ``up_proj(x)``, each ``(B, T, H)``."""
        if self.fused is not None:
            return self.fused(x)
        return self.gate_proj(x), self.up_proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.project_gate_up(x)  # (B, T, H) each
        return self.dropout(self.down_proj(F.silu(gate) * up))  # (B, T, C)


MLPS: dict[str, type[MLP]] = {
    "gelu": GeluMLP,
    "gelu_tanh": GeluTanhMLP,
    "swiglu": SwiGLUMLP,
    "relu2": ReLU2MLP,
}
"""The only list of MLP names: ``MiniGPTConfig.mlp`` picks one."""


def build_mlp(config: MiniGPTConfig) -> MLP:
    """The MLP named by ``config.mlp``."""
    return lookup(MLPS, "mlp", config.mlp)(config)
