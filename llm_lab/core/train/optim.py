"""Optimizers (a small registry, ``OPTIMIZERS``) and their parameter groups.

``train.optimizer`` picks one:

=========  ==============================================================================================
``adamw``  AdamW for everything, in two weight-decay groups (below).
``muon``   Muon (:mod:`llm_lab.core.train.muon`) for the matrices of the linear layers inside the blocks, at
           ``train.muon_lr``; AdamW at ``train.lr`` for embeddings, the output head, norms and biases.
=========  ==============================================================================================

Each choice declares its groups and each group's hyperparameters, including ``lr_scale``: the group's learning
rate is the schedule's value times ``lr_scale`` (1 for AdamW groups, ``muon_lr / lr`` for Muon's), so one
schedule drives every group. The hyperparameters are re-applied after a checkpoint is loaded, so a resumed run
follows its (possibly changed) config.

AdamW weight-decay groups:

Weight decay pulls weights towards zero. It helps on matrices (linear layers, embeddings), where it limits
the scale of the learned features, but on biases and norm gains (vectors) it only fights the offsets and scales
the model needs, so those get none. The rule is by shape, not by name: every parameter with two or more
dimensions decays, every vector does not. Tied weights appear once (``named_parameters`` deduplicates them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from llm_lab.core.train.schedule import muon_momentum_at

if TYPE_CHECKING:
    from llm_lab.core.train.config import TrainerConfig

__all__ = [
    "OPTIMIZERS",
    "AdamWChoice",
    "MuonChoice",
    "apply_config",
    "build_optimizer",
    "make_optimizer",
    "muon_ns_dtype",
    "muon_param_groups",
    "param_groups",
    "set_step_values",
]


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


def muon_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Three groups: Muon's matrices, then AdamW's decayed tables/head and AdamW's undecayed vectors.

    Muon gets the weights of the ``nn.Linear`` layers inside ``model.blocks`` (attention and MLP projections):
    linear maps whose input and output directions are both meaningful. Everything else keeps AdamW: embedding
    tables (each row is one token's vector, not a map), the output head (its rows are per-token too, and it sits
    outside the residual stream), norm gains, biases and other vectors.

    Raises:
        ValueError: the model has no ``blocks`` (Muon needs to know which matrices are the blocks').
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.Module):
        raise ValueError("train.optimizer='muon' needs a model with .blocks (a MiniGPT); use optimizer='adamw'")
    muon_ids = {
        id(module.weight)
        for module in blocks.modules()
        if isinstance(module, torch.nn.Linear) and module.weight.requires_grad
    }
    muon, decay, no_decay = [], [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in muon_ids:
            muon.append(param)
        else:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": muon, "use_muon": True, "weight_decay": weight_decay},
        {"params": decay, "use_muon": False, "weight_decay": weight_decay},
        {"params": no_decay, "use_muon": False, "weight_decay": 0.0},
    ]


class AdamWChoice:
    """``adamw``: AdamW at ``lr`` over :func:`param_groups` (fused kernel where available)."""

    name: ClassVar[str] = "adamw"

    @staticmethod
    def group_settings(config: TrainerConfig) -> list[dict[str, Any]]:
        betas, eps = (config.beta1, config.beta2), config.eps
        return [
            {"lr_scale": 1.0, "weight_decay": config.weight_decay, "betas": betas, "eps": eps},
            {"lr_scale": 1.0, "weight_decay": 0.0, "betas": betas, "eps": eps},
        ]

    @staticmethod
    def build(
        model: torch.nn.Module, config: TrainerConfig, device: torch.device, fused: bool
    ) -> torch.optim.Optimizer:
        return build_optimizer(
            model,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
            device=device,
            fused=fused,
        )


class MuonChoice:
    """``muon``: Muon at ``muon_lr`` for the blocks' matrices, AdamW at ``lr`` for the rest (one optimizer)."""

    name: ClassVar[str] = "muon"

    @staticmethod
    def group_settings(config: TrainerConfig) -> list[dict[str, Any]]:
        adamw = {"lr_scale": 1.0, "betas": (config.beta1, config.beta2), "eps": config.eps}
        return [
            {
                "lr_scale": config.muon_lr / config.lr,
                "weight_decay": config.weight_decay,
                "momentum": config.muon_momentum,
                "ns_steps": config.muon_ns_steps,
            },
            adamw | {"weight_decay": config.weight_decay},
            adamw | {"weight_decay": 0.0},
        ]

    @staticmethod
    def build(
        model: torch.nn.Module, config: TrainerConfig, device: torch.device, fused: bool
    ) -> torch.optim.Optimizer:
        from llm_lab.core.train.muon import Muon

        return Muon(
            muon_param_groups(model, config.weight_decay),
            lr=config.lr,
            momentum=config.muon_momentum,
            ns_steps=config.muon_ns_steps,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
            ns_dtype=muon_ns_dtype(config.muon_ns_dtype, device),
        )


def muon_ns_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``muon_ns_dtype`` resolved: ``auto`` is bf16 on CUDA and on CPUs with bf16 matrix units, else fp32."""
    if choice == "auto":
        from llm_lab.core.train.precision import cpu_bf16_flags, has_bf16_matrix_units

        fast_bf16 = device.type == "cuda" or (device.type == "cpu" and has_bf16_matrix_units(cpu_bf16_flags()))
        choice = "bf16" if fast_bf16 else "fp32"
    return torch.bfloat16 if choice == "bf16" else torch.float32


OPTIMIZERS = {cls.name: cls for cls in (AdamWChoice, MuonChoice)}
"""The only list of optimizer names: ``train.optimizer`` picks one."""


def apply_config(optimizer: torch.optim.Optimizer, config: TrainerConfig) -> None:
    """Set each group's hyperparameters (and ``lr_scale``) from ``config``; called after building and loading."""
    settings = OPTIMIZERS[config.optimizer].group_settings(config)
    if len(settings) != len(optimizer.param_groups):
        raise ValueError(
            f"the optimizer has {len(optimizer.param_groups)} parameter groups, but train.optimizer="
            f"{config.optimizer!r} has {len(settings)}; was the checkpoint written with another optimizer?"
        )
    for group, values in zip(optimizer.param_groups, settings, strict=True):
        group.update(values)


def make_optimizer(
    model: torch.nn.Module, config: TrainerConfig, device: torch.device, *, fused: bool = True
) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` names, over ``model``'s parameters, with :func:`apply_config` done."""
    optimizer = OPTIMIZERS[config.optimizer].build(model, config, device, fused)
    apply_config(optimizer, config)
    return optimizer


def set_step_values(optimizer: torch.optim.Optimizer, config: TrainerConfig, step: int, lr: float) -> None:
    """Before optimizer step ``step``: each group's ``lr = lr * lr_scale``; Muon groups' warmed-up momentum."""
    momentum = muon_momentum_at(step, momentum=config.muon_momentum, warmup_steps=config.muon_momentum_warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if group.get("use_muon"):
            group["momentum"] = momentum
