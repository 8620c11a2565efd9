"""Does llama.cpp run our GGUF export as we do? Greedy tokens from llama.cpp against ours, same prompt, f32 export.

``llama-cpp-python`` (llama.cpp's Python binding) has no wheel for this machine and builds from source in minutes,
so it lives in a virtual environment of its own (``make llama-cpp-check`` builds ``.venv-llama``), never in the
project's. This module runs in the project's environment: for each model family it trains a small byte-level BPE
tokenizer, builds a small random model (a large init std, so that greedy choices are not near-ties), saves it as a
package, exports it with :func:`~llm_lab.core.package.gguf_io.export_gguf` (f32), and decodes greedily with
:func:`~llm_lab.core.decode.generate`. A child process in the llama.cpp environment loads the GGUF file,
tokenizes the prompt with llama.cpp's own tokenizer and decodes greedily (the argmax of its logits, step by step).
The check passes when both tokenizations and both token sequences are equal; the largest difference of the
first step's logits is printed too.

The command line is ``llm-lab bench llama-cpp --llama-python .venv-llama/bin/python``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["FAMILIES", "CheckResult", "format_results", "run_llama_cpp_check"]

PROMPT = "to be, or not to be: that is the question"
TEXT = (
    "to be, or not to be: that is the question. whether tis nobler in the mind to suffer the slings and arrows "
    "of outrageous fortune, or to take arms against a sea of troubles, and by opposing end them.\n"
) * 8

#: The model families llama.cpp runs, as the config overrides that make them (see the GGUF export's docs).
FAMILIES: dict[str, dict[str, Any]] = {
    "llama (GQA, untied head)": dict(
        pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False
    ),
    "llama (MHA, tied head)": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False),
    "gpt2 (tanh GELU)": dict(mlp="gelu_tanh"),
}

# Runs in the llama.cpp environment: reads {"path", "prompt", "new_tokens"} on stdin, prints the JSON answer.
_LLAMA_PROGRAM = r"""
import json, sys
import numpy as np
from llama_cpp import Llama

job = json.load(sys.stdin)
llm = Llama(model_path=job["path"], n_ctx=job["n_ctx"], n_threads=1, logits_all=True, verbose=False)
prompt = llm.tokenize(job["prompt"].encode("utf-8"), add_bos=False, special=False)
llm.eval(job["prompt_ids"])
first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64).tolist()
tokens = []
for _ in range(job["new_tokens"]):
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    tokens.append(token)
    llm.eval([token])
print(json.dumps({"prompt_ids": prompt, "tokens": tokens, "first_logits": first}))
"""


@dataclass
class CheckResult:
    """One family's comparison."""

    family: str
    our_prompt_ids: list[int]
    llama_prompt_ids: list[int]
    our_tokens: list[int]
    llama_tokens: list[int]
    max_first_logit_diff: float

    @property
    def passed(self) -> bool:
        return self.our_prompt_ids == self.llama_prompt_ids and self.our_tokens == self.llama_tokens


def _check_family(
    family: str, overrides: dict[str, Any], llama_python: str, work: Path, new_tokens: int
) -> CheckResult:
    from llm_lab.core.decode import generate
    from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
    from llm_lab.core.package.gguf_io import export_gguf
    from llm_lab.core.package.io import save_model_package
    from llm_lab.core.tokenization import SubwordTokenizer

    tokenizer = SubwordTokenizer.train(TEXT, 320, show_progress=False)
    config = MiniGPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=64, n_layer=2, n_head=4, n_embd=64, init_std=0.2, **overrides
    )
    torch.manual_seed(0)
    model = MiniGPT(config).eval()
    slug = "".join(c if c.isalnum() else "_" for c in family)
    package = save_model_package(work / slug, config, tokenizer, model)
    path = export_gguf(package, work / f"{slug}.gguf", dtype="f32")
    prompt_ids = tokenizer.encode(PROMPT)
    ids = torch.tensor([prompt_ids])
    ours = generate(model, ids, new_tokens, temperature=0).sequences[0, len(prompt_ids) :].tolist()
    with torch.inference_mode():
        our_first = model(ids)[0][0, -1].double()
    job = {"path": str(path), "prompt": PROMPT, "prompt_ids": prompt_ids, "new_tokens": new_tokens, "n_ctx": 64}
    proc = subprocess.run(
        [llama_python, "-c", _LLAMA_PROGRAM], input=json.dumps(job), capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp failed on {path}:\n{proc.stderr[-2000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    diff = (torch.tensor(theirs["first_logits"], dtype=torch.float64) - our_first).abs().max().item()
    return CheckResult(family, prompt_ids, theirs["prompt_ids"], ours, theirs["tokens"], diff)


def run_llama_cpp_check(llama_python: str, new_tokens: int = 24) -> list[CheckResult]:
    """Compare llama.cpp's greedy decoding of our f32 GGUF exports with ours, one small model per family.

    Args:
        llama_python: the Python of an environment where ``import llama_cpp`` works.
        new_tokens: greedy tokens to compare per family.
    """
    with tempfile.TemporaryDirectory(prefix="llm-lab-llama-cpp-") as tmp:
        return [
            _check_family(family, overrides, llama_python, Path(tmp), new_tokens)
            for family, overrides in FAMILIES.items()
        ]


def format_results(results: list[CheckResult]) -> str:
    """One line per family, then the verdict."""
    lines = [f"{'family':<26}  {'prompt ids':>10}  {'greedy tokens':>13}  {'max |first logits diff|':>24}"]
    for r in results:
        prompt = "equal" if r.our_prompt_ids == r.llama_prompt_ids else "DIFFER"
        same = sum(a == b for a, b in zip(r.our_tokens, r.llama_tokens, strict=False))
        lines.append(
            f"{r.family:<26}  {prompt:>10}  {f'{same}/{len(r.our_tokens)} equal':>13}  {r.max_first_logit_diff:>24.2e}"
        )
    passed = all(r.passed for r in results)
    lines.append("PASS: llama.cpp decodes our GGUF exports as we do" if passed else "FAIL: see the rows above")
    return "\n".join(lines)
