"""GRPO's pieces (Shao et al., 2024, "DeepSeekMath"): group-normalised advantages and the policy loss.

For each prompt, ``K`` replies are sampled and scored by the task's checker. A reply's advantage is its reward
against its own group's: ``(r - mean(group)) / (std(group) + eps)``, so no value network is needed, and a group
whose replies all scored the same (all right or all wrong) teaches nothing (advantage 0): only its KL term acts.
:func:`mixed_groups` tells which groups have an advantage; their share (``mixed_groups`` in the RL metrics) is the
first thing to watch: near 0, the task is too hard (or too easy) for the model and RL has nothing to learn from.

The loss, per reply token ``t`` (only the reply's tokens count, by ``mask``), averaged over each reply's tokens and
then over the replies::

    ratio_t = exp(logp_t - old_logp_t)
    policy_t = -min(ratio_t * A, clip(ratio_t, 1 - clip_eps, 1 + clip_eps) * A)
    kl_t = exp(ref_logp_t - logp_t) - (ref_logp_t - logp_t) - 1      (Schulman's k3 estimator, >= 0)
    loss = mean_replies( sum_t mask_t * (policy_t + kl_coef * kl_t) / sum_t mask_t )

Which keeps the model near the SFT model, and why both: the KL term does, against the frozen SFT (reference) model,
for the whole run; clipping only bounds how far one batch of samples moves the policy when it is reused for more than
one optimiser step (with one step per batch, ``logp == old_logp`` and the ratio is 1, so clipping is inactive and
the loss is the plain policy gradient plus the KL penalty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GRPOLoss", "group_advantages", "grpo_loss", "mixed_groups"]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Advantages of ``rewards`` ``(P, K)`` (``K`` replies to each of ``P`` prompts), normalised within each group.

    Example: rewards ``[[1, 0, 0, 1]]`` have mean 0.5 and (population) std 0.5, so advantages ``[[1, -1, -1, 1]]``
    (up to ``eps``); ``[[1, 1, 1, 1]]`` gives zeros.

    Raises:
        ValueError: ``rewards`` not 2-D with at least 2 replies per prompt.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, replies) with 2+ replies per prompt, got {tuple(rewards.shape)}")
    rewards = rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


def mixed_groups(rewards: torch.Tensor) -> torch.Tensor:
    """``(P,)`` booleans: which groups of ``rewards`` ``(P, K)`` hold different rewards, the only ones that teach.

    Example: ``[[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]`` gives ``[True, False, False]``.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (prompts, replies), got {tuple(rewards.shape)}")
    return (rewards != rewards[:, :1]).any(dim=1)


@dataclass(frozen=True)
class GRPOLoss:
    """The loss and what to log about it: the mean policy term, the mean KL to the reference, the clipped share."""

    loss: torch.Tensor
    policy: float
    kl: float
    clipped_fraction: float


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
) -> GRPOLoss:
    """The GRPO loss (module docstring) for ``N`` replies of ``T`` tokens.

    Args:
        logprobs: ``(N, T)`` log-probabilities of the sampled tokens under the policy being trained (with grad).
        old_logprobs: ``(N, T)`` the same under the policy that sampled them (no grad).
        ref_logprobs: ``(N, T)`` the same under the reference (SFT) model (no grad).
        advantages: ``(N,)`` one per reply (:func:`group_advantages`, flattened).
        mask: ``(N, T)`` 1 on the reply's tokens, 0 on prompt and padding.
        clip_eps: the ratio's clip range.
        kl_coef: the weight of the KL penalty.

    Raises:
        ValueError: shapes that do not match, a reply with no token, a negative ``clip_eps`` or ``kl_coef``.
    """
    if not (logprobs.shape == old_logprobs.shape == ref_logprobs.shape == mask.shape) or logprobs.dim() != 2:
        raise ValueError("logprobs, old_logprobs, ref_logprobs and mask must all be (replies, tokens)")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be ({logprobs.shape[0]},), one per reply, got {tuple(advantages.shape)}")
    if clip_eps < 0 or kl_coef < 0:
        raise ValueError(f"clip_eps and kl_coef must be >= 0, got {clip_eps} and {kl_coef}")
    mask = mask.to(logprobs.dtype)
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError(f"reply {int((lengths == 0).nonzero()[0])} has no token in mask")
    adv = advantages.to(logprobs.dtype)[:, None]  # (N, 1)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    policy = -torch.minimum(ratio * adv, clipped * adv)  # (N, T)
    log_ref_ratio = ref_logprobs - logprobs
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # (N, T), >= 0
    per_reply = ((policy + kl_coef * kl) * mask).sum(dim=1) / lengths
    with torch.no_grad():
        n = mask.sum()
        was_clipped = ((ratio - clipped).abs() > 0).to(mask.dtype) * mask
        stats = (float((policy * mask).sum() / n), float((kl * mask).sum() / n), float(was_clipped.sum() / n))
    return GRPOLoss(per_reply.mean(), *stats)
