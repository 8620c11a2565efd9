"""Normalisation layers: LayerNorm and RMSNorm.

* LayerNorm (Ba, Kiros & Hinton, 2016, "Layer Normalization"): subtract the mean, divide by the standard
  deviation, then scale (and shift, when ``bias`` is on). GPT-2 uses it with a bias.
* RMSNorm (Zhang & Sennrich, 2019, "Root Mean Square Layer Normalization"): divide by the root mean square
  only, then scale. Llama uses it; it never has a bias.

Every norm is a :class:`Norm`: the same constructor ``(dim, eps, bias)``, so the config can pick one by name from
``NORMS`` (the only list of their names), and two declarations that the rest of the lab reads instead of matching
names: ``reset_parameters()`` (its starting values, called by ``init_weights``) and ``hf_families`` (the Hugging
Face families whose models use this norm, read by the HF export).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_lab.core.model.registry import lookup

__all__ = ["NORMS", "LayerNorm", "Norm", "RMSNorm", "build_norm"]


class Norm(nn.Module):
    """The base of every norm: constructor ``(dim, eps, bias)`` and what depends on the variant.

    Attributes:
        hf_families: the Hugging Face model families (``"gpt2"``, ``"llama"``) whose norm this is, so that a model
            with it can be exported there. Not inherited: a subclass computes something else, so it is exportable
            only if it declares so itself.
    """

    hf_families: frozenset[str] = frozenset()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "hf_families" not in cls.__dict__:
            cls.hf_families = frozenset()

    def reset_parameters(self) -> None:
        """Set the starting values: gain 1 (and shift 0), the identity transform (see ``init_weights``)."""
        for name, param in self.named_parameters(recurse=False):
            if name == "bias":
                nn.init.zeros_(param)
            else:
                nn.init.ones_(param)


class LayerNorm(Norm):
    """LayerNorm over the last dimension with an optional bias (``torch.nn.LayerNorm`` cannot drop only the bias)."""

    hf_families = frozenset({"gpt2"})

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(Norm):
    """RMSNorm: ``x / sqrt(mean(x**2) + eps) * weight``.

    The statistics are computed in float32 and the result is cast back before the scale, exactly like
    Hugging Face's ``LlamaRMSNorm``, so converted weights give the same numbers in half precision too.
    ``bias`` is accepted for a uniform constructor and ignored: RMSNorm has no shift.
    """

    hf_families = frozenset({"llama"})

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


NORMS: dict[str, type[Norm]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}
"""The only list of norm names: ``MiniGPTConfig.norm`` picks one."""


def build_norm(name: str, dim: int, eps: float, bias: bool) -> Norm:
    """The norm called ``name`` (a key of ``NORMS``)."""
    return lookup(NORMS, "norm", name)(dim, eps=eps, bias=bias)
