"""The chat format: conversations as token ids, with the mask of what an assistant is trained on.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}`` in the form the
OpenAI API and Hugging Face use. Each message becomes its role token, its content's ordinary tokens and a turn-end
token::

    <|system|>You add numbers.<|end|><|user|>2+3=?<|end|><|assistant|>5<|end|>

The role and turn-end tokens are special tokens of the tokenizer (one id each, never produced by encoding text), so
a user who types ``<|end|>`` cannot end a turn. Rendering works on ids (``[role id] + encode(content) + [end id]``
per message), so it is exact for any tokenizer; :data:`CHAT_TEMPLATE` is the same format as a Jinja template (the
form ``tokenizer_config.json``'s ``chat_template`` and Hugging Face's ``apply_chat_template`` read), and the tests
check that both give the same ids.

What is trained (the loss mask): every content token of an assistant message and the turn-end token closing it,
so the model learns both the answer and when to stop. Role tokens, system and user turns are context only. In a
multi-turn conversation every assistant turn is trained, each seeing the whole conversation before it.

To generate a reply, render the conversation so far and append the assistant role token
(:meth:`ChatTemplate.prompt_ids`), then decode until the turn-end id (:attr:`ChatTemplate.end_id`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llm_lab.core.tokenization.chat_tokens import CHAT_SPECIAL_TOKENS, CHAT_TEMPLATE, END_TOKEN, ROLE_TOKENS, ROLES

__all__ = [
    "CHAT_SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "END_TOKEN",
    "ROLES",
    "ROLE_TOKENS",
    "ChatTemplate",
    "Message",
    "RenderedChat",
    "check_messages",
]

Role = Literal["system", "user", "assistant"]

Message = Mapping[str, Any]


def check_messages(messages: Any, *, need_assistant: bool = False) -> list[dict[str, str]]:
    """Validate a conversation and return it as plain dicts.

    Args:
        messages: a list of ``{"role": ..., "content": ...}`` mappings.
        need_assistant: refuse a conversation without an assistant turn (training data needs one).

    Raises:
        ValueError: not a list, an empty conversation, a message that is not a mapping, an unknown role, content
            that is not a string or that contains one of the chat's special tokens, a system message after the
            first position, or (with ``need_assistant``) no assistant turn.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} objects, got {type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError("empty conversation: messages has no message")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {i} must be an object with 'role' and 'content', got {type(message).__name__}")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise ValueError(f"message {i} has unknown field(s) {extra}; a message has 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i} has unknown role {role!r}; roles are {list(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message {i} content must be a string, got {type(content).__name__}")
        special = next((token for token in CHAT_SPECIAL_TOKENS if token in content), None)
        if special is not None:
            raise ValueError(f"message {i} content contains the chat token {special!r}, which only the template writes")
        if role == "system" and i > 0:
            raise ValueError(f"message {i} is a system message; only the first message may be one")
        checked.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in checked):
        raise ValueError("the conversation has no assistant message: there is nothing to train on")
    return checked


@dataclass(frozen=True)
class RenderedChat:
    """A rendered conversation: ``ids[i]`` is trained on (predicted with loss) exactly where ``mask[i]`` is 1."""

    ids: list[int]
    mask: list[int]


class ChatTemplate:
    """Render and parse conversations with a tokenizer that has the chat's special tokens.

    Args:
        tokenizer: any llm-lab tokenizer (``encode``, ``decode``, ``special_tokens``) whose ``special_tokens`` hold
            ``<|system|>``, ``<|user|>``, ``<|assistant|>`` and ``<|end|>``.

    Raises:
        ValueError: the tokenizer lacks one of the chat tokens.
    """

    def __init__(self, tokenizer: Any) -> None:
        specials = dict(tokenizer.special_tokens)
        missing = [token for token in CHAT_SPECIAL_TOKENS if token not in specials]
        if missing:
            raise ValueError(
                f"this tokenizer has no chat tokens {missing}; add them first "
                "(llm_lab.core.chat.add_chat_tokens), then grow the model's vocabulary to match"
            )
        self.tokenizer = tokenizer
        self.role_ids: dict[str, int] = {role: specials[token] for role, token in ROLE_TOKENS.items()}
        self.end_id: int = specials[END_TOKEN]
        self._roles_by_id = {i: role for role, i in self.role_ids.items()}
        self.special_ids = frozenset([*self.role_ids.values(), self.end_id])

    def _content_ids(self, content: str) -> list[int]:
        ids = self.tokenizer.encode(content)
        return ids

    def render(self, messages: Any) -> RenderedChat:
        """Token ids of a whole conversation and its loss mask (1 on assistant content and its turn end)."""
        ids: list[int] = []
        mask: list[int] = []
        for message in check_messages(messages):
            content = self._content_ids(message["content"])
            trained = int(message["role"] == "assistant")
            ids += [self.role_ids[message["role"]], *content, self.end_id]
            mask += [0, *([trained] * len(content)), trained]
        return RenderedChat(ids, mask)

    def prompt_ids(self, messages: Any) -> list[int]:
        """Ids to generate the next assistant reply from: the conversation, then the assistant role token.

        Raises:
            ValueError: a bad conversation, or one whose last message is already the assistant's.
        """
        checked = check_messages(messages)
        if checked[-1]["role"] == "assistant":
            raise ValueError("the last message is the assistant's already; a prompt ends with a user message")
        return [*self.render(checked).ids, self.role_ids["assistant"]]

    def parse(self, ids: Sequence[int]) -> list[dict[str, str]]:
        """The conversation that :meth:`render` turned into ``ids`` (exact: ``parse(render(m).ids) == m``).

        Raises:
            ValueError: ids that are not a sequence of rendered turns (naming the position).
        """
        ids = list(ids)
        messages: list[dict[str, str]] = []
        i = 0
        while i < len(ids):
            role = self._roles_by_id.get(ids[i])
            if role is None:
                raise ValueError(f"position {i}: expected a role token, got id {ids[i]}")
            try:
                end = ids.index(self.end_id, i + 1)
            except ValueError:
                raise ValueError(f"position {i}: the {role} turn has no turn-end token") from None
            content = ids[i + 1 : end]
            stray = next((t for t in content if t in self.special_ids), None)
            if stray is not None:
                raise ValueError(f"position {i}: the {role} turn holds the chat token id {stray} before its end")
            messages.append({"role": role, "content": self.tokenizer.decode(content)})
            i = end + 1
        return check_messages(messages)

    def reply_text(self, ids: Sequence[int]) -> str:
        """The text of generated reply ids, up to (not including) the first turn-end token."""
        ids = list(ids)
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        return self.tokenizer.decode([t for t in ids if t not in self.special_ids])
