"""The harness's own ``hf`` backend (``lm_eval.models.huggingface.HFLM``) over an ``export-hf`` directory (the
reference the other routes are compared with; ``accelerate``, which it imports, is a dev requirement)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def hf_backend(hf_dir: Path, batch_size: int) -> Any:
    """``HFLM`` over the exported model in float32 on the CPU, with an integer batch size."""
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
