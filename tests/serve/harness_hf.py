"""The harness's own ``hf`` backend (``lm_eval.models.huggingface.HFLM``) over an ``export-hf`` directory.

``lm_eval.models.huggingface`` imports ``accelerate`` at the top (the ``lm-eval[hf]`` extra), which this project's
dev environment does not install. Its scoring code needs none of it when it is handed a loaded model (no
distributed set-up, no automatic batch size), so where ``accelerate`` is missing an import-only stand-in is put in
its place: every name it offers refuses to run. With ``accelerate`` installed, the real one is used.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("accelerate is not installed; the harness's hf backend runs here without it (see harness_hf)")


def _install_import_only_accelerate() -> None:
    if "accelerate" in sys.modules or importlib.util.find_spec("accelerate") is not None:
        return
    accelerate = types.ModuleType("accelerate")
    # A spec, so that transformers' "is accelerate available?" (find_spec, then the installed version) says no.
    accelerate.__spec__ = importlib.machinery.ModuleSpec("accelerate", None)
    accelerate.Accelerator = _refuse
    accelerate.InitProcessGroupKwargs = _refuse
    accelerate.find_executable_batch_size = _refuse
    utils = types.ModuleType("accelerate.utils")
    utils.get_max_memory = _refuse
    accelerate.utils = utils
    sys.modules["accelerate"] = accelerate
    sys.modules["accelerate.utils"] = utils


def hf_backend(hf_dir: Path, batch_size: int) -> Any:
    """``HFLM`` over the exported model in float32 on the CPU, with an integer batch size."""
    import torch
    import transformers

    _install_import_only_accelerate()
    from lm_eval.models.huggingface import HFLM

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
