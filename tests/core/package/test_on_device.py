"""Hugging Face parity and package loading on every device (the ``device`` fixture: CPU, CUDA, MPS).

HF parity: a random GPT-2 and a random Llama (GQA, RoPE, SwiGLU, RMSNorm) on the device, converted with
``from_hf_model`` (which keeps the device), give HF's logits within the fp32 row of the tolerance table, also
with a left- and right-padded batch; the export ``to_hf_model`` does the same the other way round. Packages:
``load_model_package(..., device=...)`` puts every tensor on the device, with the logits of a CPU load.
"""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.package.hf import from_hf_model, to_hf_model
from llm_lab.core.package.io import load_model_package, save_model_package

transformers = pytest.importorskip("transformers")

VOCAB, B, T = 61, 3, 12


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Large random weights (norm gains near 1), so a swapped or transposed tensor cannot hide in tiny logits."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_gain = p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight")
            p.copy_(1.0 + 0.2 * noise if is_norm_gain else 0.2 * noise)
    return model.eval()


def _gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, attn_implementation="eager",
    )  # fmt: skip
    return _randomize(transformers.GPT2LMHeadModel(config))


def _llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, attn_implementation="eager",
    )  # fmt: skip
    return _randomize(transformers.LlamaForCausalLM(config))


FAMILIES = {"gpt2": _gpt2, "llama-gqa": _llama}


def _padded_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    mask[2, -2:] = 0  # right padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # HF needs explicit positions for a left-padded row
    return ids.to(device), mask.to(device), positions.to(device)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hf_parity_on_device(device, family, assert_within_tolerance):
    hf = FAMILIES[family]().to(device)
    ours = from_hf_model(hf)
    assert {p.device.type for p in ours.parameters()} == {device.type}
    ids, mask, positions = _padded_batch(device)
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        assert expected.std() > 0.5  # not a comparison of near-zero numbers
        assert_within_tolerance(ours(ids)[0], expected, torch.float32)
        expected = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got, _ = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert_within_tolerance(got[real], expected[real], torch.float32)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_to_hf_on_device(device, family, assert_within_tolerance):
    ours = from_hf_model(FAMILIES[family]().to(device))
    exported = to_hf_model(ours)
    assert {p.device.type for p in exported.parameters()} == {device.type}
    ids, _, _ = _padded_batch(device)
    with torch.no_grad():
        assert_within_tolerance(exported(input_ids=ids).logits, ours(ids)[0], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_package_loads_onto_the_device(device, dtype, device_package, tmp_path, assert_within_tolerance):
    path = device_package
    if dtype != torch.float32:  # a package saved in bf16 loads in bf16, on the device asked for
        config, tokenizer, model = load_model_package(path)
        path = save_model_package(tmp_path / "pkg-bf16", config, tokenizer, model.to(dtype))
    _, tokenizer, on_cpu = load_model_package(path)
    _, _, on_device = load_model_package(path, device=str(device))
    tensors = [*on_device.parameters(), *on_device.buffers()]
    assert {t.device.type for t in tensors} == {device.type}
    assert {p.dtype for p in on_device.parameters()} == {dtype}
    ids = torch.tensor([tokenizer.encode("to be, or not to be")])
    with torch.no_grad():
        assert_within_tolerance(on_device(ids.to(device))[0], on_cpu(ids)[0], dtype)
