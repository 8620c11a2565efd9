"""prepare_for_decode: the decode copy gives the plain layers' logits, fuses what the classes declare, is a snapshot
that cannot be trained, is idempotent; generate and stream decode the current weights with it."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from llm_lab.core.decode import fast_linear, generate, prepare_for_decode, stream
from llm_lab.core.decode.fast_linear import DecodeLinear, pays_to_prepare
from llm_lab.core.model.attention import CausalSelfAttention
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig

generate_module = importlib.import_module("llm_lab.core.decode.generate")  # the package exports the function

VARIANTS = {
    "gpt2": dict(bias=True),  # biases, GELU MLP, tied head
    "llama": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False),
}


def tiny(variant: str, seed: int = 0) -> MiniGPT:
    torch.manual_seed(seed)
    config = MiniGPTConfig(vocab_size=61, context_length=32, n_layer=2, n_head=4, n_embd=32, init_std=0.3,
                           **VARIANTS[variant])  # fmt: skip
    return MiniGPT(config).eval()


@pytest.fixture
def threads():
    """Set torch's thread count for one test and put it back afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 columns, so that the tiny model's weights are cut into one block per thread."""
    monkeypatch.setattr(fast_linear, "MIN_BLOCK_COLUMNS", 8)


@pytest.fixture
def prepared_calls(monkeypatch):
    """Records each model that generate's setup prepares; 8 new tokens are enough to prepare (tiny tests)."""
    monkeypatch.setattr(fast_linear, "MIN_NEW_TOKENS", 8)
    calls = []

    def spy(model):
        calls.append(model)
        return prepare_for_decode(model)

    monkeypatch.setattr(generate_module, "prepare_for_decode", spy)
    return calls


