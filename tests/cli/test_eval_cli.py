"""`llm-lab eval` and `evaluate_text`: loss, perplexity and bits per byte, checked against hand arithmetic."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from package_helpers import bpe_tokenizer, char_tokenizer, make_package

from llm_lab.cli import main
from llm_lab.core.evaluation import evaluate_text
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer

HELD_OUT = "to be, or not to be: the lazy dog jumps over the quick brown fox.\n" * 3


def uniform_model(vocab_size: int) -> MiniGPT:
    """All logits zero (output head zeroed): every token has probability 1 / vocab_size."""
    model = MiniGPT(MiniGPTConfig(vocab_size=vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=8))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: the embedding is zero too, which does not matter here
    return model


def test_uniform_model_golden_values():
    """A uniform model over V tokens: loss = ln V per token, perplexity = V, and for a character model on ASCII
    text (one byte per token) bits per byte = log2 V. With V = 29 and a 200-char text: 199 predicted tokens,
    loss = ln 29 = 3.3673, bits per byte = log2 29 = 4.8580."""
    text = ("abcdefghijklmnopqrstuvwxyz .\n" * 7)[:200]
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 29
    result = evaluate_text(uniform_model(29), tok, text, batch_size=3)
    assert result.tokens == 199 and result.bytes == 199
    assert result.loss == pytest.approx(math.log(29), rel=1e-6)
    assert result.perplexity == pytest.approx(29, rel=1e-5)
    assert result.bits_per_byte == pytest.approx(math.log2(29), rel=1e-6)
    assert result.total_nll == pytest.approx(199 * math.log(29), rel=1e-6)


def test_bits_per_byte_counts_utf8_bytes():
    """Two-byte characters: 'é' is 2 UTF-8 bytes, so 10 predicted tokens of 'é' are 20 bytes."""
    text = "é" * 11
    tok = CharTokenizer.from_text(text + "a")
    result = evaluate_text(uniform_model(2), tok, text)
    assert (result.tokens, result.bytes) == (10, 20)
    assert result.bits_per_byte == pytest.approx(10 * math.log(2) / math.log(2) / 20)


def test_windows_cover_every_token_once():
    """The summed NLL equals the NLL of each contiguous window computed on its own, full or partial, and every
    token after the first is predicted exactly once."""
    tok = char_tokenizer()
    model = MiniGPT(MiniGPTConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=8))
    model.eval()
    ids = tok.encode(HELD_OUT)
    T = 16
    expected = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, T):
            x = torch.tensor([ids[start : start + T]])
            y = torch.tensor([ids[start + 1 : start + 1 + T]])
            x = x[:, : y.shape[1]]
            expected += float(F.cross_entropy(model(x)[0][0], y[0], reduction="sum"))
    for batch_size in (1, 4, 64):
        result = evaluate_text(model, tok, HELD_OUT, batch_size=batch_size)
        assert result.tokens == len(ids) - 1
        assert result.total_nll == pytest.approx(expected, rel=1e-5)
    shorter = evaluate_text(model, tok, HELD_OUT, context_length=5)
    assert shorter.tokens == len(ids) - 1 and shorter.total_nll != pytest.approx(expected, rel=1e-5)


def test_end_of_text_token_is_prepended_for_bpe():
    """With an end-of-text token every text token is predicted, so the bytes are the whole text's."""
    tok = bpe_tokenizer()
    model = MiniGPT(MiniGPTConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=8))
    result = evaluate_text(model, tok, HELD_OUT)
    assert result.tokens == len(tok.encode(HELD_OUT))
    assert result.bytes == len(HELD_OUT.encode("utf-8"))
    assert result.bits_per_byte == pytest.approx(result.total_nll / math.log(2) / result.bytes)


def test_bad_arguments_are_named():
    tok = char_tokenizer()
    model = MiniGPT(MiniGPTConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="device 'gpu' is not a device name"):
        evaluate_text(model, tok, HELD_OUT, device="gpu")
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        evaluate_text(model, tok, HELD_OUT, batch_size=0)
    with pytest.raises(ValueError, match="max_tokens must be at least 2, got 1"):
        evaluate_text(model, tok, HELD_OUT, max_tokens=1)
    with pytest.raises(ValueError, match=r"context_length=17 is longer than the model accepts \(16\)"):
        evaluate_text(model, tok, HELD_OUT, context_length=17)


