"""prepare_for_decode(dtype=...): bf16 and int8 weight-only decode copies, their packing, their choice (``auto``)
and their cost in bits per byte on a briefly trained model (targets: bf16 within +0.5%, int8 within +1% of fp32)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from llm_lab.core.decode import fast_linear, generate, prepare_for_decode
from llm_lab.core.decode.fast_linear import (
    DECODE_DTYPES,
    BFloat16Weights,
    DecodeLinear,
    FbgemmInt8Weights,
    Int8Weights,
    fbgemm_int8_available,
    resolve_decode_dtype,
)
from llm_lab.core.evaluation import evaluate_text
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.model.kv_cache import KVCache, SlotKVCache
from llm_lab.core.tokenization import CharTokenizer
from llm_lab.core.train import precision
from llm_lab.core.train.precision import cpu_bf16_flags, has_bf16_matrix_units

VARIANTS = {
    "gpt2": dict(bias=True),
    "llama": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False),
}


def tiny(variant: str, seed: int = 0) -> MiniGPT:
    torch.manual_seed(seed)
    config = MiniGPTConfig(vocab_size=61, context_length=32, n_layer=2, n_head=4, n_embd=32, init_std=0.3,
                           **VARIANTS[variant])  # fmt: skip
    return MiniGPT(config).eval()


@pytest.fixture
def without_fbgemm(monkeypatch):
    """The int8 kernel of a torch without fbgemm (``_weight_int8pack_mm``)."""
    monkeypatch.setattr(fast_linear, "fbgemm_int8_available", lambda: False)


def test_int8_packing_is_per_output_channel_and_exact_for_its_own_grid(without_fbgemm):
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight[3] *= 100  # one loud channel must not cost the others their resolution
    product = DecodeLinear([layer], "int8")
    assert product.weights is Int8Weights
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


needs_fbgemm = pytest.mark.skipif(not fbgemm_int8_available(), reason="torch has no fbgemm on this CPU")


@needs_fbgemm
def test_fbgemm_int8_is_exact_for_rows_on_its_input_grid_and_per_output_channel():
    """An input row is quantised to 129 levels over ``[-peak, peak]`` (steps of ``peak / 64``), a weight row to
    ``q * scale`` with ``scale = absmax / 127``. For a row whose entries are whole steps, ``k * peak / 64`` with one
    ``k = +-64``, nothing is rounded on the way in, so the product is ``peak / 64 * (k @ q.T) * scale + bias``
    with an exact integer sum: it must match that to float32 rounding."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight[3] *= 100  # one loud channel must not cost the others their resolution
    product = DecodeLinear([layer], "int8")
    assert product.weights is FbgemmInt8Weights and product.dtype == "int8"
    scale = product.weight_scale
    assert scale.shape == (48,) and torch.allclose(scale, layer.weight.abs().amax(dim=1) / 127)
    q = torch.round(layer.weight.detach() / scale[:, None])
    assert q.abs().max() <= 127 and (q.abs().amax(dim=1) == 127).all()  # every row uses its whole range
    steps = torch.randint(-64, 65, (5, 64))
    steps[:, 0] = torch.tensor([64, -64, 64, -64, 64])  # the row's peak, so the grid is the one assumed
    peaks = torch.tensor([[1.0], [0.01], [250.0], [3.0], [1e-3]])
    x = steps * peaks / 64
    want = (steps.double() @ q.double().t()) * (peaks.double() / 64) * scale.double() + layer.bias.double()
    torch.testing.assert_close(product(x).double(), want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


@needs_fbgemm
def test_fbgemm_int8_rows_are_independent_and_never_saturate():
    layer = nn.Linear(96, 40, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)  # q = 127 everywhere: AVX2 adds u8 x s8 products in pairs in 16-bit integers
    product = DecodeLinear([layer], "int8")
    ones = torch.ones(1, 96)
    assert torch.equal(product(ones), torch.full((1, 40), 48.0))  # 96 * 0.5, with no pair clipped at 32767
    torch.manual_seed(1)
    x = torch.randn(6, 96) * torch.tensor([1e-3, 1.0, 1e3, 5.0, 0.1, 40.0])[:, None]
    together = product(x)
    for r in range(6):  # each row quantised over its own range: alone == beside any others, bit for bit
        assert torch.equal(product(x[r : r + 1]), together[r : r + 1])


@needs_fbgemm
def test_fbgemm_int8_small_products_run_on_one_thread_with_the_same_result(monkeypatch):
    product = DecodeLinear([nn.Linear(64, 32)], "int8")
    x = torch.randn(4, 64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen, real = [], type(product.fbgemm)._product

        def spy(matrix, rows):
            seen.append(torch.get_num_threads())
            return real(matrix, rows)

        monkeypatch.setattr(type(product.fbgemm), "_product", spy)
        small = product(x)
        monkeypatch.setattr(fast_linear, "MIN_PARALLEL_WEIGHTS", 1)
        split = product(x)
        assert seen == [1, 2] and torch.get_num_threads() == 2  # the setting is put back
        assert torch.equal(small, split)
    finally:
        torch.set_num_threads(before)


@needs_fbgemm
def test_fbgemm_int8_copies_share_the_packed_matrix_and_refuse_pickling():
    product = DecodeLinear([nn.Linear(16, 8)], "int8")
    twin = copy.deepcopy(product)
    assert twin.fbgemm is product.fbgemm
    x = torch.randn(3, 16)
    assert torch.equal(twin(x), product(x))
    assert product.nbytes == 8 * (16 + 2) + 8 * 4 + 8 * 4 + 2 * 4  # int8 weights (+ two pin columns), scale, bias
    with pytest.raises(TypeError, match="cannot be pickled; save the model and prepare_for_decode again"):
        pickle.dumps(product)


def test_bf16_packing_rounds_the_weights_once():
    layer = nn.Linear(16, 8)
    product = DecodeLinear([layer], "bf16")
    assert product.packed_weight.dtype == torch.bfloat16 and product.packed_weight.shape == (8, 16)
    assert torch.equal(product.packed_weight, layer.weight.detach().to(torch.bfloat16))
    assert product.packed_bias.dtype == torch.float32


#: (dtype, kernel, how far from fp32 its logits may be, as a share of the largest fp32 logit). fbgemm rounds each
#: input row to about 7 bits (the other kernels keep bf16's 8), which these random, wide-init models amplify layer
#: by layer; the cost that matters, bits per byte on a trained model, is the slow test below.
KERNELS = [("bf16", "bf16", 0.05), ("int8", "fbgemm", 0.1), ("int8", "int8pack", 0.05)]


@pytest.mark.parametrize(("dtype", "kernel", "tolerance"), KERNELS, ids=[k[1] for k in KERNELS])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_low_precision_copy_is_close_to_fp32_and_fuses_the_same_products(variant, dtype, kernel, tolerance,
                                                                         monkeypatch):  # fmt: skip
    if kernel == "int8pack":
        monkeypatch.setattr(fast_linear, "fbgemm_int8_available", lambda: False)
    elif kernel == "fbgemm" and not fbgemm_int8_available():
        pytest.skip("torch has no fbgemm on this CPU")
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
    assert (got - want).abs().max() < tolerance * scale
    torch.testing.assert_close(step, got[:, 7:], rtol=2e-2, atol=2e-2 * scale.item())


@pytest.mark.parametrize("kernel", ["fp32", "fp32-blocks", "bf16", "fbgemm", "int8pack"])
def test_kernel_call_is_the_product_s_own_kernel_call(kernel, monkeypatch):
    # `llm-lab bench generate` times kernel_call as the kernels' ceiling: it must be the very call a product makes,
    # on the input the product prepares, so that finishing its result gives the product's answer bit for bit.
    if kernel == "int8pack":
        monkeypatch.setattr(fast_linear, "fbgemm_int8_available", lambda: False)
    elif kernel == "fbgemm" and not fbgemm_int8_available():
        pytest.skip("torch has no fbgemm on this CPU")
    dtype = {"fp32-blocks": "fp32", "fbgemm": "int8", "int8pack": "int8"}.get(kernel, kernel)
    torch.manual_seed(0)
    layers = [nn.Linear(256, 200), nn.Linear(256, 120)]
    with monkeypatch.context() as m:
        m.setattr(torch, "get_num_threads", lambda: 2 if kernel == "fp32-blocks" else 1)
        product = DecodeLinear(layers, dtype)
    assert product.parts == (2 if kernel == "fp32-blocks" else 1)
    weights = product.weights
    flat = torch.randn(3, 256)
    with torch.inference_mode():
        _, state = weights.prepare(product, flat)
        got = weights.finish(product, weights.kernel_call(product, flat)(), flat, state)
        want = torch.cat(product(flat), dim=1)
    assert got.shape == (3, 320)
    assert torch.equal(got, want)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_an_int8_copy_computes_each_row_alone_in_any_number_of_rows(variant):
    # The server runs only its busy slots for such a copy (SlotKVCache.first_rows): a row's logits must not depend
    # on how many rows run beside it. fp32 makes no such promise (the BLAS rounds by the number of rows).
    if not fbgemm_int8_available():
        pytest.skip("torch has no fbgemm on this CPU")
    model = tiny(variant)  # activations 32 and 128 (or 96 for SwiGLU) wide: multiples of VECTOR_STEP
    assert not fast_linear.rows_independent(model, 4)
    assert not fast_linear.rows_independent(prepare_for_decode(model), 4)
    fast = prepare_for_decode(model, "int8")
    assert fast_linear.rows_independent(fast, 4)
    # Past torch's elementwise grain the activations are split across threads wherever the thread count puts it.
    widest = max(m.in_features for m in fast.modules() if isinstance(m, DecodeLinear))
    assert not fast_linear.rows_independent(fast, fast_linear.ELEMENTWISE_GRAIN // widest)
    # A width that is not a multiple of the vector step leaves elements to the scalar code, rounding otherwise.
    torch.manual_seed(0)
    odd = MiniGPT(MiniGPTConfig(vocab_size=61, context_length=32, n_layer=1, n_head=2, n_embd=36, **VARIANTS[variant]))
    assert not fast_linear.rows_independent(prepare_for_decode(odd.eval(), "int8"), 4)
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6, 5], [3, 5, 8, 9, 7, 9, 3, 2, 3, 8], [2, 7]]
    with torch.inference_mode():
        cache = SlotKVCache(fast.config, 4, max_len=32)
        for slot, prompt in enumerate(prompts):
            prefill = KVCache(fast.config, 1, max_len=len(prompt))
            fast(torch.tensor([prompt]), past_key_values=prefill)
            cache.write_row(slot, prefill)
        tokens = torch.tensor([[7], [1], [0], [4]])

        def step(rows: int) -> torch.Tensor:
            view = copy.deepcopy(cache).first_rows(rows)  # each step from the same state
            logits, _ = fast(tokens[:rows], attention_mask=view.step_mask(), past_key_values=view,
                             position_ids=view.lengths[:, None], logits_to_keep=1)  # fmt: skip
            return logits[:, -1]

        every = step(4)
        for rows in (1, 2, 3):
            assert torch.equal(step(rows), every[:rows])


def test_auto_picks_int8_on_a_cpu_and_never_bf16():
    # This test machine's CPU: fbgemm where torch has it (x86), else the other kernel only with bf16 units.
    fast_int8 = fbgemm_int8_available() or has_bf16_matrix_units(cpu_bf16_flags())
    assert resolve_decode_dtype("auto", "cpu") == ("int8" if fast_int8 else "fp32")
    assert resolve_decode_dtype("auto", "cuda") == "fp32"  # a device name is enough; no GPU needed
    assert resolve_decode_dtype("bf16") == "bf16"
    assert [DECODE_DTYPES[n] for n in ("bf16", "int8")] == [BFloat16Weights, Int8Weights]
    fast = prepare_for_decode(tiny("gpt2"), "auto")
    assert {m.dtype for m in fast.modules() if isinstance(m, DecodeLinear)} == {"int8" if fast_int8 else "fp32"}


@pytest.mark.parametrize(("fbgemm", "bf16_flags", "expected"), [
    (True, frozenset(), "int8"),  # an AVX2 CPU (the development machine): fbgemm beats fp32
    (True, frozenset({"avx512_bf16"}), "int8"),  # Zen 4: fbgemm too
    (False, frozenset({"avx512_bf16"}), "int8"),  # no fbgemm, bf16 units: _weight_int8pack_mm is fast
    (False, frozenset(), "fp32"),  # no fbgemm, no bf16 units: _weight_int8pack_mm is slower than fp32
])  # fmt: skip
def test_auto_is_int8_only_where_an_int8_kernel_beats_fp32(monkeypatch, fbgemm, bf16_flags, expected):
    monkeypatch.setattr(fast_linear, "fbgemm_int8_available", lambda: fbgemm)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: bf16_flags)
    assert resolve_decode_dtype("auto", "cpu") == expected
    assert resolve_decode_dtype("auto", "cuda") == "fp32"
    assert resolve_decode_dtype("int8", "cpu") == "int8"  # asked for by name, it is always given


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
