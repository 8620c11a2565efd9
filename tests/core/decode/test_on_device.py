"""generate and stream on every device (the ``device`` fixture: CPU, CUDA, MPS) and in every dtype.

Greedy decoding on a device picks, at every step, the token fp32 on the CPU picks, up to near-ties within the
dtype's tolerance (``assert_greedy_within_tolerance`` in ``tests/conftest.py``), for one prompt and for a batch of
prompts of different lengths (left-padded inside ``generate``). On one device, ``stream`` yields exactly
``generate``'s tokens and a seed repeats the sampled text. ``device="cuda:N"`` names one GPU of several.
"""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.decode import generate, stream
from llm_lab.core.package.io import load_model_package

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPTS = ["to be, or not", "the quick brown fox jumps", "a"]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def reference(device_package):
    """``(tokenizer, model)``: the package in fp32 on the CPU."""
    _, tokenizer, model = load_model_package(device_package)
    return tokenizer, model


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_greedy_generate_picks_the_cpu_fp32_tokens(device, dtype, device_package, reference,
                                                    assert_greedy_within_tolerance):  # fmt: skip
    tokenizer, cpu_model = reference
    _, _, model = load_model_package(device_package, device=str(device))
    model.to(dtype)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    alone = generate(model, prompts[0], NEW_TOKENS, temperature=0)
    assert alone.sequences.device.type == device.type
    assert len(alone.token_ids[0]) == NEW_TOKENS
    assert_greedy_within_tolerance(cpu_model, prompts[0], alone.token_ids[0], dtype)
    batch = generate(model, prompts, NEW_TOKENS, temperature=0)
    for prompt, new_ids in zip(prompts, batch.token_ids, strict=True):
        assert len(new_ids) == NEW_TOKENS
        assert_greedy_within_tolerance(cpu_model, prompt, new_ids, dtype)


def test_stream_yields_the_tokens_of_generate(device, device_package, reference):
    tokenizer, _ = reference
    _, _, model = load_model_package(device_package, device=str(device))
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    want = generate(model, prompts, NEW_TOKENS, temperature=0.8, seed=3, tokenizer=tokenizer)
    got: dict[int, list[int]] = {row: [] for row in range(len(prompts))}
    texts = dict.fromkeys(got, "")
    for chunk in stream(model, prompts, NEW_TOKENS, temperature=0.8, seed=3, tokenizer=tokenizer):
        if chunk.token_id is not None:
            got[chunk.row].append(chunk.token_id)
        texts[chunk.row] += chunk.text
    assert [got[row] for row in got] == want.token_ids
    assert [texts[row] for row in texts] == want.texts


def test_a_seed_repeats_the_sampled_text(device, device_package, reference):
    tokenizer, _ = reference
    _, _, model = load_model_package(device_package, device=str(device))
    ids = tokenizer.encode(PROMPTS[0])
    first = generate(model, ids, NEW_TOKENS, temperature=1.0, top_k=10, seed=11)
    again = generate(model, ids, NEW_TOKENS, temperature=1.0, top_k=10, seed=11)
    other = generate(model, ids, NEW_TOKENS, temperature=1.0, top_k=10, seed=12)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids
    generator = torch.Generator(device=device).manual_seed(11)  # an explicit generator on the model's device
    assert generate(model, ids, NEW_TOKENS, temperature=1.0, top_k=10, generator=generator).token_ids == first.token_ids


@pytest.mark.device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_a_named_gpu_is_used_or_refused(device_package, reference, assert_greedy_within_tolerance):
    """``cuda:1`` puts the model and every decoding tensor on the second GPU; with one GPU it is a clear error."""
    tokenizer, cpu_model = reference
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match=r"device 'cuda:1': this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
            load_model_package(device_package, device="cuda:1")
        return
    _, _, model = load_model_package(device_package, device="cuda:1")
    assert {p.device for p in model.parameters()} == {torch.device("cuda", 1)}
    ids = tokenizer.encode(PROMPTS[1])
    out = generate(model, ids, NEW_TOKENS, temperature=0)
    assert out.sequences.device == torch.device("cuda", 1)
    assert_greedy_within_tolerance(cpu_model, ids, out.token_ids[0], torch.float32)
