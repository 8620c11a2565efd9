"""Hugging Face directories <-> packages: ``export_hf(package, out)`` and ``import_hf(hf_dir, out)``.

``export_hf`` writes a directory that ``transformers`` loads with no custom code::

    config.json, model.safetensors     GPT2LMHeadModel (learned positions) or LlamaForCausalLM (RoPE), via
                                       :func:`llm_lab.core.package.hf.to_hf_model`
    generation_config.json             end-of-text id as BOS/EOS/pad
    tokenizer.json                     the tokenizer for HF ``tokenizers`` (byte-level BPE, or a character
                                       vocabulary as a ``WordLevel`` model with one piece per character)
    tokenizer_config.json              ``PreTrainedTokenizerFast`` + special tokens, so ``AutoTokenizer`` works
    special_tokens_map.json

``import_hf`` reads a local GPT-2 or Llama checkpoint directory (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, sharded or not, and a byte-level BPE tokenizer as ``tokenizer.json`` or ``vocab.json`` +
``merges.txt``) and writes a package. Nothing is ever executed from the directory: no remote code, and ``.bin``
files are checked with ``torch.load(weights_only=True)`` before ``transformers`` sees them.

Both write into a temporary directory and rename it into place. ``transformers`` is imported only here.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llm_lab.core.package.io import (
    _commit_directory,
    _temp_directory_beside,
    load_model_package,
    load_state_dict_file,
)
from llm_lab.core.package.io import save_model_package as _save_model_package
from llm_lab.core.package.layout import PackageError, read_json
from llm_lab.utils.io import atomic_write_json

__all__ = ["export_hf", "import_hf"]

_SUPPORTED_MODEL_TYPES = ("gpt2", "llama")
# Text used to check that an imported tokenizer encodes exactly like the original (spaces, digits, accents,
# newlines, punctuation: the places where pre-tokenisation rules differ).
_PROBE_TEXT = "Hello world!  It's 2024:\n\tcafé naïve — 12345 tokens?\n\n  x=y+1; \"quoted\" don't"


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise PackageError(
            'Hugging Face interop needs the `transformers` package: pip install "foundry-llm[hf]"'
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """No progress bars from transformers while saving or loading tiny directories (restored afterwards)."""
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------- export


def _prepare_hf_target(out: Path, overwrite: bool) -> None:
    if out.is_file() or out.is_symlink():
        raise FileExistsError(f"{out} exists and is a file; the export is a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose another path or pass --force")
        if not (out / "config.json").is_file():
            raise FileExistsError(f"{out} is not a Hugging Face model directory; refusing to replace it")


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


def _write_hf_tokenizer(tokenizer: Any, out: Path, max_length: int) -> None:
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


def export_hf(package: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a package as a Hugging Face model directory that ``transformers`` loads without custom code.

    Args:
        package: the package directory.
        out: the directory to write (must not exist unless ``overwrite``; never a non-HF directory).
        overwrite: replace an existing export at ``out``.

    Returns:
        ``out``.

    Raises:
        PackageError: a config with no GPT-2/Llama counterpart (sinusoidal or ALiBi positions, relu2 with RoPE,
            QK-norm, ...): the message says which setting and why; or a package that does not load.
    """
    transformers = _import_transformers()
    from llm_lab.core.package.hf import to_hf_model

    package, out = Path(package), Path(out)
    config, tokenizer, model = load_model_package(package)
    _prepare_hf_target(out, overwrite)  # refuse a bad target before converting anything
    try:
        hf_model = to_hf_model(model)
    except ValueError as e:
        raise PackageError(f"cannot export {package} to Hugging Face format: {e}") from None
    eot = tokenizer.eot_token_id
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(hf_model.config, key, eot)
    generation = transformers.GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    hf_model.generation_config = generation

    tmp = _temp_directory_beside(out)
    try:
        with _quiet_transformers(transformers):
            hf_model.save_pretrained(tmp, safe_serialization=True)
        generation.save_pretrained(tmp)
        _write_hf_tokenizer(tokenizer, tmp, config.max_positions)
        _commit_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------------------------- import


def _check_bin_files(hf_dir: Path) -> None:
    """Read every ``.bin`` weights file with ``weights_only=True`` first: a pickle that would run code is refused."""
    for path in sorted(hf_dir.glob("*.bin")):
        if path.name.startswith(("pytorch_model", "model")):
            load_state_dict_file(path)


def _find_weights(hf_dir: Path) -> str:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    for name in names:
        if (hf_dir / name).is_file():
            return name
    raise PackageError(f"{hf_dir}: no weights found (looked for {', '.join(names)})")


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
    from llm_lab.core.tokenization.bpe import _from_unicode

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
    vocab = {_from_unicode(tok, str(path)): i for tok, i in model["vocab"].items() if tok not in specials}
    merges = []
    for m in model.get("merges", []):
        left, right = m.split(" ") if isinstance(m, str) else m
        merges.append((_from_unicode(left, str(path)), _from_unicode(right, str(path))))
    try:
        return SubwordTokenizer(vocab, merges, specials, pattern)
    except ValueError as e:
        raise PackageError(f"{path}: {e}") from None


def _tokenizer_from_hf_dir(hf_dir: Path) -> Any:
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


def import_hf(hf_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Turn a local Hugging Face GPT-2 or Llama checkpoint directory into a package.

    Args:
        hf_dir: a directory with ``config.json``, weights (``model.safetensors``, ``pytorch_model.bin`` or their
            sharded ``*.index.json`` forms) and a byte-level BPE tokenizer (``tokenizer.json`` or ``vocab.json`` +
            ``merges.txt``).
        out: the package directory to write.
        overwrite: replace an existing package at ``out``.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: ``hf_dir`` or its ``config.json`` is missing.
        PackageError: another model type, a setting MiniGPT cannot express (named), a weights file holding
            pickled Python objects, a tokenizer that is not byte-level BPE.
    """
    transformers = _import_transformers()
    from llm_lab.core.package.hf import from_hf_model

    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"Hugging Face directory not found: {hf_dir}")
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir / 'config.json'}: missing; is {hf_dir} a Hugging Face model directory?")
    hf_config = read_json(hf_dir / "config.json")
    if not isinstance(hf_config, dict):
        raise PackageError(f"{hf_dir / 'config.json'}: expected a JSON object (a Hugging Face model config)")
    model_type = hf_config.get("model_type")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise PackageError(
            f"{hf_dir / 'config.json'}: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(_SUPPORTED_MODEL_TYPES)}"
        )
    _find_weights(hf_dir)
    _check_bin_files(hf_dir)
    tokenizer = _tokenizer_from_hf_dir(hf_dir)
    try:
        with _quiet_transformers(transformers):
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(
                hf_dir, local_files_only=True, trust_remote_code=False, weights_only=True
            )
        model = from_hf_model(hf_model)
    except ValueError as e:
        raise PackageError(f"cannot import {hf_dir}: {e}") from None
    except OSError as e:
        raise PackageError(f"cannot read {hf_dir}: {str(e).splitlines()[0]}") from None
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
        model = model.float()  # packages hold fp32 weights; training decides its own precision
    source = {"kind": "hf", "hf_dir": str(hf_dir.resolve()), "model_type": model_type}
    return _save_model_package(out, model.config, tokenizer, model, source=source, overwrite=overwrite)
