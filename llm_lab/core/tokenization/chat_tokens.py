"""The chat format's special tokens and its Jinja template, named once, below every tokenizer.

The tokenizers write ``chat_template`` into their ``tokenizer_config.json`` when they hold these tokens (null when
they do not), so a package carries its template wherever it goes; :mod:`llm_lab.core.chat.template` renders the
same format from token ids.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["CHAT_SPECIAL_TOKENS", "CHAT_TEMPLATE", "END_TOKEN", "ROLES", "ROLE_TOKENS", "chat_template_of"]

ROLES: tuple[str, ...] = ("system", "user", "assistant")
ROLE_TOKENS: dict[str, str] = {role: f"<|{role}|>" for role in ROLES}
END_TOKEN = "<|end|>"
CHAT_SPECIAL_TOKENS: tuple[str, ...] = (*ROLE_TOKENS.values(), END_TOKEN)

# The same format for Jinja renderers (Hugging Face's apply_chat_template, the server's tokenizer_info).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def chat_template_of(special_tokens: Mapping[str, int]) -> str | None:
    """:data:`CHAT_TEMPLATE` for a tokenizer whose special tokens hold every chat token, else None."""
    return CHAT_TEMPLATE if all(token in special_tokens for token in CHAT_SPECIAL_TOKENS) else None
