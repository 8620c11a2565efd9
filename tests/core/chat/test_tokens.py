"""Chat tokens for a base model: new ids at the end, saved with the tokenizer, the model grown with mean rows."""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.chat import add_chat_tokens, grow_vocab
from llm_lab.core.chat.template import CHAT_SPECIAL_TOKENS
from llm_lab.core.model import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer, load_tokenizer


@pytest.mark.parametrize("kind", ["char", "char_unk", "bpe"])
def test_chat_tokens_take_new_ids_at_the_end_and_survive_save_and_load(kind: str, tmp_path) -> None:
    text = "the cat sat on the mat <|end|>\n" * 3
    base = {
        "char": lambda: CharTokenizer.from_text(text),
        "char_unk": lambda: CharTokenizer.from_text(text, unknown="unk"),
        "bpe": lambda: SubwordTokenizer.train(text, vocab_size=270, show_progress=False),
    }[kind]()
    chat = add_chat_tokens(base)
    assert chat.vocab_size == base.vocab_size + 4
    for i, token in enumerate(CHAT_SPECIAL_TOKENS):
        assert chat.special_tokens[token] == base.vocab_size + i
        assert chat.decode([base.vocab_size + i]) == token
    assert chat.encode(text) == base.encode(text)  # old ids keep their meaning
    assert chat.encode("<|end|>") == base.encode("<|end|>")  # typed text never becomes a chat token
    assert add_chat_tokens(chat) is chat
    loaded = load_tokenizer(chat.save(tmp_path / "tok"))
    assert loaded.special_tokens == chat.special_tokens
    assert loaded.encode(text) == chat.encode(text)


def test_char_special_ids_must_follow_the_characters() -> None:
    with pytest.raises(ValueError, match=r"special tokens must be texts of 2\+ characters with the ids 3..3"):
        CharTokenizer({"a": 0, "b": 1, "c": 2}, special_tokens={"<|end|>": 7})


@pytest.mark.parametrize("tie", [True, False])
def test_grow_vocab_keeps_old_logits_and_starts_new_rows_at_the_mean(tie: bool) -> None:
    torch.manual_seed(0)
    config = MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, n_embd=16, tie_embeddings=tie,
                           bigram_embedding=True)
    model = MiniGPT(config).eval()
    grown = grow_vocab(model, 15).eval()
    assert grown.config.vocab_size == 15
    ids = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        old, _ = model(ids)
        new, _ = grown(ids)
    torch.testing.assert_close(new[..., :11], old, rtol=0, atol=1e-6)
    emb = grown.tok_emb.weight.detach()
    torch.testing.assert_close(emb[11:], model.tok_emb.weight.detach().mean(0).expand(4, -1))
    assert (grown.lm_head.weight is grown.tok_emb.weight) == tie


def test_a_vocabulary_only_grows() -> None:
    model = MiniGPT(MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="vocab_size 10 is smaller than the model's 11"):
        grow_vocab(model, 10)
