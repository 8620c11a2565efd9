"""Muon (Jordan et al., 2024, "Muon: MomentUm Orthogonalized by Newton-Schulz") with AdamW for the rest.

Muon updates a weight matrix with the *orthogonalised* momentum of its gradient: the momentum ``M = U S V^T``
is replaced by (approximately) ``U V^T``, every singular value pushed to about 1, so that rare directions of the
gradient move as far as the dominant ones. The orthogonalisation is a few Newton-Schulz iterations of the odd
quintic ``p(X) = a X + b (X X^T) X + c (X X^T)^2 X``, which maps each singular value ``s`` to
``a s + b s^3 + c s^5`` and leaves the singular vectors alone. With Jordan's coefficients
``(3.4445, -4.7750, 2.0315)`` five iterations take any ``s`` in ``(0, 1]`` into roughly ``[0.7, 1.2]``: not
exactly ``U V^T``, which does not hurt training and costs far fewer iterations than the exact fixed point.

Muon only makes sense for the matrices of linear maps inside the blocks. Embedding tables (lookups, one row
per token), the output head, norm gains and biases keep AdamW; one optimizer holds both kinds of groups
(``use_muon`` per group), so the trainer, the grad scaler and checkpoints see a single optimizer.

This implementation differs from ``torch.optim.Muon`` (torch 2.13) on purpose:

* matrices of the same shape are stacked and orthogonalised in one batched matmul per iteration (a small model
  has a handful of shapes; on CPU the per-matrix Python loop and small matmuls dominate otherwise);
* Newton-Schulz runs in bfloat16 or float32 (``ns_dtype``): bf16 is 2.2x faster on a CPU with bf16 matrix
  units (measured: 12 matrices of 128 x 128 and 6 of 128 x 512, five iterations, one thread), but slower on
  CPUs without them, where float32 is the right choice. Both are deterministic, so exact resume holds;
* AdamW groups live in the same optimizer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["NS_COEFFICIENTS", "Muon", "orthogonalize"]

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""Jordan's quintic: the largest slope at 0 (a = 3.4445) that still keeps every singular value in ~[0.7, 1.2]."""


def orthogonalize(
    matrix: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Approximately ``U V^T`` of ``matrix = U S V^T`` by ``steps`` Newton-Schulz iterations, in float32.

    Args:
        matrix: ``(m, n)`` or a stack ``(k, m, n)``; each matrix of a stack is treated on its own.
        steps: iterations of the quintic (5 is Muon's default).
        coefficients: ``(a, b, c)`` of ``a X + b (X X^T) X + c (X X^T)^2 X``.

        dtype: the iteration's dtype (bfloat16 is faster where the hardware multiplies it natively).

    Returns:
        A float32 tensor of ``matrix``'s shape.
    """
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the wide side: X X^T is then the smaller Gram matrix
        x = x.mT
    # Dividing by the Frobenius norm puts every singular value in (0, 1], where the iteration converges.
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT  # (..., m, m)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    x = x.mT if tall else x
    return x.float()


class Muon(torch.optim.Optimizer):
    """Muon for the groups with ``use_muon=True``, AdamW for the others, as one optimizer.

    Group keys: ``lr``, ``weight_decay`` (decoupled, ``p -= lr * wd * p`` in both kinds), ``use_muon``; Muon
    groups also ``momentum``, ``nesterov`` and ``ns_steps``; AdamW groups ``betas`` and ``eps``.

    Muon step for a matrix ``W`` (``rows x cols``) with gradient ``G`` and momentum buffer ``M``::

        M = momentum * M + (1 - momentum) * G
        U = (1 - momentum) * G + momentum * M  if nesterov else M      # Nesterov look-ahead
        W = W - lr * max(1, rows / cols) ** 0.5 * orthogonalize(U)

    The ``max(1, rows / cols) ** 0.5`` factor gives tall matrices (an MLP's down projection seen from its input
    side is wide, its up projection tall) updates of the same per-entry size as square ones.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        *,
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        ns_dtype: torch.dtype = torch.float32,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            betas=betas,
            eps=eps,
            use_muon=False,
        )
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype  # not a group setting: rebuilt from the config on resume, never saved
        for group in self.param_groups:
            if group["use_muon"]:
                for p in group["params"]:
                    if p.dim() != 2:
                        raise ValueError(f"Muon updates 2-D matrices only; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["use_muon"] else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
        by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - beta)
            update = p.grad.lerp(buf, beta) if group["nesterov"] else buf
            by_shape[tuple(p.shape)].append((p, update))
        for shape, items in by_shape.items():  # insertion order: parameter order, so runs repeat exactly
            stacked = torch.stack([u for _, u in items])  # (k, rows, cols)
            ortho = orthogonalize(stacked, group["ns_steps"], dtype=self.ns_dtype)
            scale = lr * math.sqrt(max(1.0, shape[0] / shape[1]))
            for (p, _), o in zip(items, ortho, strict=True):
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(o.to(p.dtype), alpha=-scale)

    def _adamw_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            if wd:
                p.mul_(1 - lr * wd)
            denom = (exp_avg_sq / (1 - beta2**t)).sqrt_().add_(eps)
            p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**t))
