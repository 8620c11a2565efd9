"""Normalisation layers: LayerNorm and RMSNorm.

* LayerNorm (Ba, Kiros & Hinton, 2016, "Layer Normalization"): subtract the mean, divide by the standard
  deviation, then scale (and shift, when ``bias`` is on). GPT-2 uses it with a bias.
* RMSNorm (Zhang & Sennrich, 2019, "Root Mean Square Layer Normalization"): divide by the root mean square
  only, then scale. Llama uses it; it never has a bias.

Both take the same constructor ``(dim, eps, bias)`` so the config can pick one by name from ``NORMS``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NORMS", "LayerNorm", "RMSNorm", "build_norm"]


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension with an optional bias (``torch.nn.LayerNorm`` cannot drop only the bias)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm: ``x / sqrt(mean(x**2) + eps) * weight``.

    The statistics are computed in float32 and the result is cast back before the scale, exactly like
    Hugging Face's ``LlamaRMSNorm``, so converted weights give the same numbers in half precision too.
    ``bias`` is accepted for a uniform constructor and ignored: RMSNorm has no shift.
    """

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


NORMS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def build_norm(name: str, dim: int, eps: float, bias: bool) -> nn.Module:
    """The norm called ``name`` (a key of ``NORMS``)."""
    if name not in NORMS:
        raise ValueError(f"norm={name!r} is not supported; choose one of: {', '.join(NORMS)}")
    return NORMS[name](dim, eps=eps, bias=bias)
