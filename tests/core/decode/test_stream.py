"""stream(): text pieces that never split a UTF-8 character, stop strings, per-row endings, parity with generate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_lab.core.decode import StreamChunk, generate, generate_text, stream
from llm_lab.core.model.gpt import MiniGPTConfig

EOS = 255  # never a byte of valid UTF-8


class ByteTokenizer:
    """One token per byte: every multi-byte character is split over several tokens."""

    vocab_size = 256
    eot_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(ids)

    def decode(self, ids: list[int], errors: str = "replace") -> str:
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


class ScriptedModel(nn.Module):
    """Follows the model's forward contract but always predicts the next token of a fixed script per row.

    Row ``b`` continues with ``scripts[b][n - prompt_len]`` where ``n`` is how many tokens it has seen; past the
    script it predicts ``EOS``. The KV cache is advanced like the real model does, so the cache path runs.
    """

    def __init__(self, scripts: list[bytes | list[int]], prompt_len: int, context_length: int = 256) -> None:
        super().__init__()
        self.config = MiniGPTConfig(vocab_size=256, context_length=context_length, n_layer=1, n_head=1, n_embd=8)
        self.scripts = [list(s) for s in scripts]
        self.prompt_len = prompt_len
        self.weight = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, position_ids=None):
        B, T = input_ids.shape
        past = past_key_values.length if past_key_values is not None else 0
        seen = past + T
        logits = torch.full((B, T, 256), -10.0)
        for b in range(B):
            script = self.scripts[b]
            index = seen - self.prompt_len
            logits[b, -1, script[index] if index < len(script) else EOS] = 10.0
        if past_key_values is not None:
            past_key_values.advance(T)
        return logits, past_key_values


TEXT = "héllo wörld → 日本語 😀!"


def test_pieces_never_split_a_character_and_concatenate_to_the_text():
    tok = ByteTokenizer()
    script = TEXT.encode("utf-8")
    model = ScriptedModel([script], prompt_len=2)
    chunks = list(stream(model, [104, 105], 100, tokenizer=tok, eos_token_id=EOS, temperature=0))
    tokens = [c.token_id for c in chunks if c.token_id is not None]
    assert tokens == list(script)
    pieces = [c.text for c in chunks]
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    # The first byte of "é" (0xC3) gives no text yet; its second byte releases the whole character.
    assert [(c.token_id, c.text) for c in chunks[1:3]] == [(0xC3, ""), (0xA9, "é")]
    # The emoji arrives in four tokens and shows up once, complete.
    assert [c.text for c in chunks if c.text == "😀"] == ["😀"]
    assert chunks[-1] == StreamChunk(0, None, "", "eos")


def test_stream_and_generate_agree():
    tok = ByteTokenizer()
    model = ScriptedModel([TEXT.encode("utf-8")], prompt_len=1)
    out = generate(model, [104], 100, tokenizer=tok, eos_token_id=EOS, temperature=0)
    assert out.texts == [TEXT] and out.token_ids == [list(TEXT.encode("utf-8"))] and out.finish_reasons == ["eos"]
    assert generate_text(model, tok, "h", 100, temperature=0) == TEXT


def test_stop_string_cuts_the_text_and_is_never_streamed():
    """ "ST" is held back (it could begin "STOP") and released when " " shows it is not; the text ends before
    the first "STOP"."""
    tok = ByteTokenizer()
    model = ScriptedModel([b"xST yz STOP and more"], prompt_len=1)
    chunks = list(stream(model, [120], 100, tokenizer=tok, stop="STOP", temperature=0))
    assert "".join(c.text for c in chunks) == "xST yz "
    assert [c.text for c in chunks] == ["x", "", "", "ST ", "y", "z", " ", "", "", "", "", ""]
    assert chunks[-1] == StreamChunk(0, None, "", "stop")
    tokens = [c.token_id for c in chunks if c.token_id is not None]
    assert bytes(tokens) == b"xST yz STOP"  # tokens up to the one completing the stop string

    out = generate(model, [120], 100, tokenizer=tok, stop=["and", "STOP"], temperature=0)
    assert out.texts == ["xST yz "] and out.finish_reasons == ["stop"]
    assert generate_text(model, tok, "x", 100, stop="z", temperature=0) == "xST y"


def test_stop_strings_across_a_multibyte_character():
    tok = ByteTokenizer()
    model = ScriptedModel(["a→b→c".encode()], prompt_len=1)
    out = generate(model, [97], 100, tokenizer=tok, stop="b→", eos_token_id=EOS, temperature=0)
    assert out.texts == ["a→"]


def test_rows_finish_independently_in_a_batch():
    """Row 0 hits its stop string, row 1 its end token, row 2 runs out of max_new_tokens; finished rows get
    padding in ``sequences`` and no more chunks."""
    tok = ByteTokenizer()
    scripts = [b"ab!cdefgh", b"xy", b"0123456789"]
    model = ScriptedModel(scripts, prompt_len=1)
    chunks = list(stream(model, [[1], [2], [3]], 6, tokenizer=tok, eos_token_id=EOS, stop="!", temperature=0))
    finals = {c.row: c for c in chunks if c.finish_reason}
    assert {r: c.finish_reason for r, c in finals.items()} == {0: "stop", 1: "eos", 2: "length"}
    texts = ["".join(c.text for c in chunks if c.row == r) for r in range(3)]
    assert texts == ["ab", "xy", "012345"]
    # Each row's final chunk is its last chunk.
    for r in range(3):
        assert [c for c in chunks if c.row == r][-1] is finals[r]

    out = generate(model, [[1], [2], [3]], 6, tokenizer=tok, eos_token_id=EOS, stop="!", pad_token_id=0, temperature=0)
    assert out.texts == texts and out.finish_reasons == ["stop", "eos", "length"]
    assert out.sequences[0, 1:].tolist() == [ord("a"), ord("b"), ord("!"), 0, 0, 0]
    assert out.sequences[1, 1:].tolist() == [ord("x"), ord("y"), EOS, 0, 0, 0]


def test_a_dangling_partial_character_is_flushed_as_replacement():
    tok = ByteTokenizer()
    model = ScriptedModel([b"ok\xe6\x97"], prompt_len=1)  # the first two bytes of a three-byte character
    out = generate(model, [1], 100, tokenizer=tok, eos_token_id=EOS, stop="zz", temperature=0)
    assert out.texts == ["ok\ufffd"]


def test_stream_without_tokenizer_yields_tokens_and_validates_early():
    model = ScriptedModel([b"abc"], prompt_len=1)
    chunks = list(stream(model, [1], 2, temperature=0))
    assert chunks == [StreamChunk(0, 97, ""), StreamChunk(0, 98, ""), StreamChunk(0, None, "", "length")]
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        stream(model, [1], -1)  # raised at the call, before iteration


def test_closing_a_stream_restores_the_model_mode():
    model = ScriptedModel([b"abcdef"], prompt_len=1)
    model.train()
    it = stream(model, [1], 5, temperature=0)
    next(it)
    assert not model.training and not torch.is_inference_mode_enabled()
    it.close()
    assert model.training


def test_real_bpe_tokenizer_pieces_match_decode(small_text):
    """A byte-level BPE tokenizer and a random model: streamed pieces concatenate to decode(token_ids)."""
    from llm_lab.core.model.gpt import MiniGPT
    from llm_lab.core.tokenization import SubwordTokenizer

    tok = SubwordTokenizer.train([small_text + "é→😀 日本"], vocab_size=300)
    model = MiniGPT(MiniGPTConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=1, n_head=2, n_embd=16))
    chunks = list(stream(model, tok.encode("the "), 30, tokenizer=tok, seed=0))
    ids = [c.token_id for c in chunks if c.token_id is not None]
    assert "".join(c.text for c in chunks) == tok.decode(ids)


def test_generate_text_takes_one_prompt_or_a_list():
    tok = ByteTokenizer()
    model = ScriptedModel([b"one", b"two!"], prompt_len=1)
    assert generate_text(model, tok, ["a", "b"], 10, temperature=0) == ["one", "two!"]
    assert generate_text(model, tok, ["a", "b"], 10, temperature=0, stop="!") == ["one", "two"]
    with pytest.raises(ValueError, match="empty prompt: prompt 1 encodes to no tokens"):
        generate_text(model, tok, ["a", ""], 10)
