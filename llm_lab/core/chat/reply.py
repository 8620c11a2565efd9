"""Assistant replies from a chat model: one conversation, or many prompts scored by a task's checker.

:func:`reply` is what ``llm-lab chat`` and the chat endpoint run: render the conversation, append the assistant
role token, decode until the turn-end token (or ``max_new_tokens``), and return the reply's text.
:func:`score_task` is what ``llm-lab eval --task-file`` and the RL loop's pass@1 run: greedy replies to each
example's prompt, batched, and the share the task's checker accepts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from llm_lab.core.chat.tasks import Task, TaskExample, make_task, read_task_file
from llm_lab.core.chat.template import ChatTemplate
from llm_lab.core.decode import generate
from llm_lab.core.tokenization.chat_tokens import chat_template_of

__all__ = ["TaskScore", "reply", "reply_ids", "score_task", "score_task_file"]


def reply_ids(
    model: nn.Module,
    template: ChatTemplate,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """Reply ids for each rendered prompt, ending with the turn-end id where the model ended its turn.

    ``generate_kwargs`` go to :func:`~llm_lab.core.decode.generate` (sampling settings, ``seed``, ...).
    """
    out = generate(model, [list(p) for p in prompts], max_new_tokens, eos_token_id=template.end_id,
                   pad_token_id=template.end_id, **generate_kwargs)
    return [ids + [template.end_id] * (reason == "eos") for ids, reason in zip(out.token_ids, out.finish_reasons,
                                                                               strict=True)]


def reply(model: nn.Module, template: ChatTemplate, messages: Any, max_new_tokens: int, **generate_kwargs: Any) -> str:
    """The assistant's next reply to ``messages`` (a conversation ending with a user message), as text.

    Raises:
        ValueError: a bad conversation (see :func:`~llm_lab.core.chat.template.check_messages`), or one whose last
            message is the assistant's.
    """
    ids = reply_ids(model, template, [template.prompt_ids(messages)], max_new_tokens, **generate_kwargs)[0]
    return template.reply_text(ids)


@dataclass(frozen=True)
class TaskScore:
    """How many of ``total`` examples were answered right, and the replies given."""

    right: int
    total: int
    replies: list[str]

    @property
    def accuracy(self) -> float:
        return self.right / self.total


def score_task(
    model: nn.Module,
    template: ChatTemplate,
    task: Task,
    examples: Sequence[TaskExample],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
) -> TaskScore:
    """Greedy replies to each example's prompt (``batch_size`` a batch) and the share ``task.check`` accepts."""
    if not examples:
        raise ValueError("no examples to score")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    replies: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [template.prompt_ids(ex.prompt_messages()) for ex in chunk]
        replies += [template.reply_text(ids) for ids in reply_ids(model, template, prompts, max_new_tokens,
                                                                  temperature=0.0)]
    right = sum(task.check(ex, r) for ex, r in zip(examples, replies, strict=True))
    return TaskScore(right, len(examples), replies)


def score_task_file(
    model: nn.Module,
    tokenizer: Any,
    path: str | os.PathLike,
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    limit: int | None = None,
) -> TaskScore:
    """Score a model on a task file (``llm-lab data synth``) with the task's checker: greedy replies, accuracy.

    A chat model (its tokenizer holds the chat tokens) answers each prompt as a user turn. A base model, which
    knows no chat format, continues the plain text ``prompt + "\\n"`` and its reply is the first line it writes:
    the same questions, so base, SFT and RL models are scored side by side.

    Args:
        model, tokenizer: the model to score and its tokenizer.
        path: the task file.
        max_new_tokens: the longest reply (default: the longest reference reply's tokens plus 8, within the context).
        batch_size: prompts per generate call.
        limit: score only the first ``limit`` examples.
    """
    task_file = read_task_file(path)
    task = make_task(task_file.task)
    examples = task_file.examples[:limit] if limit else task_file.examples
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer.encode(ex.reply)) for ex in examples) + 8
    if chat_template_of(tokenizer.special_tokens) is not None:
        template = ChatTemplate(tokenizer)
        return score_task(model, template, task, examples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    replies: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        out = generate(model, [tokenizer.encode(ex.prompt + "\n") for ex in chunk], max_new_tokens, temperature=0.0,
                       tokenizer=tokenizer, stop="\n", eos_token_id=tokenizer.eot_token_id)
        replies += out.texts
    right = sum(task.check(ex, r) for ex, r in zip(examples, replies, strict=True))
    return TaskScore(right, len(examples), replies)
