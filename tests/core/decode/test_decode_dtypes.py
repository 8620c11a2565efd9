"""prepare_for_decode(dtype=...): bf16 and int8 weight-only decode copies, their packing, their choice (``auto``)
and their cost in bits per byte on a briefly trained model (targets: bf16 within +0.5%, int8 within +1% of fp32)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_lab.core.decode import generate, prepare_for_decode
from llm_lab.core.decode.fast_linear import (
    DECODE_DTYPES,
    BFloat16Weights,
    DecodeLinear,
    Int8Weights,
    resolve_decode_dtype,
)
from llm_lab.core.evaluation import evaluate_text
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.tokenization import CharTokenizer

VARIANTS = {
    "gpt2": dict(bias=True),
    "llama": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False),
}


def tiny(variant: str, seed: int = 0) -> MiniGPT:
    torch.manual_seed(seed)
    config = MiniGPTConfig(vocab_size=61, context_length=32, n_layer=2, n_head=4, n_embd=32, init_std=0.3,
                           **VARIANTS[variant])  # fmt: skip
    return MiniGPT(config).eval()


def test_int8_packing_is_per_output_channel_and_exact_for_its_own_grid():
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight[3] *= 100  # one loud channel must not cost the others their resolution
    product = DecodeLinear([layer], "int8")
    q, scale = product.packed_weight, product.weight_scale
    assert q.dtype == torch.int8 and q.shape == (48, 64)
    assert scale.dtype == torch.bfloat16 and scale.shape == (48,)
    assert q.abs().max() <= 127 and (q.abs().amax(dim=1) >= 126).all()  # every row uses its whole range
    dequantised = q.float() * scale.float()[:, None]
    # Rounding to the row's grid: off by at most half a step (plus the bf16 rounding of the scale, clamped).
    assert ((dequantised - layer.weight).abs() <= scale.float()[:, None] * 0.51).all()
    x = torch.randn(5, 64)
    expected = x.to(torch.bfloat16).float() @ dequantised.t() + layer.bias
    torch.testing.assert_close(product(x), expected, rtol=1e-2, atol=1e-2)  # the kernel's bf16 output rounding


def test_bf16_packing_rounds_the_weights_once():
    layer = nn.Linear(16, 8)
    product = DecodeLinear([layer], "bf16")
    assert product.packed_weight.dtype == torch.bfloat16 and product.packed_weight.shape == (8, 16)
    assert torch.equal(product.packed_weight, layer.weight.detach().to(torch.bfloat16))
    assert product.packed_bias.dtype == torch.float32


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_low_precision_copy_is_close_to_fp32_and_fuses_the_same_products(variant, dtype):
    model = tiny(variant)
    fast = prepare_for_decode(model, dtype)
    products = [m for m in fast.modules() if isinstance(m, DecodeLinear)]
    assert len(products) == 4 * 2 + 1 and {p.dtype for p in products} == {dtype}
    ids = torch.randint(0, 61, (2, 9))
    with torch.inference_mode():
        want, got = model(ids)[0], fast(ids)[0]
        # KV-cached steps through the copy agree with its own full pass.
        _, cache = fast(ids[:, :7], use_cache=True)
        step, _ = fast(ids[:, 7:], past_key_values=cache)
    assert got.dtype == torch.float32
    scale = want.abs().max()
    assert (got - want).abs().max() < 0.05 * scale
    torch.testing.assert_close(step, got[:, 7:], rtol=2e-2, atol=2e-2 * scale.item())


def test_auto_picks_int8_on_a_cpu_and_never_bf16():
    assert resolve_decode_dtype("auto", "cpu") == "int8"
    assert resolve_decode_dtype("auto", "cuda") == "fp32"  # a device name is enough; no GPU needed
    assert resolve_decode_dtype("bf16") == "bf16"
    assert [DECODE_DTYPES[n] for n in ("bf16", "int8")] == [BFloat16Weights, Int8Weights]
    fast = prepare_for_decode(tiny("gpt2"), "auto")
    assert {m.dtype for m in fast.modules() if isinstance(m, DecodeLinear)} == {"int8"}


def test_bad_dtypes_are_refused_with_the_choices():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="unknown decode dtype 'fp8'; choose one of: auto, fp32, bf16, int8"):
        prepare_for_decode(model, "fp8")
    with pytest.raises(ValueError, match="unknown decode dtype 'half'; choose one of: fp32, bf16, int8"):
        DecodeLinear([nn.Linear(4, 4)], "half")
    int8 = prepare_for_decode(model, "int8")
    assert prepare_for_decode(int8, "int8") is int8  # idempotent in the same dtype
    with pytest.raises(ValueError, match="already a decode copy in int8, not bf16; prepare the original model"):
        prepare_for_decode(int8, "bf16")


SONNET = (
    "shall i compare thee to a summer's day? thou art more lovely and more temperate: rough winds do shake the "
    "darling buds of may, and summer's lease hath all too short a date; sometime too hot the eye of heaven shines, "
    "and often is his gold complexion dimm'd; and every fair from fair sometime declines, by chance or nature's "
    "changing course untrimm'd; but thy eternal summer shall not fade, nor lose possession of that fair thou "
    "ow'st; nor shall death brag thou wander'st in his shade, when in eternal lines to time thou grow'st: so long "
    "as men can breathe or eyes can see, so long lives this, and this gives life to thee.\n"
)


def trained_model() -> tuple[MiniGPT, CharTokenizer, str]:
    """A character model trained for a few seconds on the sonnet, and the text to measure it on.

    The text is the sonnet's opening, which the model has seen: what is measured is the cost of rounding its
    weights, not how well so small a model generalises (on held-out text it would be worse than uniform).
    """
    tokenizer = CharTokenizer.from_text(SONNET)
    train_text, held_out = SONNET, SONNET[:240]
    torch.manual_seed(0)
    config = MiniGPTConfig(vocab_size=tokenizer.vocab_size, context_length=32, n_layer=2, n_head=4, n_embd=64,
                           **VARIANTS["llama"])  # fmt: skip
    model = MiniGPT(config)
    data = torch.tensor(tokenizer.encode(train_text))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(data) - 33, (16,), generator=generator)
        x = torch.stack([data[s : s + 32] for s in starts])
        y = torch.stack([data[s + 1 : s + 33] for s in starts])
        logits = model(x)[0]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer, held_out


@pytest.mark.slow  # trains for a few seconds on an idle core, much longer on a busy machine
def test_bits_per_byte_cost_is_within_the_targets_on_a_trained_model():
    model, tokenizer, held_out = trained_model()
    fp32 = evaluate_text(model, tokenizer, held_out).bits_per_byte
    assert fp32 < 3.0  # it learned something (uniform over the vocabulary would be log2(32) = 5 bits)
    bf16 = evaluate_text(prepare_for_decode(model, "bf16"), tokenizer, held_out).bits_per_byte
    int8 = evaluate_text(prepare_for_decode(model, "int8"), tokenizer, held_out).bits_per_byte
    assert bf16 <= fp32 * 1.005
    assert int8 <= fp32 * 1.01
    # Greedy decoding through each copy (generate uses a prepared copy as it is) mostly picks fp32's tokens.
    prompts = torch.tensor([tokenizer.encode(held_out[:16]), tokenizer.encode(held_out[100:116])])
    want = generate(model, prompts, 40, temperature=0).sequences[:, 16:]
    for dtype in ("bf16", "int8"):
        got = generate(prepare_for_decode(model, dtype), prompts, 40, temperature=0).sequences[:, 16:]
        assert (got == want).float().mean() >= 0.95
