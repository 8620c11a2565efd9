"""AdamW with weight-decay groups.

Weight decay pulls weights towards zero. It helps on matrices (linear layers, embeddings), where it limits
the scale of the learned features, but on biases and norm gains (vectors) it only fights the offsets and scales
the model needs, so those get none. The rule is by shape, not by name: every parameter with two or more
dimensions decays, every vector does not. Tied weights appear once (``named_parameters`` deduplicates them).
"""

from __future__ import annotations

import torch

__all__ = ["build_optimizer", "param_groups"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``{"params": matrices, "weight_decay": weight_decay}`` and vectors with no decay.

    Group order and parameter order follow ``model.named_parameters()``, so optimizer state dicts line up
    between runs of the same model.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    device: torch.device,
    fused: bool = True,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, using the fused kernel where the device has one.

    The fused implementation (one kernel for the whole update) exists for CUDA, CPU and MPS in recent torch;
    older builds raise, and then the multi-tensor ``foreach`` path is used. ``fused=False`` forces that path
    (sharded FSDP parameters are DTensors, which the fused kernels do not take).
    """
    groups = param_groups(model, weight_decay)
    if fused and device.type in ("cuda", "cpu", "mps"):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass  # no fused kernel for this device / dtype in this torch build
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
