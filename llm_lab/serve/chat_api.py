"""``POST /v1/chat/completions``: OpenAI's chat API over the completion machinery.

A chat request is a completion request whose prompt is the rendered conversation: the messages go through the
model's chat template (:class:`~llm_lab.core.chat.template.ChatTemplate`, the same rendering as ``llm-lab chat``
and SFT), the assistant role token is appended, and the result is sent as a token-id prompt with every other field
(``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``n``, ``stream``, ``seed``, the sampling extensions) checked
by the completion schema itself. Generation ends at the turn-end token. The answer is reshaped into OpenAI's chat
form: ``choices[i].message`` (or ``delta`` when streamed, the first chunk carrying the role), and ``logprobs`` as
``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`` when ``logprobs: true`` (with
``top_logprobs: N`` alternatives).

A role token the model generates inside its reply (a small or random model may) is left out of the reply's
``content``, as :meth:`~llm_lab.core.chat.template.ChatTemplate.reply_text` leaves it out for ``llm-lab chat``: the
reply is text the conversation can carry on with (a message may not hold a chat token); ``logprobs`` still list it.

Only a model whose tokenizer holds the chat tokens can chat: another answers 400 naming ``messages``.
"""

from __future__ import annotations

import json
from typing import Any

from llm_lab.core.chat.template import CHAT_SPECIAL_TOKENS, ChatTemplate, check_messages
from llm_lab.serve.errors import APIError

__all__ = ["CHAT_ONLY_FIELDS", "chat_logprobs", "chat_to_completion", "chat_chunk", "chat_response", "reply_content"]

# Fields of a chat request that the completion schema does not take, and completion fields a chat has no use for.
CHAT_ONLY_FIELDS = ("messages", "logprobs", "top_logprobs")
_NOT_IN_CHAT = ("prompt", "echo", "suffix", "best_of")


def chat_to_completion(payload: Any, tokenizer: Any, context_window: int | None = None) -> dict[str, Any]:
    """The completion request body of a chat request body (a parsed JSON object).

    Args:
        payload: the chat request body.
        tokenizer: the model's tokenizer (with the chat tokens).
        context_window: the model's context in tokens; a conversation longer than it once rendered is refused
            (400 naming ``messages``), never truncated: a cut would drop the start of the conversation unseen.

    Raises:
        APIError: 400/422 naming the field: not an object, a bad conversation, a model without chat tokens, a
            conversation longer than the context, a completion-only field, ``top_logprobs`` without ``logprobs``
            or out of range.
    """
    if not isinstance(payload, dict):
        raise APIError(422, "the request body must be a JSON object with 'messages'", code="invalid_value")
    for name in _NOT_IN_CHAT:
        if name in payload:
            raise APIError(422, f"{name}: not a chat completion field (use /v1/completions for it)", param=name,
                           code="invalid_value")
    try:
        messages = check_messages(payload.get("messages"))
    except ValueError as error:
        raise APIError(422, f"messages: {error}", param="messages", code="invalid_value") from None
    try:
        template = ChatTemplate(tokenizer)
    except ValueError:
        raise APIError(400, "messages: this model has no chat format (its tokenizer has no chat tokens); fine-tune "
                       "it on conversations, or use /v1/completions", param="messages", code="not_a_chat_model"
                       ) from None
    try:
        prompt = template.prompt_ids(messages)
    except ValueError as error:
        raise APIError(422, f"messages: {error}", param="messages", code="invalid_value") from None
    if context_window is not None and len(prompt) > context_window:
        raise APIError(400, f"messages: the conversation is {len(prompt)} tokens long once rendered, more than this "
                       f"model's context of {context_window} tokens; it is refused, not truncated: start a new "
                       "conversation or shorten it", param="messages", code="context_length_exceeded")
    wants = payload.get("logprobs", False)
    top = payload.get("top_logprobs")
    if not isinstance(wants, bool):
        raise APIError(422, f"logprobs: expected true or false, got {wants!r}", param="logprobs", code="invalid_value")
    if top is not None and (not wants or isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
        raise APIError(422, "top_logprobs: an integer in [0, 20], with logprobs: true", param="top_logprobs",
                       code="invalid_value")
    body = {k: v for k, v in payload.items() if k not in CHAT_ONLY_FIELDS}
    body["prompt"] = [prompt]
    body["logprobs"] = (top or 0) if wants else None
    return body


def reply_content(text: str) -> str:
    """The reply text without the chat's special tokens (see the module docs)."""
    for token in CHAT_SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text


def chat_logprobs(body: dict[str, list[Any]] | None) -> dict[str, Any] | None:
    """A completion choice's logprobs (``tokens``/``token_logprobs``/``top_logprobs``) in the chat form."""
    if body is None:
        return None
    content = []
    for token, logprob, top in zip(body["tokens"], body["token_logprobs"], body["top_logprobs"], strict=True):
        alternatives = [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in (top or {}).items()]
        content.append({"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8")),
                        "top_logprobs": alternatives})
    return {"content": content}


def chat_response(completion: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed completion response in the chat form."""
    choices = [
        {
            "index": choice["index"],
            "message": {"role": "assistant", "content": reply_content(choice["text"])},
            "logprobs": chat_logprobs(choice.get("logprobs")),
            "finish_reason": choice["finish_reason"],
        }
        for choice in completion["choices"]
    ]
    return {**completion, "id": completion["id"].replace("cmpl-", "chatcmpl-", 1), "object": "chat.completion",
            "choices": choices}


def chat_chunk(line: str, started: set[int]) -> str:
    """One server-sent event of a completion stream in the chat form (``started``: choices whose role was sent)."""
    if not line.startswith("data: {"):
        return line  # [DONE]
    chunk = json.loads(line[len("data: "):])
    if "error" in chunk:
        return line
    choices = []
    for choice in chunk.get("choices", []):
        delta: dict[str, Any] = {}
        if choice["index"] not in started:
            started.add(choice["index"])
            delta["role"] = "assistant"
        if reply_content(choice.get("text") or ""):
            delta["content"] = reply_content(choice["text"])
        choices.append({"index": choice["index"], "delta": delta, "logprobs": chat_logprobs(choice.get("logprobs")),
                        "finish_reason": choice.get("finish_reason")})
    chunk.update(id=chunk["id"].replace("cmpl-", "chatcmpl-", 1), object="chat.completion.chunk", choices=choices)
    return f"data: {json.dumps(chunk)}\n\n"