def decode_step(model: nn.Module, ids: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prefill logits, logits of the cached steps after it)``: the two kinds of pass generation makes."""
    with torch.inference_mode():
        prefill, cache = model(ids[:, :prefix], use_cache=True)
        step, _ = model(ids[:, prefix:], past_key_values=cache)
    return prefill, step


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_the_plain_layers(variant, n_threads, threads, small_blocks):
    threads(n_threads)  # 3 threads: 61 vocabulary columns need a zero-padded third block
    model = tiny(variant)
    fast = prepare_for_decode(model)
    ids = torch.randint(0, 61, (2, 9))
    for got, want in zip(decode_step(fast, ids, 7), decode_step(model, ids, 7), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Per layer: q/k/v as one product, o_proj, the MLP's input side (gate/up fused for SwiGLU), down_proj; the head.
    products = [m for m in fast.modules() if isinstance(m, DecodeLinear)]
    assert len(products) == 4 * 2 + 1
    assert not any(type(m) is nn.Linear for m in fast.modules())
    attn = fast.blocks[0].attn
    kv_width = 8 * model.config.n_kv_head  # head_dim 8
    assert attn.fused.sizes == (32, kv_width, kv_width)
    assert not hasattr(attn, "q_proj")  # the fused product replaced them
    if variant == "llama":
        assert fast.blocks[0].mlp.fused.sizes == (model.config.hidden_dim,) * 2
    assert {p.parts for p in products} == {n_threads}  # every weight has >= 32 columns: one 8+ block per thread


def test_the_source_model_is_left_as_it_was():
    model = tiny("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    prepare_for_decode(model)
    assert [type(m) for m in model.modules()] == kinds
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.blocks[0].attn.fused is None and model.blocks[0].mlp.fused is None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_copy_is_a_snapshot_that_shares_no_memory(variant):
    """Changing the source after preparing (an optimizer step, loading weights) leaves the copy as it was."""
    model = tiny(variant)
    fast = prepare_for_decode(model)
    ids = torch.randint(0, 61, (1, 5))
    before = decode_step(fast, ids, 4)
    source = {p.data_ptr() for p in model.parameters()}
    assert not source & {t.data_ptr() for t in [*fast.parameters(), *fast.buffers()]}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-0.5)
    after = decode_step(fast, ids, 4)
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    again = decode_step(prepare_for_decode(model), ids, 4)  # prepared again: the new weights
    for got, want in zip(again, decode_step(model, ids, 4), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_copy_cannot_be_trained():
    fast = prepare_for_decode(tiny("gpt2"))
    assert not fast.training
    assert not any(t.requires_grad for t in [*fast.parameters(), *fast.buffers()])
    with pytest.raises(ValueError, match="decode-only copy made by prepare_for_decode and cannot be trained"):
        fast.train()
    # torch switched the modules before the first DecodeLinear to training mode before the refusal: such a copy
    # refuses to run (no decoding with dropout on) until it is put back in eval mode.
    with pytest.raises(ValueError, match=r"decode-only copy \(prepare_for_decode\) is in training mode; call .eval"):
        fast(torch.tensor([[1, 2, 3]]))
    fast.eval()  # eval mode still works (generate switches models to it and back)
    assert not any(m.training for m in fast.modules())
    fast(torch.tensor([[1, 2, 3]]))


def test_a_bare_linear_layer_and_saving_a_copy(tmp_path):
    layer = torch.nn.Linear(3, 4)
    fast = prepare_for_decode(layer)
    assert isinstance(fast, DecodeLinear)
    x = torch.randn(2, 3)
    torch.testing.assert_close(fast(x), layer(x), rtol=1e-5, atol=1e-6)
    from llm_lab.core.package.io import save_model_package
    from llm_lab.core.tokenization import CharTokenizer

    model = tiny("gpt2")
    tokenizer = CharTokenizer.from_text("".join(chr(97 + i % 26) for i in range(model.config.vocab_size)))
    with pytest.raises(ValueError, match=r"decode-only copy \(prepare_for_decode\).*save the model it was prepared"):
        save_model_package(tmp_path / "pkg", model.config, tokenizer, prepare_for_decode(model))
    assert not (tmp_path / "pkg").exists()


def test_generate_decodes_the_current_weights_after_training(prepared_calls):
    """A training step between two calls is seen: each call prepares its own copy of the weights as they are."""
    model = tiny("llama")
    prompt = [1, 2, 3]
    before = generate(model, prompt, 20, temperature=0)  # 1 row, 20 tokens: prepared
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    logits, _ = model(torch.randint(0, 61, (4, 12)))
    logits.logsumexp(-1).mean().backward()
    optimizer.step()
    model.eval()
    after = generate(model, prompt, 20, temperature=0)
    assert after.token_ids != before.token_ids  # the step changed the model's greedy text ...
    reference = [*prompt]
    with torch.inference_mode():
        for _ in range(20):  # ... and generation follows it: the plain uncached model's greedy choices
            reference.append(int(model(torch.tensor([reference]))[0][0, -1].argmax()))
    assert after.token_ids[0] == reference[len(prompt) :]
    assert prepared_calls == [model, model]


def test_prepare_is_idempotent_and_a_model_without_linear_layers_passes_through():
    fast = prepare_for_decode(tiny("gpt2"))
    assert prepare_for_decode(fast) is fast
    embedding_only = nn.Sequential(nn.Embedding(5, 3))
    assert prepare_for_decode(embedding_only) is embedding_only


def test_a_model_without_fusable_layers_gets_every_linear_alone():
    model = nn.Sequential(nn.Linear(6, 9), nn.GELU(), nn.Linear(9, 4, bias=False))
    fast = prepare_for_decode(model)
    assert [type(m) for m in fast] == [DecodeLinear, nn.GELU, DecodeLinear]
    assert [(m.sizes, m.packed_bias is not None) for m in (fast[0], fast[2])] == [((9,), True), ((4,), False)]
    x = torch.randn(3, 2, 6)
    torch.testing.assert_close(fast(x), model(x))


def test_an_overridden_projection_method_still_applies():
    class LoudQueries(CausalSelfAttention):
        def project_qkv(self, x):
            q, k, v = super().project_qkv(x)
            return q * 4, k, v

    model = tiny("gpt2")
    for block in model.blocks:
        block.attn.__class__ = LoudQueries  # as if the model had been built with it
    fast = prepare_for_decode(model)
    assert isinstance(fast.blocks[0].attn.fused, DecodeLinear)
    ids = torch.randint(0, 61, (1, 4))
    for got, want in zip(decode_step(fast, ids, 3), decode_step(model, ids, 3), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_subclass_of_linear_keeps_its_forward_and_its_group_is_not_fused():
    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = tiny("gpt2")
    model.lm_head = Scaled(32, 61, bias=False)
    attn = model.blocks[0].attn
    attn.k_proj = Scaled(32, 32, bias=True)
    fast = prepare_for_decode(model)
    assert type(fast.lm_head) is Scaled and fast.lm_head is not model.lm_head
    fast_attn = fast.blocks[0].attn
    assert fast_attn.fused is None and type(fast_attn.k_proj) is Scaled
    assert isinstance(fast_attn.q_proj, DecodeLinear) and isinstance(fast_attn.v_proj, DecodeLinear)
    assert isinstance(fast.blocks[1].attn.fused, DecodeLinear)
    ids = torch.randint(0, 61, (1, 4))
    for got, want in zip(decode_step(fast, ids, 3), decode_step(model, ids, 3), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_decode_linear_refuses_layers_it_cannot_fuse():
    with pytest.raises(ValueError, match="share their input width and all have a bias or none"):
        DecodeLinear([nn.Linear(4, 4), nn.Linear(4, 4, bias=False)])
    with pytest.raises(ValueError, match="share their input width"):
        DecodeLinear([nn.Linear(4, 4), nn.Linear(5, 4)])
    with pytest.raises(ValueError, match=r"one or more nn.Linear layers \(not subclasses"):
        DecodeLinear([])


def test_a_model_with_wrapped_parameters_is_not_prepared():
    class Wrapped(torch.Tensor):
        """Stands in for a DTensor shard: copying it would not copy the whole weight."""

    model = tiny("gpt2")
    model.blocks[0].attn.o_proj.weight = nn.Parameter(torch.randn(32, 32).as_subclass(Wrapped))
    assert not pays_to_prepare(model)
    with pytest.raises(ValueError, match="parameters are plain tensors, got Wrapped"):
        prepare_for_decode(model)


def test_gradients_reach_the_input():
    layer = nn.Linear(5, 3)
    fast = DecodeLinear([layer])
    x = torch.randn(2, 5, requires_grad=True)
    fast(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(2, 5))


def test_when_preparing_pays():
    model = tiny("gpt2")
    assert pays_to_prepare(model, new_tokens=fast_linear.MIN_NEW_TOKENS)
    assert pays_to_prepare(model)  # a copy kept for many generations
    assert not pays_to_prepare(model, new_tokens=fast_linear.MIN_NEW_TOKENS - 1)
    assert not pays_to_prepare(model.to("meta"))
    assert not pays_to_prepare(nn.ReLU())


@pytest.mark.parametrize("n_threads", [1, 2])
def test_greedy_generation_is_unchanged(n_threads, threads, small_blocks, prepared_calls, monkeypatch):
    threads(n_threads)
    model = tiny("gpt2")
    prompts = [[1, 2, 3, 4], [5, 6]]
    fast = generate(model, prompts, 20, temperature=0)
    assert prepared_calls == [model]
    monkeypatch.setattr(fast_linear, "MIN_NEW_TOKENS", 21)  # too few tokens to pay: the model as it is
    plain = generate(model, prompts, 20, temperature=0)
    assert prepared_calls == [model]
    assert fast.token_ids == plain.token_ids


def test_a_prepared_model_is_used_as_it_is(prepared_calls):
    model = tiny("llama")
    fast = prepare_for_decode(model)
    want = generate(model, [3, 4], 20, temperature=0.8, seed=1).token_ids
    prepared_calls.clear()
    assert generate(fast, [3, 4], 20, temperature=0.8, seed=1).token_ids == want
    chunks = [c.token_id for c in stream(fast, [3, 4], 20, temperature=0.8, seed=1) if c.token_id is not None]
    assert [chunks] == want
    assert all(m is fast for m in prepared_calls)  # idempotent: handed back, no second copy


# ----------------------------------------------------------------------------------------------------------------
# logits_to_keep, which generation uses to skip the output head for all but the last position


def test_logits_to_keep_gives_the_last_positions():
    model = tiny("gpt2")
    ids = torch.randint(0, 61, (2, 6))
    with torch.inference_mode():
        full, _ = model(ids)
        last, _ = model(ids, logits_to_keep=1)
        three, _ = model(ids, logits_to_keep=3)
        more, _ = model(ids, logits_to_keep=10)
        zero, _ = model(ids, logits_to_keep=0)  # Hugging Face's "all"
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(three, full[:, -3:])
    assert torch.equal(more, full) and torch.equal(zero, full)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_logits_to_keep_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match=r"logits_to_keep must be an integer >= 0 \(0: all positions\) or None"):
        tiny("gpt2")(torch.zeros(1, 2, dtype=torch.long), logits_to_keep=bad)