def test_eval_cli(capsys, tmp_path):
    tok = bpe_tokenizer()
    path, model = make_package(tmp_path / "pkg", tok)
    data = tmp_path / "heldout.txt"
    data.write_text(HELD_OUT, encoding="utf-8")
    assert main(["eval", str(path), "--data", str(data), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    expected = evaluate_text(model, tok, HELD_OUT)
    assert got == pytest.approx(expected.to_dict(), rel=1e-6)

    assert main(["eval", str(path), "--data", str(data), "--max-tokens", "20", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    limited = evaluate_text(model, tok, HELD_OUT, max_tokens=20)
    assert f"loss           {limited.loss:.4f} nats/token" in out
    assert f"bits per byte  {limited.bits_per_byte:.4f}" in out
    assert "evaluated      20 tokens" in out


def test_eval_cli_misuse(capsys, tmp_path):
    path, _ = make_package(tmp_path / "pkg", char_tokenizer())
    cases = [
        (["eval", str(path), "--data", str(tmp_path / "none.txt")], "none.txt does not exist; give a UTF-8 text file"),
        (["eval", str(tmp_path / "nopkg"), "--data", __file__], "no package or run directory"),
    ]
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    cases.append((["eval", str(path), "--data", str(tmp_path / "latin1.txt")], "not UTF-8 text"))
    (tmp_path / "one.txt").write_text("t")
    cases.append((["eval", str(path), "--data", str(tmp_path / "one.txt")], "at least 2 tokens are needed"))
    (tmp_path / "unknown.txt").write_text("ZZZ")
    cases.append((["eval", str(path), "--data", str(tmp_path / "unknown.txt")], "not in the vocabulary"))
    cases.append(
        (["eval", str(path), "--data", str(tmp_path / "one.txt"), "--context-length", "999"], "longer than the model")
    )
    cases.append((["eval", str(path), "--data", str(tmp_path / "one.txt"), "--device", "gpu0"], "not a device name"))
    cases.append((["eval", str(path), "--data", str(tmp_path)], "is a directory, not a file; give a UTF-8 text file"))
    # harness options were silently ignored with --data (no file was written at --output-path)
    one = str(tmp_path / "one.txt")
    cases.append((["eval", str(path), "--data", one, "--output-path", str(tmp_path / "r.json")],
                  "--output-path does not apply to --data; leave it out; print the result as JSON with --json > FILE"))
    cases.append((["eval", str(path), "--data", one, "--num-fewshot", "2"], "--num-fewshot does not apply to --data"))
    cases.append((["eval", str(path), "--data", one, "--limit", "2"], "--limit does not apply to --data"))
    cases.append((["eval", str(path), "--task-file", str(tmp_path)], "is a directory, not a file; give a task file"))
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("llm-lab: error: ") and fragment in err, err
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(path), "--data", __file__, "--batch-size", "0"])
    assert exc.value.code == 2


def test_eval_cli_dtype_evaluates_the_decode_copy(capsys, tmp_path):
    from llm_lab.core.decode import prepare_for_decode

    tok = bpe_tokenizer()
    path, model = make_package(tmp_path / "pkg", tok)
    data = tmp_path / "heldout.txt"
    data.write_text(HELD_OUT, encoding="utf-8")
    for dtype in ("bf16", "int8"):
        assert main(["eval", str(path), "--data", str(data), "--json", "--dtype", dtype]) == 0
        got = json.loads(capsys.readouterr().out)
        expected = evaluate_text(prepare_for_decode(model, dtype), tok, HELD_OUT)
        assert got == pytest.approx(expected.to_dict(), rel=1e-6)
        assert got["bits_per_byte"] == pytest.approx(evaluate_text(model, tok, HELD_OUT).bits_per_byte, rel=0.02)
