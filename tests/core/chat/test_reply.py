"""Chat replies: batched task scoring equals replying one at a time; the template travels with the tokenizer."""

from __future__ import annotations

import json

import torch

from llm_lab.core.chat import CHAT_TEMPLATE, ChatTemplate, add_chat_tokens
from llm_lab.core.chat.reply import reply, score_task
from llm_lab.core.chat.tasks import make_task, synth_examples
from llm_lab.core.model import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer, load_tokenizer


def test_score_task_batched_equals_each_reply_alone() -> None:
    template = ChatTemplate(add_chat_tokens(CharTokenizer.from_text("0123456789 +?=Whatis.")))
    torch.manual_seed(0)
    model = MiniGPT(MiniGPTConfig(vocab_size=template.tokenizer.vocab_size, context_length=48, n_layer=1, n_head=2,
                                  n_embd=16)).eval()
    task = make_task("addition", digits=2)
    examples = list(synth_examples(task, 7, seed=0))
    score = score_task(model, template, task, examples, max_new_tokens=6, batch_size=3)
    alone = [reply(model, template, ex.prompt_messages(), 6, temperature=0.0) for ex in examples]
    assert score.replies == alone
    assert score.total == 7 and score.right == sum(task.check(ex, r) for ex, r in zip(examples, alone, strict=True))


def test_the_chat_template_is_saved_with_the_tokenizer(tmp_path) -> None:
    for name, base in {
        "char": CharTokenizer.from_text("abc"),
        "bpe": SubwordTokenizer.train("some text here " * 5, vocab_size=262, show_progress=False),
    }.items():
        plain = json.loads((base.save(tmp_path / f"{name}-plain") / "tokenizer_config.json").read_text())
        assert plain["chat_template"] is None
        chat = add_chat_tokens(base)
        directory = chat.save(tmp_path / name)
        assert json.loads((directory / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
        assert load_tokenizer(directory).chat_template == CHAT_TEMPLATE
