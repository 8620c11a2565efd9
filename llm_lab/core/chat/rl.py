"""Reinforcement learning on checkable answers: GRPO over a chat model, one numbered procedure a step.

One step (:meth:`GRPOTrainer.train_step`):

1. draw ``prompts_per_step`` examples of the task (from the seed and the step number only);
2. sample ``samples_per_prompt`` replies to each with the policy (temperature ``temperature``, until the turn end);
3. reward each reply 1 if the task's checker accepts it, else 0;
4. advantages: each reward against its own prompt's group (:func:`~llm_lab.core.chat.grpo.group_advantages`); the
   share of groups whose replies scored differently, the only ones with an advantage, is the ``mixed_groups``
   metric (:func:`~llm_lab.core.chat.grpo.mixed_groups`);
5. one forward of the policy (with gradients) and of the frozen reference model over prompt + reply, the
   log-probabilities of the reply's tokens (its turn end included: stopping is an action too);
6. the GRPO loss (:func:`~llm_lab.core.chat.grpo.grpo_loss`), one clipped AdamW step.

Every ``eval_interval`` steps, pass@1: the share of ``eval_prompts`` held-out prompts (drawn from another stream of the
same seed) answered right by greedy decoding. Rows go to ``metrics.csv`` (:data:`RL_COLUMNS`).

Exact resume: a step's randomness comes only from ``(seed, step)`` (its prompts, its sampling seed, its dropout),
so the state to save is the policy, the optimizer, the step and the reference weights (``rl_state.pt``, written
atomically at every evaluation and at the end); a resumed run gives bitwise the losses of an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from llm_lab.core.chat.grpo import group_advantages, grpo_loss, mixed_groups
from llm_lab.core.chat.reply import reply_ids, score_task
from llm_lab.core.chat.tasks import Task, TaskExample, make_task
from llm_lab.core.chat.template import ChatTemplate
from llm_lab.core.model import MiniGPT
from llm_lab.core.train.checkpoint import load_checkpoint
from llm_lab.core.train.metrics import MetricsLog
from llm_lab.utils.io import atomic_torch_save
from llm_lab.utils.seeds import check_seed

__all__ = ["RL_COLUMNS", "RL_STATE_FILE", "GRPOTrainer", "RLConfig"]

RL_STATE_FILE = "rl_state.pt"
RL_COLUMNS: tuple[str, ...] = (
    "step",
    "reward",
    "mixed_groups",
    "pass_at_1",
    "loss",
    "kl",
    "clipped_fraction",
    "reply_tokens",
    "elapsed_s",
)
MAX_REPLIES_PER_STEP = 4096  # prompts_per_step * samples_per_prompt: one value must not ask for unbounded work
MAX_STEPS = 1_000_000


def _bounded(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"rl.{name} must be in [{low:g}, {high:g}], got {value!r}")


@dataclass
class RLConfig:
    """An RL run's settings (the ``rl`` section of its JSON config).

    Attributes:
        task: the task's name (``llm_lab.core.chat.tasks.TASKS``); ``task_settings`` its keywords (``{"digits": 4}``).
        prompts_per_step: prompts per step; ``samples_per_prompt`` replies to each (the group, at least 2).
        max_new_tokens: the longest reply sampled.
        temperature: the sampling temperature (above 0: the replies of a group must differ to teach anything).
        lr, weight_decay, grad_clip: AdamW's learning rate and weight decay, and the gradient-norm clip.
        kl_coef: the KL penalty's weight, keeping the policy near the reference (SFT) model.
        clip_eps: the policy ratio's clip range (active only when a batch is reused; see ``grpo.py``).
        max_steps: steps to run; ``eval_interval``: steps between pass@1 evaluations on ``eval_prompts`` prompts.
        seed: the run's seed: prompts, samples and dropout of step ``s`` depend on ``(seed, s)`` only.
    """

    json_section: ClassVar[str] = "rl"

    task: str = "addition"
    task_settings: dict[str, Any] = field(default_factory=dict)
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    lr: float = 3e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_coef: float = 0.04
    clip_eps: float = 0.2
    max_steps: int = 50
    eval_interval: int = 10
    eval_prompts: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        self.make_task()  # an unknown task or setting is named here
        for name, low, high in (("prompts_per_step", 1, MAX_REPLIES_PER_STEP), ("samples_per_prompt", 2, 1024),
                                ("max_new_tokens", 1, 1_000_000), ("max_steps", 1, MAX_STEPS),
                                ("eval_interval", 1, MAX_STEPS), ("eval_prompts", 1, 100_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"rl.{name} must be an integer, got {value!r}")
            _bounded(name, value, low, high)
        check_seed(self.seed, "rl.seed")
        if self.prompts_per_step * self.samples_per_prompt > MAX_REPLIES_PER_STEP:
            raise ValueError(
                f"rl.prompts_per_step * rl.samples_per_prompt = {self.prompts_per_step * self.samples_per_prompt} "
                f"replies a step; at most {MAX_REPLIES_PER_STEP}"
            )
        _bounded("temperature", self.temperature, 1e-3, 10.0)
        _bounded("lr", self.lr, 0.0, 1.0)
        _bounded("weight_decay", self.weight_decay, 0.0, 1.0)
        _bounded("grad_clip", self.grad_clip, 0.0, 1e6)
        _bounded("kl_coef", self.kl_coef, 0.0, 1e3)
        _bounded("clip_eps", self.clip_eps, 0.0, 1.0)

    def make_task(self) -> Task:
        """The task, built from ``task`` and ``task_settings``."""
        try:
            return make_task(self.task, **self.task_settings)
        except ValueError as exc:
            raise ValueError(f"rl.task: {exc}") from None


def _step_seed(seed: int, kind: str, step: int) -> int:
    """A 63-bit seed for ``(seed, kind, step)``, stable across runs and machines."""
    return random.Random(f"{kind}:{seed}:{step}").getrandbits(63)


class GRPOTrainer:
    """GRPO on one chat model (module docstring).

    Args:
        model: the policy, a chat model (its vocabulary holds the template's tokens); trained in place.
        template: the chat template of the model's tokenizer.
        config: the run's :class:`RLConfig`.
        out_dir: where ``metrics.csv`` and ``rl_state.pt`` go (None: nothing is written).
        reference: the frozen model the KL term compares with (default: a copy of ``model`` as it is now).
    """

    def __init__(
        self,
        model: MiniGPT,
        template: ChatTemplate,
        config: RLConfig,
        out_dir: str | Path | None = None,
        reference: MiniGPT | None = None,
    ) -> None:
        if max(template.special_ids) >= model.config.vocab_size:
            raise ValueError("the model has no rows for the chat tokens: grow it (llm_lab.core.chat.grow_vocab)")
        self.model, self.template, self.config = model, template, config
        self.task = config.make_task()
        self.reference = copy.deepcopy(model) if reference is None else reference
        self.reference.eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                           betas=(0.9, 0.95))
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._eval_examples = self._examples("eval", 0, config.eval_prompts)

    # ---------------------------------------------------------------------------------------------------- pieces

    def _examples(self, kind: str, step: int, n: int) -> list[TaskExample]:
        rng = random.Random(_step_seed(self.config.seed, kind, step))
        return [self.task.example(rng) for _ in range(n)]

    def pass_at_1(self) -> float:
        """The share of the held-out prompts that greedy decoding answers right."""
        return score_task(self.model, self.template, self.task, self._eval_examples,
                          max_new_tokens=self.config.max_new_tokens).accuracy

    @staticmethod
    def _reply_logprobs(model: MiniGPT, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, _ = model(x)  # (N, W, V)
        return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, targets[..., None])[..., 0]  # (N, W)

    # ------------------------------------------------------------------------------------------------ one step

    def train_step(self) -> dict[str, Any]:
        """One GRPO step (module docstring); returns its metrics row."""
        c, step = self.config, self.step + 1
        examples = self._examples("train", step, c.prompts_per_step)  # 1.
        rendered = [self.template.prompt_ids(ex.prompt_messages()) for ex in examples]
        prompts = [p for p in rendered for _ in range(c.samples_per_prompt)]
        replies = reply_ids(self.model, self.template, prompts, c.max_new_tokens, temperature=c.temperature,  # 2.
                            seed=_step_seed(c.seed, "sample", step))
        rewards = torch.tensor(  # 3.
            [float(self.task.check(examples[i // c.samples_per_prompt], self.template.reply_text(r)))
             for i, r in enumerate(replies)]
        )
        grouped = rewards.view(c.prompts_per_step, c.samples_per_prompt)
        advantages = group_advantages(grouped).flatten()  # 4.
        mixed = float(mixed_groups(grouped).float().mean())
        row = {"step": step, "reward": float(rewards.mean()), "mixed_groups": mixed,
               "reply_tokens": sum(len(r) for r in replies) / len(replies)}

        # 5. prompt + reply, right-padded: x = the ids but the last, targets the ids after, mask on the reply's.
        sequences = [p + r for p, r in zip(prompts, replies, strict=True)]
        width = max(len(s) for s in sequences) - 1
        x = torch.full((len(sequences), width), self.template.end_id, dtype=torch.long)
        targets = torch.zeros_like(x)
        mask = torch.zeros_like(x)
        for i, (p, s) in enumerate(zip(prompts, sequences, strict=True)):
            x[i, : len(s) - 1] = torch.tensor(s[:-1])
            targets[i, : len(s) - 1] = torch.tensor(s[1:])
            mask[i, len(p) - 1 : len(s) - 1] = 1
        device = next(self.model.parameters()).device
        x, targets, mask = x.to(device), targets.to(device), mask.to(device)
        torch.manual_seed(_step_seed(c.seed, "dropout", step))
        self.model.train()
        logprobs = self._reply_logprobs(self.model, x, targets)
        with torch.no_grad():
            ref_logprobs = self._reply_logprobs(self.reference, x, targets)

        out = grpo_loss(logprobs, logprobs.detach(), ref_logprobs, advantages.to(device), mask,  # 6.
                        clip_eps=c.clip_eps, kl_coef=c.kl_coef)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.model.eval()
        self.step = step
        return {**row, "loss": out.loss.item(), "kl": out.kl, "clipped_fraction": out.clipped_fraction}

    # ------------------------------------------------------------------------------------------------ the loop

    def train(self) -> list[dict[str, Any]]:
        """Run to ``max_steps`` (from the current step after :meth:`resume`); the rows of this call."""
        log = None if self.out_dir is None else MetricsLog(self.out_dir / "metrics.csv", self.step, RL_COLUMNS)
        start, rows = time.perf_counter(), []
        try:
            if self.step == 0:
                rows.append({"step": 0, "pass_at_1": self.pass_at_1(), "elapsed_s": 0.0})
                if log:
                    log.write(rows[-1])
            while self.step < self.config.max_steps:
                row = self.train_step()
                if self.step % self.config.eval_interval == 0 or self.step == self.config.max_steps:
                    row["pass_at_1"] = self.pass_at_1()
                row["elapsed_s"] = time.perf_counter() - start
                rows.append(row)
                if log:
                    log.write(row)
                if "pass_at_1" in row:
                    self.save()
        finally:
            if log:
                log.close()
        self.history += rows
        return rows

    def state(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "kind": "rl",
            "rl_config": dataclasses.asdict(self.config),
            "model_config": dataclasses.asdict(self.model.config),
            "model": self.model.state_dict(),
            "reference": self.reference.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
        }

    def save(self) -> None:
        """Write ``rl_state.pt`` (atomically) into ``out_dir``."""
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(self.state(), self.out_dir / RL_STATE_FILE)

    def resume(self, out_dir: str | Path) -> None:
        """Continue the run saved in ``out_dir`` (its policy, reference, optimizer and step).

        Raises:
            ValueError: no state there, one of another kind or model, or another task or seed.
        """
        path = Path(out_dir) / RL_STATE_FILE
        if not path.is_file():
            raise ValueError(f"nothing to resume: {path} does not exist")
        state = load_checkpoint(path)
        if not isinstance(state, dict) or state.get("kind") != "rl":
            raise ValueError(f"{path} is not an RL state file")
        if state.get("model_config") != dataclasses.asdict(self.model.config):
            raise ValueError(f"{path} was written for another model config")
        saved = state.get("rl_config") or {}
        for key in ("task", "task_settings", "seed", "prompts_per_step", "samples_per_prompt"):
            if saved.get(key) != getattr(self.config, key):
                raise ValueError(f"{path} was written with rl.{key}={saved.get(key)!r}, this run has "
                                 f"{getattr(self.config, key)!r}; a resumed run keeps them")
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEPS:
            raise ValueError(f"{path}: step {step!r} is not a step count")
        try:
            self.model.load_state_dict(state["model"])
            self.reference.load_state_dict(state["reference"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise ValueError(f"{path}: the saved weights or optimizer do not fit this model: {first_line}") from None
        self.step = step
