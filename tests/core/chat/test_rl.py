"""GRPO's loop: reward rises on a trivial task, a resumed run is bitwise the straight one, bad configs."""

from __future__ import annotations

import random

import pytest
import torch

from llm_lab.core.chat import ChatTemplate, add_chat_tokens
from llm_lab.core.chat.rl import RL_STATE_FILE, GRPOTrainer, RLConfig
from llm_lab.core.chat.tasks import TASKS, Task, TaskExample
from llm_lab.core.model import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.core.train.metrics import read_metrics


class SayA(Task):
    """Trivial: any prompt, and a reply is right when it starts with "a" (a random model does so ~1 time in 8)."""

    name = "say_a"
    description = "reply starting with a"

    def example(self, rng: random.Random) -> TaskExample:
        return TaskExample(rng.choice(["abc", "cab", "bca"]), "a", "a")

    def extract(self, reply: str) -> str | None:
        return reply[:1] or None


@pytest.fixture
def say_a(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS, "say_a", SayA)


@pytest.fixture
def template() -> ChatTemplate:
    return ChatTemplate(add_chat_tokens(CharTokenizer.from_text("abcd")))


def policy(template: ChatTemplate, seed: int = 0) -> MiniGPT:
    torch.manual_seed(seed)
    config = MiniGPTConfig(vocab_size=template.tokenizer.vocab_size, context_length=16, n_layer=1, n_head=2,
                           n_embd=16)
    return MiniGPT(config).eval()


def config(**kw) -> RLConfig:
    base = dict(task="say_a", prompts_per_step=4, samples_per_prompt=8, max_new_tokens=2, lr=2e-2, max_steps=12,
                eval_interval=4, eval_prompts=16, kl_coef=0.0, seed=1)
    base.update(kw)
    return RLConfig(**base)


def test_reward_rises_on_a_trivial_task(say_a: None, template: ChatTemplate, tmp_path) -> None:
    trainer = GRPOTrainer(policy(template), template, config(), tmp_path)
    rows = trainer.train()
    rewards = [r["reward"] for r in rows if "reward" in r]
    assert sum(rewards[:3]) / 3 < 0.5 and sum(rewards[-3:]) / 3 > 0.9
    assert rows[0]["pass_at_1"] < rows[-1]["pass_at_1"] == 1.0
    logged = read_metrics(tmp_path / "metrics.csv")
    assert [r["step"] for r in logged] == [str(s) for s in range(13)]
    assert [r["step"] for r in logged if r["pass_at_1"]] == ["0", "4", "8", "12"]
    assert all(0 <= float(r["mixed_groups"]) <= 1 for r in logged[1:])


class AnyReply(Task):
    """Every reply is right: every group scores 1, 1, ..., 1 and teaches nothing."""

    name = "any_reply"
    description = "any reply"

    def example(self, rng: random.Random) -> TaskExample:
        return TaskExample(rng.choice(["abc", "cab"]), "a", "a")

    def check(self, example: TaskExample, reply: str) -> bool:
        return True


def test_groups_without_an_advantage_leave_only_the_kl_term(monkeypatch: pytest.MonkeyPatch,
                                                            template: ChatTemplate) -> None:
    """All-equal groups: no mixed group, and the loss is the KL term alone (0 where the policy is its reference)."""
    monkeypatch.setitem(TASKS, "any_reply", AnyReply)
    same = GRPOTrainer(policy(template), template, config(task="any_reply", kl_coef=0.5))
    row = same.train_step()
    assert row["reward"] == 1.0 and row["mixed_groups"] == 0.0 and row["loss"] == 0.0
    away = GRPOTrainer(policy(template), template, config(task="any_reply", kl_coef=0.5),
                       reference=policy(template, seed=3))
    row = away.train_step()
    assert row["mixed_groups"] == 0.0 and row["kl"] > 0 and row["loss"] > 0  # the KL pull, nothing else


def test_a_resumed_run_is_bitwise_the_straight_one(say_a: None, template: ChatTemplate, tmp_path) -> None:
    straight = GRPOTrainer(policy(template), template, config(max_steps=6, eval_interval=3, kl_coef=0.1),
                           tmp_path / "a")
    straight.train()
    first = GRPOTrainer(policy(template), template, config(max_steps=3, eval_interval=3, kl_coef=0.1),
                        tmp_path / "b")
    first.train()
    resumed = GRPOTrainer(policy(template, seed=7), template, config(max_steps=6, eval_interval=3, kl_coef=0.1),
                          tmp_path / "b")
    resumed.resume(tmp_path / "b")
    assert resumed.step == 3
    resumed.train()
    a, b = read_metrics(tmp_path / "a" / "metrics.csv"), read_metrics(tmp_path / "b" / "metrics.csv")
    assert [(r["step"], r["loss"], r["reward"]) for r in a] == [(r["step"], r["loss"], r["reward"]) for r in b]
    for (name, x), y in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_resume_refuses_another_run(say_a: None, template: ChatTemplate, tmp_path) -> None:
    GRPOTrainer(policy(template), template, config(max_steps=1, eval_interval=1), tmp_path).train()
    assert (tmp_path / RL_STATE_FILE).is_file()
    other = GRPOTrainer(policy(template), template, config(seed=2), tmp_path / "x")
    with pytest.raises(ValueError, match=r"written with rl.seed=1, this run has 2"):
        other.resume(tmp_path)
    with pytest.raises(ValueError, match=r"nothing to resume: .*rl_state.pt does not exist"):
        other.resume(tmp_path / "empty")


def test_a_model_without_chat_rows_is_refused(template: ChatTemplate) -> None:
    small = MiniGPT(MiniGPTConfig(vocab_size=4, context_length=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="no rows for the chat tokens"):
        GRPOTrainer(small, template, RLConfig())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task": "chess"}, r"rl.task: unknown task 'chess'"),
        ({"task_settings": {"digits": 40}}, r"rl.task: digits must be an integer in \[1, 18\], got 40"),
        ({"samples_per_prompt": 1}, r"rl.samples_per_prompt must be in \[2, 1024\], got 1"),
        ({"prompts_per_step": 1000, "samples_per_prompt": 100}, r"100000 replies a step; at most 4096"),
        ({"temperature": 0.0}, r"rl.temperature must be in \[0.001, 10\], got 0.0"),
        ({"max_steps": 10**9}, r"rl.max_steps must be in \[1, 1e\+06\]"),
        ({"eval_prompts": 1.5}, r"rl.eval_prompts must be an integer, got 1.5"),
        # the seed range of every seed (llm_lab.utils.seeds), not "[0, 9.22337e+18]"
        ({"seed": 2**70}, r"^rl.seed must be an integer from 0 to 2\*\*63 - 1 \(9223372036854775807\), got 1180591"),
        ({"task_settings": {"letters": 2}}, r"^rl.task: task 'addition' has no setting 'letters'; its settings are: "
         r"digits \(default 3\)$"),
    ],
)
def test_bad_configs_are_refused_by_name(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RLConfig(**settings)
