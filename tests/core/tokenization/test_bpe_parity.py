"""Parity of ``SubwordTokenizer`` with the references: HF ``tokenizers`` and ``tiktoken`` read our saved files.

The references are built from ``vocab.json`` / ``merges.txt`` by their own loaders (HF ``BPE.from_file``, tiktoken's
``data_gym_to_mergeable_bpe_ranks``, which also checks that the two files agree), with the same split regex.
Ids must be identical, not close. Our own export paths (``to_hf_tokenizer_json``, ``to_tiktoken``) are checked
against the same texts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_lab.core.tokenization import SubwordTokenizer

tokenizers = pytest.importorskip("tokenizers")
tiktoken = pytest.importorskip("tiktoken")
tiktoken_load = pytest.importorskip("tiktoken.load")


def hf_from_files(directory: Path) -> tokenizers.Tokenizer:
    """HF byte-level BPE from our GPT-2 files, pre-tokenised with the pattern in tokenizer_config.json."""
    config = json.loads((directory / "tokenizer_config.json").read_text())
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(directory / "vocab.json"),
                                                              str(directory / "merges.txt")))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(config["pattern_regex"]), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = tokenizers.decoders.ByteLevel()
    hf.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                           for s in config["special_tokens"]])
    return hf


def tiktoken_from_files(directory: Path, monkeypatch: pytest.MonkeyPatch) -> tiktoken.Encoding:
    """tiktoken Encoding from our GPT-2 files via tiktoken's own GPT-2 loader (which asserts they agree)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files directly, cache nothing in /tmp
    config = json.loads((directory / "tokenizer_config.json").read_text())
    # clobber_one_byte_tokens: our byte tokens have ids 0..255 in byte order, GPT-2's data-gym order differs.
    ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(
        str(directory / "merges.txt"), str(directory / "vocab.json"), clobber_one_byte_tokens=True
    )
    return tiktoken.Encoding("ours", pat_str=config["pattern_regex"], mergeable_ranks=ranks,
                             special_tokens=config["special_tokens"])


def assert_parity(tok: SubwordTokenizer, directory: Path, texts: dict[str, str], monkeypatch) -> None:
    tok.save(directory)
    hf = hf_from_files(directory)
    tk = tiktoken_from_files(directory, monkeypatch)
    hf_json = tokenizers.Tokenizer.from_file(str(tok.to_hf_tokenizer_json(directory / "tokenizer.json")))
    tk_ours = tok.to_tiktoken()
    for name, text in texts.items():
        ids = tok.encode(text)
        assert tk.encode(text, disallowed_special=()) == ids, f"tiktoken differs on {name}"
        assert tk_ours.encode_ordinary(text) == ids, f"to_tiktoken() differs on {name}"
        assert tok.decode(ids) == text, f"round trip fails on {name}"
        # HF always treats special-token text as special: compare with allowed_special="all".
        ids_special = tok.encode(text, allowed_special="all")
        assert hf.encode(text).ids == ids_special, f"HF tokenizers (from files) differs on {name}"
        assert hf_json.encode(text).ids == ids_special, f"HF tokenizer.json differs on {name}"
        assert tk.encode(text, allowed_special="all") == ids_special, f"tiktoken (specials) differs on {name}"
        assert hf_json.decode(ids_special, skip_special_tokens=False) == text


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_parity_on_stdlib_sources_and_stress_text(pattern, trained, stdlib_texts, stress_text, tmp_path,
                                                  monkeypatch):
    """Train on two stdlib files; compare on all of them (unseen text too) and the Unicode stress string."""
    train_on = [stdlib_texts["json/decoder.py"], stdlib_texts["json/encoder.py"], stress_text]
    tok = trained("stdlib", train_on, 1000, pattern)
    assert tok.vocab_size == 1000
    assert_parity(tok, tmp_path, {**stdlib_texts, "stress": stress_text, "empty": "", "space": " "}, monkeypatch)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_parity_on_small_text(pattern, trained, small_text, stress_text, tmp_path, monkeypatch):
    tok = trained("small", small_text, 300, pattern)
    assert_parity(tok, tmp_path, {"small": small_text, "stress": stress_text}, monkeypatch)


@pytest.mark.slow  # 1 MB through three tokenizers; the small-text and stdlib cases above cover the default suite
@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_parity_on_tiny_shakespeare(pattern, shakespeare_path, trained, stress_text, tmp_path, monkeypatch):
    if shakespeare_path is None:
        pytest.skip("tiny_shakespeare.txt is not present beside the repository")
    tok = trained("shakespeare", shakespeare_path, 4096, pattern)
    text = shakespeare_path.read_text(encoding="utf-8")
    assert_parity(tok, tmp_path, {"tiny_shakespeare": text, "stress": stress_text}, monkeypatch)


def test_custom_pattern_parity(stdlib_texts, tmp_path, monkeypatch):
    pattern = r"""\p{L}+|\p{N}|[^\s\p{L}\p{N}]+|\s+"""  # no space prefixes, single digits
    text = stdlib_texts["json/scanner.py"] + stdlib_texts["json/tool.py"]
    tok = SubwordTokenizer.train(text, 400, pattern=pattern, show_progress=False)
    assert tok.pattern_name == "custom"
    assert_parity(tok, tmp_path, {"scanner+tool": text, "os": stdlib_texts["os.py"]}, monkeypatch)


def test_transformers_fast_tokenizer_loads_tokenizer_json(trained, stdlib_texts, stress_text, tmp_path):
    """GPT-2-style loading through ``transformers``: same ids, same text back, eos = <|endoftext|>."""
    transformers = pytest.importorskip("transformers")
    tok = trained("stdlib", [stdlib_texts["json/decoder.py"], stdlib_texts["json/encoder.py"], stress_text], 1000,
                  "gpt2")
    path = tok.to_hf_tokenizer_json(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    assert fast.eos_token_id == tok.eot_token_id
    assert len(fast) == tok.vocab_size
    for text in (stress_text, stdlib_texts["string.py"]):
        ids = tok.encode(text, allowed_special="all")
        assert fast.encode(text) == ids
        assert fast.decode(ids, clean_up_tokenization_spaces=False) == text
    # A GPT-2 style directory (tokenizer.json + HF tokenizer_config.json) loads with AutoTokenizer.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2TokenizerFast", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "add_prefix_space": False,
    }))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto.encode(stress_text) == tok.encode(stress_text, allowed_special="all")
