"""DecodeLinears: the decode-step weight layout gives the plain layers' results, follows weight changes, cleans up."""

from __future__ import annotations

import numpy
import pytest
import torch
from torch import nn

from llm_lab.core.decode import fast_linear, generate
from llm_lab.core.decode.fast_linear import DecodeLinears
from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig

VARIANTS = {
    "gpt2": dict(bias=True),  # biases, GELU MLP, tied head
    "llama": dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, tie_embeddings=False),
}


def tiny(variant: str) -> MiniGPT:
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


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_the_plain_layers(variant, n_threads, threads, small_blocks):
    threads(n_threads)  # 3 threads: 61 vocabulary columns need a zero-padded third block
    model = tiny(variant)
    ids = torch.randint(0, 61, (2, 9))
    with torch.inference_mode():
        _, cache = model(ids[:, :7], use_cache=True)
        reference, _ = model(ids[:, 7:], past_key_values=cache)
        _, cache = model(ids[:, :7], use_cache=True)
        with DecodeLinears(model):
            fast, _ = model(ids[:, 7:], past_key_values=cache)  # 2 x 2 = 4 rows: the fast path
    assert fast.shape == (2, 2, 61)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    # The copies really were used: per layer one for q/k/v, o_proj, the MLP's input side and down_proj; one head.
    copies = [fast_linear._COPIES[m] for m in model.modules() if m in fast_linear._COPIES]
    assert len(copies) == 4 * 2 + 1
    widths = sorted(width for _, width in DecodeLinears(model).products())  # only down_proj reads the hidden width
    assert widths == sorted([32] * 7 + [model.config.hidden_dim] * 2)
    assert all(copy.weight.dim() == (2 if n_threads == 1 else 3) for copy in copies)


def test_more_rows_than_max_rows_take_the_plain_layers_bit_for_bit():
    model = tiny("gpt2")
    ids = torch.randint(0, 61, (2, 3))  # 6 rows > MAX_ROWS
    assert ids.numel() > fast_linear.MAX_ROWS
    with torch.inference_mode():
        reference, _ = model(ids)
        with DecodeLinears(model):
            fast, _ = model(ids)
    assert torch.equal(fast, reference)


def test_copies_follow_weight_changes():
    model = tiny("llama")
    ids = torch.randint(0, 61, (1, 1))
    with torch.inference_mode(), DecodeLinears(model):
        model(ids)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-0.5)  # an in-place update, as an optimizer step makes
    with torch.inference_mode():
        reference, _ = model(ids)
        with DecodeLinears(model):
            fast, _ = model(ids)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    # Loading other weights (copied in place) is seen too.
    other = tiny("llama")
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        reference, _ = other(ids)
        with DecodeLinears(model):
            fast, _ = model(ids)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def _tokens(model: MiniGPT, fast: DecodeLinears | None = None) -> torch.Tensor:
    """Greedy logits of one decode step for a fixed 2-token prompt, through ``fast`` (or the plain layers)."""
    ids = torch.tensor([[3, 5]])
    with torch.inference_mode():
        _, cache = model(ids[:, :1], use_cache=True)
        if fast is None:
            return model(ids[:, 1:], past_key_values=cache)[0]
        with fast:
            return model(ids[:, 1:], past_key_values=cache)[0]


def test_a_replaced_parameter_is_seen_even_at_a_reused_address():
    model = tiny("llama")
    fast = DecodeLinears(model)  # held across the changes, as a server would
    memory = bytearray(61 * 32 * 4)

    def parameter_at_the_same_address() -> nn.Parameter:
        # A fresh tensor (version 0) over the same memory, as when a freed block is reused for a new weight.
        numpy.frombuffer(memory, dtype=numpy.float32)[:] = torch.randn(61 * 32).numpy()  # written outside torch
        return nn.Parameter(torch.frombuffer(memory, dtype=torch.float32).view(61, 32))

    model.lm_head.weight = parameter_at_the_same_address()
    _tokens(model, fast)  # copies made from it
    model.lm_head.weight = parameter_at_the_same_address()
    assert (model.lm_head.weight.data_ptr(), model.lm_head.weight._version) == (memory_address(memory), 0)
    torch.testing.assert_close(_tokens(model, fast), _tokens(model), atol=1e-5, rtol=1e-5)
    model.blocks[0].attn.q_proj.weight = nn.Parameter(torch.randn(32, 32))  # a fused layer's parameter
    torch.testing.assert_close(_tokens(model, fast), _tokens(model), atol=1e-5, rtol=1e-5)


def memory_address(memory: bytearray) -> int:
    return torch.frombuffer(memory, dtype=torch.uint8).data_ptr()


def test_writes_through_data_need_release():
    model = tiny("gpt2")
    _tokens(model, DecodeLinears(model))
    with torch.no_grad():
        for p in model.parameters():
            p.data.mul_(-1.0)  # bumps no version counter: invisible to the cache
    DecodeLinears.release(model)
    torch.testing.assert_close(_tokens(model, DecodeLinears(model)), _tokens(model), atol=1e-5, rtol=1e-5)


