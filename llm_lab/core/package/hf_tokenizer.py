"""Tokenizers across the Hugging Face border: ours as ``tokenizer.json`` + its config files, and theirs read back.

* Export (:func:`write_hf_tokenizer`): a ``SubwordTokenizer`` as byte-level BPE, a ``CharTokenizer`` as a
  ``WordLevel`` model with one piece per character; ``tokenizer_config.json`` and ``special_tokens_map.json`` so
  ``AutoTokenizer`` works and ``decode(encode(text)) == text``.
* Import (:func:`tokenizer_from_hf_dir`): a byte-level BPE ``tokenizer.json`` or GPT-2's ``vocab.json`` +
  ``merges.txt``, refused unless llm-lab encodes a probe text exactly as the original does.

Used by :func:`~llm_lab.core.package.hf_io.export_hf` and :func:`~llm_lab.core.package.hf_io.import_hf`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llm_lab.core.package.layout import PackageError, read_json
from llm_lab.utils.io import atomic_write_json

__all__ = ["tokenizer_from_hf_dir", "write_hf_tokenizer"]

# Text used to check that an imported tokenizer encodes exactly like the original (spaces, digits, accents,
# newlines, punctuation: the places where pre-tokenisation rules differ).
_PROBE_TEXT = "Hello world!  It's 2024:\n\tcafé naïve — 12345 tokens?\n\n  x=y+1; \"quoted\" don't"


def _char_tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    """A ``tokenizers`` WordLevel model that splits text into single characters and joins them back verbatim."""
    vocab = dict(tokenizer.vocab)
    # Our unknown id decodes to U+FFFD, so that character is the WordLevel unknown token. Without an unknown id it
    # is left out of the vocabulary and an unknown character is an encoding error, as in CharTokenizer.
    unk = "\ufffd"
    if tokenizer.unk_token_id is not None:
        if unk in vocab:
            raise PackageError("cannot export a CharTokenizer whose vocabulary holds U+FFFD and an unknown id")
        vocab[unk] = tokenizer.unk_token_id
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        # Every character is its own piece: [\s\S] matches any character, newlines included.
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": False},
        "post_processor": None,
        # Fuse concatenates the pieces with nothing in between (WordLevel's default would insert spaces).
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk},
    }


def write_hf_tokenizer(tokenizer: Any, out: Path, max_length: int) -> None:
    from llm_lab.core.tokenization import CharTokenizer, SubwordTokenizer

    if isinstance(tokenizer, SubwordTokenizer):
        tokenizer.to_hf_tokenizer_json(out / "tokenizer.json")
    elif isinstance(tokenizer, CharTokenizer):
        atomic_write_json(out / "tokenizer.json", _char_tokenizer_json(tokenizer))
    else:
        raise PackageError(f"cannot export a {type(tokenizer).__name__} to a Hugging Face tokenizer.json")
    specials = dict(getattr(tokenizer, "special_tokens", {}) or {})
    eot_id = tokenizer.eot_token_id
    eot = next((t for t, i in specials.items() if i == eot_id), None)
    special_map: dict[str, Any] = {}
    if eot is not None:
        special_map.update(bos_token=eot, eos_token=eot)
    if isinstance(tokenizer, CharTokenizer) and tokenizer.unk_token_id is not None:
        special_map["unk_token"] = "\ufffd"
    extra = [t for t in specials if t not in special_map.values()]
    if extra:
        special_map["additional_special_tokens"] = extra
    atomic_write_json(out / "special_tokens_map.json", special_map)
    atomic_write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": max_length,
            # Keep decode(encode(text)) == text: no clean-up of spaces before punctuation, no BOS added.
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            **special_map,
        },
    )


def _pattern_of(pre_tokenizer: dict[str, Any] | None, where: Path) -> str:
    """The pre-tokenisation regex of a byte-level BPE ``tokenizer.json`` (``"gpt2"`` for ByteLevel's own)."""
    unsupported = PackageError(
        f"{where}: only byte-level BPE tokenizers (GPT-2 style) can be imported; this pre_tokenizer is "
        f"{json.dumps(pre_tokenizer)[:200]}"
    )
    if not isinstance(pre_tokenizer, dict):
        raise unsupported
    if pre_tokenizer.get("type") == "ByteLevel":
        if pre_tokenizer.get("add_prefix_space") or not pre_tokenizer.get("use_regex", True):
            raise PackageError(f"{where}: ByteLevel with add_prefix_space=True or use_regex=False is not supported")
        return "gpt2"
    if pre_tokenizer.get("type") == "Sequence":
        parts = pre_tokenizer.get("pretokenizers") or []
        if (
            len(parts) == 2
            and parts[0].get("type") == "Split"
            and "Regex" in (parts[0].get("pattern") or {})
            and parts[0].get("behavior") == "Isolated"
            and not parts[0].get("invert")
            and parts[1].get("type") == "ByteLevel"
            and not parts[1].get("use_regex", True)
            and not parts[1].get("add_prefix_space")
        ):
            return parts[0]["pattern"]["Regex"]
    raise unsupported


def _tokenizer_from_json(path: Path) -> Any:
    from llm_lab.core.tokenization import SubwordTokenizer
    from llm_lab.core.tokenization.byte_level import token_from_unicode

    data = read_json(path)
    if not isinstance(data, dict):
        raise PackageError(f"{path}: expected a JSON object (a Hugging Face tokenizer.json)")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise PackageError(f"{path}: model type {model.get('type')!r}; only byte-level BPE can be imported")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise PackageError(f"{path}: a SentencePiece-style BPE (byte_fallback / affixes) cannot be imported")
    if data.get("normalizer"):
        raise PackageError(f"{path}: tokenizers with a normalizer cannot be imported")
    pattern = _pattern_of(data.get("pre_tokenizer"), path)
    specials = {t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("special")}
    vocab = {token_from_unicode(tok, str(path)): i for tok, i in model["vocab"].items() if tok not in specials}
    merges = []
    for m in model.get("merges", []):
        left, right = m.split(" ") if isinstance(m, str) else m
        merges.append((token_from_unicode(left, str(path)), token_from_unicode(right, str(path))))
    try:
        return SubwordTokenizer(vocab, merges, specials, pattern)
    except ValueError as e:
        raise PackageError(f"{path}: {e}") from None


def tokenizer_from_hf_dir(hf_dir: Path) -> Any:
    from llm_lab.core.tokenization import SubwordTokenizer

    if (hf_dir / "tokenizer.json").is_file():
        tokenizer = _tokenizer_from_json(hf_dir / "tokenizer.json")
    elif (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
        # GPT-2's slow-tokenizer files; the HF tokenizer_config.json beside them is not ours, so load a copy.
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("vocab.json", "merges.txt"):
                shutil.copy2(hf_dir / name, Path(tmp) / name)
            try:
                tokenizer = SubwordTokenizer.load(tmp)
            except ValueError as e:
                raise PackageError(f"{hf_dir}: cannot read vocab.json + merges.txt ({e})") from None
    else:
        hint = ""
        if (hf_dir / "tokenizer.model").exists():
            hint = " (SentencePiece tokenizer.model files are not supported)"
        raise PackageError(f"{hf_dir}: no tokenizer.json or vocab.json + merges.txt{hint}")
    _check_same_encoding(tokenizer, hf_dir)
    return tokenizer


def _check_same_encoding(tokenizer: Any, hf_dir: Path) -> None:
    """Refuse a tokenizer that llm-lab would encode differently from the original."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        return
    theirs = Tokenizer.from_file(str(path)).encode(_PROBE_TEXT, add_special_tokens=False).ids
    ours = tokenizer.encode(_PROBE_TEXT)
    if theirs != ours:
        raise PackageError(
            f"{path}: llm-lab's byte-level BPE encodes differently from this tokenizer (ids {ours[:8]}... vs "
            f"{theirs[:8]}...); it uses settings that cannot be imported"
        )
