"""Hugging Face directories <-> packages: ``export_hf(package, out)`` and ``import_hf(hf_dir, out)``.

``export_hf`` writes a directory that ``transformers`` loads with no custom code::

    config.json, model.safetensors     GPT2LMHeadModel (learned positions) or LlamaForCausalLM (RoPE), via
                                       :func:`llm_lab.core.package.hf.to_hf_model`
    generation_config.json             end-of-text id as BOS/EOS/pad
    tokenizer.json                     the tokenizer for HF ``tokenizers`` (byte-level BPE, or a character
                                       vocabulary as a ``WordLevel`` model with one piece per character)
    tokenizer_config.json              ``PreTrainedTokenizerFast`` + special tokens, so ``AutoTokenizer`` works
    special_tokens_map.json
    llm_lab_export.json                the export's marker: the exact files it wrote, with sizes and sha256, so
                                       ``--force`` replaces only a directory this command wrote, and only when
                                       nothing else was added to it

``import_hf`` reads a local GPT-2 or Llama checkpoint directory (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, sharded or not, and a byte-level BPE tokenizer as ``tokenizer.json`` or ``vocab.json`` +
``merges.txt``) and writes a package. Nothing is ever executed from the directory: no remote code, and ``.bin``
files are checked with ``torch.load(weights_only=True)`` before ``transformers`` sees them, every shard an index
file names included (an index entry pointing outside the directory is refused). Before any model is built, the
config is parsed by ``transformers`` and by :func:`~llm_lab.core.package.hf.config_from_hf`, and checked against
the tensors the weights files hold (read from their headers): the number of layers, every tensor's shape, and no
tensor missing (only an output head tied to the embedding may be absent). So a config that asks for more than the
weights hold (``n_layer: 10000000`` beside one layer) is refused at once instead of building that model, and an
untied model without its ``lm_head`` is refused instead of importing a random head.

Both build their output beside its final path and swap it in (:mod:`llm_lab.utils.dirswap`). ``transformers`` is
imported only here. The tokenizer files each way are :mod:`llm_lab.core.package.hf_tokenizer`; the vetting of a
directory's weights files is :mod:`llm_lab.core.package.hf_weights`.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llm_lab.core.package.hf_tokenizer import tokenizer_from_hf_dir, write_hf_tokenizer
from llm_lab.core.package.hf_weights import check_weights_files, find_weights, stored_shapes
from llm_lab.core.package.io import load_model_package
from llm_lab.core.package.io import save_model_package as _save_model_package
from llm_lab.core.package.layout import PackageError, file_record, read_json, short_list
from llm_lab.utils.dirlock import refuse_symlink
from llm_lab.utils.dirswap import recover_directory, staged_directory, unexpected_files
from llm_lab.utils.io import atomic_write_json, follow_umask
from llm_lab.utils.json_input import load_json_file

__all__ = ["export_hf", "import_hf"]

_SUPPORTED_MODEL_TYPES = ("gpt2", "llama")


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
    """No progress bars and no log lines from transformers while saving or loading (restored afterwards): what
    matters is checked here and reported in one line."""
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------- export


EXPORT_MARKER = "llm_lab_export.json"
EXPORT_FORMAT = "llm-lab-hf-export"
EXPORT_FORMAT_VERSION = 1


def _prepare_hf_target(out: Path, overwrite: bool) -> None:
    """Refuse a target that is not an export this command wrote (and only that) before anything is converted."""
    refuse_symlink(out)
    recover_directory(out)
    if out.is_file():
        raise FileExistsError(f"{out} exists and is a file; the export is a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another path or pass --force")
    refuse = f"{out} is not a Hugging Face model directory; refusing to replace it"
    marker_path = out / EXPORT_MARKER
    if marker_path.is_symlink() or not marker_path.is_file():
        found = sorted(p.name for p in out.iterdir())
        shown = short_list(found, 4)
        raise FileExistsError(f"{refuse} (it holds {shown} and no {EXPORT_MARKER}: llm-lab export-hf did not write it)")
    try:
        marker = load_json_file(marker_path)
    except ValueError:
        marker = None
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(marker, dict) or marker.get("format") != EXPORT_FORMAT or not isinstance(files, dict):
        raise FileExistsError(f"{refuse} (its {EXPORT_MARKER} is not an llm-lab export marker)")
    foreign = unexpected_files(out, [*files, EXPORT_MARKER])
    if foreign:
        shown = short_list(foreign, 4)
        raise FileExistsError(
            f"{out} holds files llm-lab export-hf did not write ({shown}); refusing to replace it (move them out first)"
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

    with staged_directory(out) as tmp:
        with _quiet_transformers(transformers):
            hf_model.save_pretrained(tmp, safe_serialization=True)
        for path in tmp.rglob("*"):
            if path.is_file():
                follow_umask(path)  # model.safetensors comes out 0o600; the rest of the export follows the umask
        generation.save_pretrained(tmp)
        write_hf_tokenizer(tokenizer, tmp, config.max_positions)
        files = {p.relative_to(tmp).as_posix(): file_record(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        marker = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "files": files}
        atomic_write_json(tmp / EXPORT_MARKER, marker)
    return out


# --------------------------------------------------------------------------------------------- import


def _read_hf_config(transformers: Any, hf_dir: Path) -> Any:
    """``config.json`` parsed by ``transformers`` (its own validation) and mapped to a MiniGPT config, both checked.

    Raises:
        PackageError: one line with what ``transformers`` or MiniGPT rejects (a field of the wrong type, a zero
            epsilon, a setting MiniGPT cannot express).
    """
    from llm_lab.core.package.hf import config_from_hf

    where = hf_dir / "config.json"
    rejected: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, OSError)
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import StrictDataclassError

        rejected += (StrictDataclassError,)
    try:
        with _quiet_transformers(transformers):
            hf_config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True, trust_remote_code=False)
    except rejected as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        raise PackageError(f"{where}: transformers rejects this config: {detail}") from None
    try:
        config_from_hf(hf_config)
    except ValueError as e:
        raise PackageError(f"cannot import {hf_dir}: {e}") from None
    return hf_config


# A transformer block's tensors carry its index: GPT-2 ``h.3.attn...``, Llama ``model.layers.3.self_attn...``.
_LAYER = re.compile(r"(?:^|\.)(?:h|layers)\.(\d+)\.")


def _check_config_against_weights(
    transformers: Any, hf_config: Any, stored: dict[str, tuple[int, ...]], hf_dir: Path
) -> None:
    """Compare the config with the tensors present before building the model it describes.

    The expected tensors come from a one-block model built on the ``meta`` device (shapes only, nothing
    allocated, whatever the config says); block tensors are compared by their name in block 0.

    Raises:
        PackageError: another number of layers than the weights hold, a tensor of another shape than the config
            implies, or a missing tensor (an output head tied to the embedding may be stored once).
    """
    where = hf_dir / "config.json"
    n_layer = hf_config.num_hidden_layers
    held = sorted({int(m.group(1)) for name in stored if (m := _LAYER.search(name))})
    if held != list(range(n_layer)):
        found = f"{len(held)} block{'' if len(held) == 1 else 's'}"
        if held and held != list(range(len(held))):
            found += f" (numbered {short_list(map(str, held), 4)})"
        raise PackageError(
            f"{where}: the config asks for {n_layer} layers, but the weights hold {found}; the config does not "
            "describe these weights"
        )
    one_block = copy.deepcopy(hf_config)
    one_block.num_hidden_layers = 1
    try:
        with torch.device("meta"), _quiet_transformers(transformers):
            meta = transformers.AutoModelForCausalLM.from_config(one_block)
    except (ValueError, TypeError, RuntimeError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PackageError(f"{where}: transformers cannot build this config: {detail}") from None
    expected = {name: tuple(t.shape) for name, t in meta.state_dict().items()}
    prefix = f"{meta.base_model_prefix}."

    def block0(name: str) -> str:
        return _LAYER.sub(lambda m: m.group(0).replace(f".{m.group(1)}.", ".0."), name, count=1)

    def canonical(name: str) -> str:
        name = block0(name)
        return name if name in expected or prefix + name not in expected else prefix + name

    wrong = [
        f"{name} is {shape} but config.json implies {expected[canonical(name)]}"
        for name, shape in stored.items()
        if canonical(name) in expected and shape != expected[canonical(name)]
    ]
    if wrong:
        raise PackageError(f"{hf_dir}: weights do not match config.json ({short_list(wrong, 3)})")
    present = {(canonical(name), int(m.group(1)) if (m := _LAYER.search(name)) else None) for name in stored}
    tied = set(getattr(meta, "_tied_weights_keys", None) or ()) if hf_config.tie_word_embeddings else set()
    missing = []
    for name in expected:
        if name in tied or (hf_config.tie_word_embeddings and name == "lm_head.weight"):
            continue
        blocks = range(n_layer) if _LAYER.search(name) else [None]
        missing += [
            name if block is None else name.replace(".0.", f".{block}.", 1)
            for block in blocks
            if (name, block) not in present
        ]
    if missing:
        head = "lm_head.weight" in missing
        why = " (tie_word_embeddings is false: the output head is a tensor of its own)" if head else ""
        raise PackageError(
            f"{hf_dir}: the weights lack {short_list(missing, 4)}, which config.json needs{why}; refusing to import "
            "a model with randomly initialised tensors"
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
        PackageError: another model type, a config ``transformers`` rejects or one MiniGPT cannot express
            (named), a weights file that is not readable or holds pickled Python objects, weights that do not match
            the config (layers, shapes, a missing tensor: named), a tokenizer that is not byte-level BPE.
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
    weights = find_weights(hf_dir)
    check_weights_files(hf_dir)
    hf_config = _read_hf_config(transformers, hf_dir)
    _check_config_against_weights(transformers, hf_config, stored_shapes(hf_dir, weights), hf_dir)
    tokenizer = tokenizer_from_hf_dir(hf_dir)
    try:
        with _quiet_transformers(transformers):
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(
                hf_dir, config=hf_config, local_files_only=True, trust_remote_code=False, weights_only=True
            )
        model = from_hf_model(hf_model)
    except ValueError as e:
        raise PackageError(f"cannot import {hf_dir}: {e}") from None
    except (OSError, pickle.UnpicklingError, RuntimeError, KeyError) as e:
        # The checks above should leave nothing for the loader to refuse; if it does, one line, not its traceback.
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = next((line for line in lines if "weights_only" not in line), lines[0])
        raise PackageError(f"cannot read {hf_dir}: {detail.strip()}") from None
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in model.state_dict().values()):
        model = model.float()  # packages hold fp32 weights; training decides its own precision
    source = {"kind": "hf", "model_type": model_type}
    return _save_model_package(out, model.config, tokenizer, model, source=source, overwrite=overwrite)
