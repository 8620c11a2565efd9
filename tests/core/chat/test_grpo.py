"""GRPO's advantages and loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from llm_lab.core.chat.grpo import group_advantages, grpo_loss, mixed_groups


def test_advantages_are_normalised_within_each_group() -> None:
    """[1, 0, 0, 1]: mean 0.5, population std 0.5 -> [1, -1, -1, 1]; an all-equal group teaches nothing."""
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]), eps=0.0)
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert torch.equal(group_advantages(torch.ones(1, 3)), torch.zeros(1, 3))


def test_only_groups_whose_rewards_differ_are_mixed() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    assert mixed_groups(rewards).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match=r"rewards must be \(prompts, replies\), got \(4,\)"):
        mixed_groups(torch.ones(4))


def test_the_loss_on_a_constructed_batch_equals_the_hand_computed_value() -> None:
    """Two replies, two token slots each; reply 1 has one real token.

    Reply 0 (A = +1): token 0 ratio e^0.1 = 1.105 (inside the clip), token 1 ratio e^0.5 = 1.649 -> clipped to 1.2.
    policy terms: -1.105, -1.2. KL, with ref - logp = d: e^d - d - 1 for d = 0 and d = -0.2.
    Reply 1 (A = -1): token 0 ratio e^-0.5 = 0.607 -> min(0.607 * -1, 0.8 * -1) = -0.8, so the term is +0.8.
    """
    logp = torch.tensor([[-1.0, -2.0], [-1.5, -9.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.5], [-1.0, -9.0]])
    ref = torch.tensor([[-1.0, -2.2], [-1.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = grpo_loss(logp, old, ref, torch.tensor([1.0, -1.0]), mask, clip_eps=0.2, kl_coef=0.5)

    def k3(d: float) -> float:
        return math.exp(d) - d - 1

    reply0 = ((-math.exp(0.1) + 0.5 * k3(0.0)) + (-1.2 + 0.5 * k3(-0.2))) / 2
    reply1 = 0.8 + 0.5 * k3(0.0)
    assert out.loss.item() == pytest.approx((reply0 + reply1) / 2, rel=1e-6)
    assert out.clipped_fraction == pytest.approx(2 / 3)
    assert out.kl == pytest.approx(k3(-0.2) / 3, rel=1e-6)
    out.loss.backward()
    assert logp.grad[1, 1] == 0  # a masked token gets no gradient
    assert logp.grad[0, 1] != 0  # clipped, but its KL term still pulls it


def test_on_policy_the_loss_is_the_policy_gradient() -> None:
    """With logp == old_logp (one step per batch) the ratio is 1: the gradient is -A per token, averaged."""
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    out = grpo_loss(logp, logp.detach(), logp.detach(), torch.tensor([2.0]), torch.ones(1, 3), kl_coef=0.1)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, torch.full((1, 3), -2.0 / 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": torch.tensor([[1, 1], [0, 0]])}, r"reply 1 has no token in mask"),
        ({"advantages": torch.ones(3)}, r"advantages must be \(2,\), one per reply, got \(3,\)"),
        ({"mask": torch.ones(2, 3)}, r"must all be \(replies, tokens\)"),
        ({"kl_coef": -1.0}, r"clip_eps and kl_coef must be >= 0"),
    ],
)
def test_bad_batches_are_refused(kwargs: dict, message: str) -> None:
    args = {"logprobs": torch.zeros(2, 2), "old_logprobs": torch.zeros(2, 2), "ref_logprobs": torch.zeros(2, 2),
            "advantages": torch.ones(2), "mask": torch.ones(2, 2)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        grpo_loss(**args)


def test_rewards_need_groups() -> None:
    with pytest.raises(ValueError, match=r"2\+ replies per prompt, got \(4, 1\)"):
        group_advantages(torch.ones(4, 1))
