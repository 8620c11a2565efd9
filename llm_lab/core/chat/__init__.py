"""From base model to assistant: the chat format, chat tokens for a base model, checkable tasks, and GRPO's loss.

* :mod:`~llm_lab.core.chat.template`: conversations <-> token ids, and the loss mask of what is trained on.
* :mod:`~llm_lab.core.chat.tokens`: the chat's special tokens added to a tokenizer, the model's vocabulary grown.
* :mod:`~llm_lab.core.chat.tasks`: generated tasks whose answers a checker can score (addition, reversed words).
* :mod:`~llm_lab.core.chat.sft`: conversations as padded training batches whose targets are the assistant's tokens.
* :mod:`~llm_lab.core.chat.grpo`: group-normalised advantages and the clipped, KL-penalised policy loss.
"""

from llm_lab.core.chat.sft import ChatDataset
from llm_lab.core.chat.template import CHAT_TEMPLATE, ChatTemplate, RenderedChat, check_messages
from llm_lab.core.chat.tokens import add_chat_tokens, grow_vocab

__all__ = [
    "CHAT_TEMPLATE",
    "ChatDataset",
    "ChatTemplate",
    "RenderedChat",
    "add_chat_tokens",
    "check_messages",
    "grow_vocab",
]