def test_hooks_on_fused_layers_still_run():
    model = tiny("llama")
    calls = []
    model.blocks[0].attn.q_proj.register_forward_hook(lambda m, i, o: calls.append(1) or o * 0.0)
    model.blocks[0].mlp.up_proj.register_forward_pre_hook(lambda m, i: calls.append(2))
    fast = _tokens(model, DecodeLinears(model))
    assert sorted(calls) == [1, 1, 2, 2]  # the cache prefill and the decode step each ran both hooks
    calls.clear()
    torch.testing.assert_close(fast, _tokens(model), atol=1e-5, rtol=1e-5)


def test_an_overridden_projection_method_is_kept():
    from llm_lab.core.model.attention import CausalSelfAttention

    class LoudQueries(CausalSelfAttention):
        def project_qkv(self, x):
            q, k, v = super().project_qkv(x)
            return q * 4, k, v

    model = tiny("gpt2")
    for block in model.blocks:
        block.attn.__class__ = LoudQueries
    fast = DecodeLinears(model)
    assert all(method != "project_qkv" for _, method, _, _ in fast._swaps)
    torch.testing.assert_close(_tokens(model, fast), _tokens(model), atol=1e-5, rtol=1e-5)


def test_compiled_wrappers_and_other_devices_get_no_swaps():
    model = tiny("gpt2")
    assert DecodeLinears(torch.compile(model)).products() == []  # compiling is lazy: nothing is traced here
    _tokens(model, DecodeLinears(model))
    assert any(m in fast_linear._COPIES for m in model.modules())
    model.to("meta")
    assert DecodeLinears(model).products() == []
    assert not any(m in fast_linear._COPIES for m in model.modules())  # the CPU copies were let go


def test_methods_are_given_back_even_after_an_error():
    model = tiny("llama")
    fast = DecodeLinears(model)
    with pytest.raises(RuntimeError, match="boom"), fast:
        assert "project_qkv" in vars(model.blocks[0].attn)
        assert "forward" in vars(model.lm_head)
        raise RuntimeError("boom")
    replaced = [m for m in model.modules() if {"forward", "project_qkv", "project_gate_up"} & set(vars(m))]
    assert replaced == []


def test_nested_blocks_leave_the_outer_swaps_in_place():
    model = tiny("gpt2")
    with DecodeLinears(model):
        with DecodeLinears(model):
            pass
        assert "forward" in vars(model.lm_head)  # the inner block did not take the outer block's swap away
    assert "forward" not in vars(model.lm_head)


def test_autograd_goes_through_the_real_weights():
    model = tiny("gpt2")
    ids = torch.randint(0, 61, (1, 1))
    with DecodeLinears(model):
        logits, _ = model(ids)
    logits.sum().backward()
    assert model.lm_head.weight.grad is not None
    assert model.blocks[0].attn.q_proj.weight.grad is not None


def test_inputs_that_need_gradients_take_the_plain_layers():
    model = tiny("gpt2").requires_grad_(False)  # frozen weights, gradients wanted for the input only
    x = torch.randn(1, 1, 32, requires_grad=True)
    with torch.inference_mode(), DecodeLinears(model):
        model.lm_head(torch.randn(1, 1, 32))  # the copies are made here, as inference tensors
    with DecodeLinears(model):
        out = model.lm_head(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad[0, 0], model.lm_head.weight.sum(0))


def test_release_drops_the_copies_of_one_model():
    model, other = tiny("gpt2"), tiny("gpt2")
    for m in (model, other):
        with torch.inference_mode(), DecodeLinears(m):
            m(torch.zeros(1, 1, dtype=torch.long))
    assert DecodeLinears.release(model) == 9
    assert not any(m in fast_linear._COPIES for m in model.modules())
    assert sum(m in fast_linear._COPIES for m in other.modules()) == 9
    assert DecodeLinears.release(model) == 0


def test_a_subclass_of_linear_keeps_its_own_forward():
    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = tiny("gpt2")
    model.lm_head = Scaled(32, 61, bias=False)
    with DecodeLinears(model):
        assert "forward" not in vars(model.lm_head)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_greedy_generation_is_unchanged(n_threads, threads, small_blocks, monkeypatch):
    threads(n_threads)
    model = tiny("gpt2")
    prompts = [[1, 2, 3, 4], [5, 6]]
    DecodeLinears.release(model)
    fast = generate(model, prompts, 12, temperature=0)
    assert all(m in fast_linear._COPIES for m in (model.lm_head, model.blocks[0].attn))  # the fast path ran
    monkeypatch.setattr(fast_linear, "MAX_ROWS", 0)  # every product through nn.Linear
    plain = generate(model, prompts, 12, temperature=0)
    assert fast.token_ids == plain.token_ids


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
