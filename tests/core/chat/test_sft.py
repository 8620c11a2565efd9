"""SFT batches: targets only on assistant tokens, no conversation sees another, the Trainer trains and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from llm_lab.core.chat import ChatTemplate, add_chat_tokens, grow_vocab
from llm_lab.core.chat.sft import IGNORE_INDEX, ChatDataset
from llm_lab.core.chat.tasks import make_task, synth_examples
from llm_lab.core.model import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.core.train import Trainer, TrainerConfig

ALPHABET = "0123456789 +?=Whatis.\n"


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    return ChatTemplate(add_chat_tokens(CharTokenizer.from_text(ALPHABET)))


def chats(template: ChatTemplate, n: int, seed: int = 0):
    return [template.render(ex.messages()) for ex in synth_examples(make_task("addition", digits=2), n, seed)]


def model_for(template: ChatTemplate, seed: int = 0, dtype=torch.float32) -> MiniGPT:
    torch.manual_seed(seed)
    config = MiniGPTConfig(vocab_size=template.tokenizer.vocab_size, context_length=32, n_layer=2, n_head=2, n_embd=32)
    return MiniGPT(config).to(dtype)


def test_targets_are_the_next_ids_on_trained_tokens_and_ignored_elsewhere(template: ChatTemplate) -> None:
    data = chats(template, 5)
    x, y = ChatDataset(data, 32, template.end_id).eval_batches(5).__next__()
    width = max(len(c.ids) for c in data) - 1
    assert x.shape == y.shape == (5, width)
    for r, chat in enumerate(data):
        n = len(chat.ids) - 1
        assert x[r, :n].tolist() == chat.ids[:-1]
        expected = [t if m else IGNORE_INDEX for t, m in zip(chat.ids[1:], chat.mask[1:], strict=True)]
        assert y[r, :n].tolist() == expected
        assert (y[r, n:] == IGNORE_INDEX).all() and (x[r, n:] == template.end_id).all()


def test_a_conversation_never_attends_to_another_in_a_batch(template: ChatTemplate) -> None:
    """Each row's logits at its real positions equal the conversation run alone (float64: no rounding slack)."""
    data = chats(template, 6, seed=3)
    model = model_for(template, dtype=torch.float64).eval()
    x, _ = ChatDataset(data, 32, template.end_id).eval_batches(6).__next__()
    with torch.no_grad():
        batched, _ = model(x)
        for r, chat in enumerate(data):
            alone, _ = model(torch.tensor([chat.ids[:-1]]))
            torch.testing.assert_close(batched[r, : len(chat.ids) - 1], alone[0], rtol=1e-12, atol=1e-12)


def tiny_config(**kw) -> TrainerConfig:
    base = dict(batch_size=8, max_steps=30, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_interval=10, eval_batches=2,
                log_interval=1, precision="fp32", device="cpu", peak_flops=1e12, seed=0, threads=None)
    base.update(kw)
    return TrainerConfig(**base)


def test_the_trainer_learns_the_replies_and_resumes_bitwise(template: ChatTemplate, tmp_path) -> None:
    train = ChatDataset(chats(template, 200), 32, template.end_id)
    val = ChatDataset(chats(template, 16, seed=1), 32, template.end_id)
    trainer = Trainer(model_for(template), tiny_config(), train, val, out_dir=tmp_path / "full")
    first = trainer.evaluate().loss
    full = trainer.train()
    assert full.val_loss < first - 1.0

    class Killed(Exception):
        pass

    def kill(model, step):
        raise Killed

    run = tmp_path / "killed"
    cfg = tiny_config(sample_interval=15)
    with pytest.raises(Killed):
        Trainer(model_for(template), cfg, train, val, out_dir=run, sample_callbacks=[kill]).train()
    resumed = Trainer(model_for(template, seed=5), cfg, train, val, out_dir=run)
    resumed.resume(run)
    assert resumed.step == 10  # the last checkpoint before the kill at step 15
    again = resumed.train()
    assert again.val_loss == full.val_loss
    for (name, a), b in zip(trainer.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_grown_base_model_fine_tunes(template: ChatTemplate) -> None:
    """A base model without the chat tokens grows for them, then takes the chat batches."""
    base_tok = CharTokenizer.from_text(ALPHABET)
    torch.manual_seed(0)
    base = MiniGPT(MiniGPTConfig(vocab_size=base_tok.vocab_size, context_length=32, n_layer=1, n_head=2, n_embd=16))
    data = ChatDataset(chats(template, 4), 32, template.end_id)
    with pytest.raises(ValueError, match=r"outside the model's vocabulary \[0, 22\): has the model grown"):
        data.check_vocab_size(base.config.vocab_size)
    grown = grow_vocab(base, template.tokenizer.vocab_size)
    data.check_vocab_size(grown.config.vocab_size)
    x, y = data.eval_batches(4).__next__()
    logits, _ = grown(x)
    assert logits.shape[-1] == 26


def test_jsonl_errors_name_the_line(template: ChatTemplate, tmp_path) -> None:
    good = {"messages": [{"role": "user", "content": "1+2?"}, {"role": "assistant", "content": "3"}]}
    cases = {
        "no_assistant": ({"messages": [{"role": "user", "content": "1+2?"}]}, "the conversation has no assistant"),
        "role": ({"messages": [{"role": "bot", "content": "3"}]}, "message 0 has unknown role 'bot'"),
        "empty": ({"messages": []}, "empty conversation"),
        "shape": ({"text": "1+2=3"}, "expected an object with 'messages'"),
        "long": ({"messages": [{"role": "user", "content": "1" * 40}, {"role": "assistant", "content": "3"}]},
                 r"the conversation has 45 tokens, more than context_length \+ 1 = 33; .* refused, not truncated"),
    }
    for name, (record, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
        with pytest.raises(ValueError, match=rf"{name}.jsonl, line 2: {message}"):
            ChatDataset.from_jsonl(path, template, 32)
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(good) + "\n\n")
    assert len(ChatDataset.from_jsonl(path, template, 32)) == 1
