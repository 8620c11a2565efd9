"""The weights files of a Hugging Face directory, vetted before anything reads them as a model.

:func:`find_weights` picks the weights file (``model.safetensors``, ``pytorch_model.bin`` or a sharded
``*.index.json``); :func:`check_weights_files` reads every pickle-format file with ``torch.load(weights_only=True)``
first, every shard an index names included (an entry leaving the directory is refused), so one that would run code
never reaches ``transformers``; :func:`stored_shapes` lists every tensor's shape from the files' headers, which
:func:`~llm_lab.core.package.hf_io.import_hf` compares with the config before building the model.
"""

from __future__ import annotations

from pathlib import Path

from llm_lab.core.package.layout import PackageError, safe_relative_path
from llm_lab.core.package.weights import load_state_dict_file
from llm_lab.utils.json_input import load_json_file

__all__ = ["INDEX_FILES", "check_weights_files", "find_weights", "stored_shapes"]

# Files torch reads with pickle; safetensors files cannot run code.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_FILES = {"model.safetensors.index.json": ".safetensors", "pytorch_model.bin.index.json": ".bin"}


def _index_shards(hf_dir: Path, index_name: str) -> list[Path]:
    """The shard files an index names, each checked to be a regular file inside ``hf_dir``.

    Raises:
        PackageError: an index that is not ``{"weight_map": {tensor: file}}``, an entry that leaves the directory
            (``../``, an absolute path, a symbolic link out), a missing shard, or a safetensors index naming a file
            of another format (a pickle behind a safetensors name would reach torch's unpickler).
    """
    index_path = hf_dir / index_name
    root = hf_dir.resolve()
    try:
        index = load_json_file(index_path)
    except ValueError as e:
        raise PackageError(str(e)) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise PackageError(f'{index_path}: expected {{"weight_map": {{tensor name: shard file}}}}')
    shards = []
    for name in sorted(set(weight_map.values())):
        safe_relative_path(name, index_path)
        shard = hf_dir / name
        if not shard.resolve().is_relative_to(root):
            raise PackageError(f"{index_path}: {name!r} is not a path inside the directory; refusing it")
        if not shard.is_file():
            raise PackageError(f"{index_path}: names {name!r}, which is missing from {hf_dir}")
        if index_name.endswith(".safetensors.index.json") and not name.endswith(".safetensors"):
            raise PackageError(f"{index_path}: names {name!r}; a safetensors index must name .safetensors files only")
        shards.append(shard)
    return shards


def check_weights_files(hf_dir: Path) -> None:
    """Read every pickle-format weights file with ``weights_only=True`` first: one that would run code is refused.

    That is every top-level weights file the loader may open (``pytorch_model*`` / ``model*`` with a pickle suffix;
    other files such as ``training_args.bin`` are never loaded) and every shard an index file names, whatever its
    name or folder.
    """
    files = {
        p
        for p in hf_dir.iterdir()
        if p.is_file() and p.suffix in _PICKLE_SUFFIXES and p.name.startswith(("pytorch_model", "model"))
    }
    for index_name in INDEX_FILES:
        if (hf_dir / index_name).is_file():
            files.update(_index_shards(hf_dir, index_name))
    for path in sorted(files):
        if path.suffix != ".safetensors":
            load_state_dict_file(path)


def find_weights(hf_dir: Path) -> str:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    for name in names:
        if (hf_dir / name).is_file():
            return name
    raise PackageError(f"{hf_dir}: no weights found (looked for {', '.join(names)})")


def stored_shapes(hf_dir: Path, weights: str) -> dict[str, tuple[int, ...]]:
    """``tensor name -> shape`` of every tensor the weights files hold, read from safetensors headers (no data)
    or from the already checked pickle files.

    Raises:
        PackageError: a weights file that is not readable (a garbage safetensors header): the message names it.
    """
    from safetensors import SafetensorError, safe_open

    files = _index_shards(hf_dir, weights) if weights in INDEX_FILES else [hf_dir / weights]
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as f:
                    names = list(f.keys())  # a safe_open handle is not iterable
                    shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in names})
            except (SafetensorError, OSError, ValueError) as e:
                raise PackageError(f"{path}: not a readable safetensors file ({e})") from None
        else:
            shapes.update({name: tuple(t.shape) for name, t in load_state_dict_file(path).items()})
    return shapes
