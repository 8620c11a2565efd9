"""Conversations as training batches for supervised fine-tuning (SFT).

:class:`ChatDataset` has the interface of :class:`~llm_lab.core.data.datasets.LanguageModelingDataset`
(``get_batch`` from the trainer's generator, fixed ``eval_batches``, ``check_vocab_size``), so the
:class:`~llm_lab.core.train.trainer.Trainer` trains on it unchanged, resumes exactly (the batches come only from the
generator it saves), and its loss is the loss on assistant tokens only.

A batch holds whole conversations, one per row, right-padded to the longest row of the batch:

    x: the conversation's ids but the last, then ``pad_id``            (B, W)
    y: the ids after each position where the template trains them      (B, W)
       (assistant content and turn ends), ``-100`` everywhere else (prompt, roles, padding)

``lm_loss`` ignores ``-100``, so the mask costs nothing, and the model is causal, so a row's padding on its right
never reaches its real tokens: no conversation attends to another (padding, not packing, is the choice here; the
tests check that a row's logits equal the conversation's alone). A conversation longer than ``context_length + 1``
ids is refused, not truncated: a cut would drop the very answer being trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from llm_lab.core.chat.template import ChatTemplate, RenderedChat, check_messages
from llm_lab.core.model.gpt import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "ChatDataset", "read_conversations", "render_conversations"]

Batch = tuple[torch.Tensor, torch.Tensor]


class ChatDataset:
    """Rendered conversations, drawn whole into right-padded batches with targets on the trained tokens only.

    Args:
        chats: rendered conversations (:meth:`ChatTemplate.render`), each with at least one trained token.
        context_length: the model's context; a conversation may have at most ``context_length + 1`` ids.
        pad_id: the id padding the inputs (any valid id: padded positions have no target and are seen by no real
            position).

    Raises:
        ValueError: no conversation, one too long, or one with nothing to train.
    """

    def __init__(self, chats: Sequence[RenderedChat], context_length: int, pad_id: int) -> None:
        if not chats:
            raise ValueError("no conversations: an SFT dataset needs at least one")
        for i, chat in enumerate(chats):
            if len(chat.ids) > context_length + 1:
                raise ValueError(
                    f"conversation {i} has {len(chat.ids)} tokens, more than context_length + 1 = "
                    f"{context_length + 1}; shorten it or raise model.context_length (conversations are refused, "
                    "not truncated: a cut would drop the answer being trained)"
                )
            if not any(chat.mask[1:]):
                raise ValueError(f"conversation {i} has no assistant token to train on")
        self.chats = list(chats)
        self.context_length = context_length
        self.pad_id = pad_id

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, template: ChatTemplate, context_length: int) -> ChatDataset:
        """Read conversations from JSONL (:func:`read_conversations`) and render them.

        Raises:
            ValueError: as :func:`read_conversations` and :func:`render_conversations`, naming the file and line.
        """
        conversations = read_conversations(path)
        return cls(render_conversations(conversations, template, context_length, path), context_length,
                   template.end_id)

    def __len__(self) -> int:
        return len(self.chats)

    @property
    def num_tokens(self) -> int:
        """Ids in all conversations."""
        return sum(len(chat.ids) for chat in self.chats)

    def check_vocab_size(self, vocab_size: int) -> None:
        """Raise ``ValueError`` unless every id lies in ``[0, vocab_size)``."""
        top = max(max(chat.ids) for chat in self.chats)
        if top >= vocab_size or self.pad_id >= vocab_size:
            raise ValueError(
                f"the conversations hold id {max(top, self.pad_id)}, outside the model's vocabulary [0, {vocab_size}): "
                "has the model grown for the chat tokens (llm_lab.core.chat.grow_vocab)?"
            )

    def _collate(self, indices: Sequence[int], device: torch.device | str | None) -> Batch:
        rows = [self.chats[i] for i in indices]
        width = max(len(chat.ids) for chat in rows) - 1
        x = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for r, chat in enumerate(rows):
            ids = torch.tensor(chat.ids, dtype=torch.long)
            trained = torch.tensor(chat.mask[1:], dtype=torch.bool)
            n = len(chat.ids) - 1
            x[r, :n] = ids[:-1]
            y[r, :n] = ids[1:].masked_fill(~trained, IGNORE_INDEX)
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

    def get_batch(self, batch_size: int, generator: torch.Generator, device: torch.device | str | None = None) -> Batch:
        """``batch_size`` conversations drawn uniformly (only from ``generator``), as ``(x, y)`` ``(B, W)``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        picks = torch.randint(len(self.chats), (batch_size,), generator=generator, device=generator.device)
        return self._collate(picks.tolist(), device)

    def eval_batches(
        self,
        batch_size: int,
        max_batches: int | None = None,
        device: torch.device | str | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Every conversation once, in order, ``batch_size`` a batch (dealt round-robin between ranks)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n_batches = -(-len(self.chats) // batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for b in range(rank, n_batches, world_size):
            yield self._collate(range(b * batch_size, min((b + 1) * batch_size, len(self.chats))), device)

    def __repr__(self) -> str:
        return (
            f"ChatDataset(conversations={len(self)}, num_tokens={self.num_tokens}, "
            f"context_length={self.context_length})"
        )


def read_conversations(path: str | os.PathLike) -> list[tuple[int, list[dict[str, str]]]]:
    """The conversations of a JSONL file, one ``{"messages": [...]}`` object a line (other keys are ignored), each
    with its line number, checked (:func:`~llm_lab.core.chat.template.check_messages`, an assistant turn required).

    Raises:
        ValueError: a line that is not such an object or not a good conversation, naming the file and the line; a
            file with no conversation.
    """
    path = Path(path)
    conversations = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "messages" not in record:
                    raise ValueError("expected an object with 'messages'")
                conversations.append((number, check_messages(record["messages"], need_assistant=True)))
            except (json.JSONDecodeError, ValueError) as exc:
                raise ValueError(f"{path}, line {number}: {exc}") from None
    if not conversations:
        raise ValueError(f"{path}: no conversations")
    return conversations


def render_conversations(
    conversations: Sequence[tuple[int, list[dict[str, str]]]],
    template: ChatTemplate,
    context_length: int,
    path: str | os.PathLike,
) -> list[RenderedChat]:
    """Render numbered conversations (:func:`read_conversations`), refusing one too long by its line."""
    chats = []
    for number, messages in conversations:
        chat = template.render(messages)
        if len(chat.ids) > context_length + 1:
            raise ValueError(
                f"{path}, line {number}: the conversation has {len(chat.ids)} tokens, more than context_length + 1 "
                f"= {context_length + 1}; shorten it or raise model.context_length (conversations are refused, "
                "not truncated: a cut would drop the answer being trained)"
            )
        chats.append(chat)
    return chats
