"""The chunked causal attention kernel against float64 references, and where ``auto`` sends each pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_variants import PAIRWISE, tiny_config, variant_id

from llm_lab.core.model import MiniGPT, lm_loss
from llm_lab.core.model import attention as attention_module
from llm_lab.core.model.attention import auto_attention, chunked_attention
from llm_lab.core.model.chunked_attention import (
    MAX_TRAINING_POSITIONS,
    MIN_FP32_TRAINING_POSITIONS,
    chunked_causal_attention,
    chunked_is_faster,
)


def _qkv(T: int, dtype: torch.dtype, seed: int = 0, B: int = 2, H: int = 3, hd: int = 16):
    """q, k, v laid out as the model makes them: ``(B, T, H, hd)`` transposed to ``(B, H, T, hd)`` (not contiguous)."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(B, T, H, hd, generator=g) for _ in range(3)]
    grad_out = torch.randn(B, H, T, hd, generator=g)
    return base, grad_out


def _run(attend, base, grad_out, dtype):
    q, k, v = (x.to(dtype).transpose(1, 2).requires_grad_() for x in base)
    out = attend(q, k, v)
    out.backward(grad_out.to(dtype))
    return out, (q.grad, k.grad, v.grad)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize(
    ("T", "chunk"),
    [(24, 8), (23, 8), (5, 128), (16, 1), (17, 16), (16, 16)],
    ids=lambda x: str(x),
)
def test_float64_equals_sdpa_output_and_gradients(T, chunk):
    """Exact arithmetic aside, the kernel is the same function: float64 agrees to 1e-12 in value and gradients.

    Chunk sizes cover a length that is a multiple of the chunk, one that is not, one chunk longer than the sequence,
    one-row chunks and a single chunk that is the whole sequence.
    """
    base, grad_out = _qkv(T, torch.float64)
    out, grads = _run(lambda q, k, v: chunked_causal_attention(q, k, v, chunk=chunk), base, grad_out, torch.float64)
    ref_out, ref_grads = _run(_sdpa, base, grad_out, torch.float64)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    """torch's numerical gradient check over all three inputs (a chunk that does not divide the length)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: chunked_causal_attention(q, k, v, chunk=3), (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rounding_error_is_that_of_the_dtype(dtype):
    """Against a float64 reference, the kernel's error in output and gradients stays within twice PyTorch's own
    kernel's error at the same dtype (float32: about 1e-7; bf16: about 4e-3, the scores and probabilities are
    rounded to bf16 as a flash kernel rounds its probabilities)."""
    base, grad_out = _qkv(256, dtype, B=2, H=2, hd=32)
    exact_out, exact_grads = _run(_sdpa, base, grad_out, torch.float64)
    out, grads = _run(chunked_causal_attention, base, grad_out, dtype)
    torch_out, torch_grads = _run(_sdpa, base, grad_out, dtype)
    assert out.dtype == dtype
    assert _rel(out, exact_out) <= 2 * _rel(torch_out, exact_out)
    for grad, torch_grad, exact in zip(grads, torch_grads, exact_grads, strict=True):
        assert _rel(grad, exact) <= 2 * _rel(torch_grad, exact)


def test_under_autocast_the_inputs_are_cast_like_sdpa():
    """Under CPU autocast, float32 queries (a norm's output) with bf16 keys and values compute in bf16."""
    base, _ = _qkv(12, torch.float32)
    q = base[0].transpose(1, 2)
    k, v = (x.to(torch.bfloat16).transpose(1, 2) for x in base[1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_causal_attention(q, k, v, chunk=5)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


def test_without_gradients_the_same_values():
    base, grad_out = _qkv(20, torch.float32)
    q, k, v = (x.transpose(1, 2) for x in base)
    with torch.no_grad():
        plain = chunked_causal_attention(q, k, v, chunk=6)
    out, _ = _run(lambda q, k, v: chunked_causal_attention(q, k, v, chunk=6), base, grad_out, torch.float32)
    assert torch.equal(plain, out.detach())


def test_bad_inputs_are_refused():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"must share one \(B, n_head, T, hd\) shape, got \[\(1, 2, 4, 8\), "):
        chunked_causal_attention(q, torch.randn(1, 2, 5, 8), q)
    with pytest.raises(ValueError, match="must share one dtype, got torch.float32, torch.float64, torch.float32"):
        chunked_causal_attention(q, q.double(), q)
    for chunk in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=rf"chunk must be a positive integer, got {chunk!r}"):
            chunked_causal_attention(q, q, q, chunk=chunk)


# ---------------------------------------------------------------------------------------------------------------
# Which kernel each pass takes.


@pytest.fixture
def calls(monkeypatch):
    """Records which kernel ``chunked_attention`` / ``auto_attention`` handed each pass to."""
    seen: list[str] = []
    chunked, sdpa = attention_module.chunked_causal_attention, attention_module.sdpa_attention

    def spy_chunked(*args, **kwargs):
        seen.append("chunked")
        return chunked(*args, **kwargs)

    def spy_sdpa(*args, **kwargs):
        seen.append("sdpa")
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention_module, "chunked_causal_attention", spy_chunked)
    monkeypatch.setattr(attention_module, "sdpa_attention", spy_sdpa)
    return seen


def _attend(fn, dtype, T, training, **kwargs):
    q = torch.randn(1, 2, T, 4, dtype=dtype, requires_grad=training)
    if training:
        return fn(q, q, q, None, 0.0, **kwargs)
    with torch.no_grad():
        return fn(q, q, q, None, 0.0, **kwargs)


def test_auto_picks_the_kernel_measured_faster(calls):
    """bf16: chunked, with or without gradients; float32: chunked only for training at 256 positions or more."""
    for dtype, T, training, expected in [
        (torch.bfloat16, 8, True, "chunked"),
        (torch.bfloat16, 8, False, "chunked"),
        (torch.bfloat16, MAX_TRAINING_POSITIONS, True, "chunked"),
        (torch.bfloat16, MAX_TRAINING_POSITIONS + 1, True, "sdpa"),  # the saved probabilities would be too large
        (torch.bfloat16, MAX_TRAINING_POSITIONS + 1, False, "chunked"),  # without gradients: one chunk at a time
        (torch.float32, MIN_FP32_TRAINING_POSITIONS, True, "chunked"),
        (torch.float32, MIN_FP32_TRAINING_POSITIONS - 1, True, "sdpa"),
        (torch.float32, MIN_FP32_TRAINING_POSITIONS, False, "sdpa"),
        (torch.float64, 8, True, "sdpa"),
    ]:
        _attend(auto_attention, dtype, T, training)
        assert calls[-1] == expected, (dtype, T, training)
        assert chunked_is_faster(dtype, T, training) == (expected == "chunked")


def test_auto_decides_by_the_autocast_dtype(calls):
    """Under bf16 autocast a float32 query (a norm's output) computes in bf16, so bf16's rule applies."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _attend(auto_attention, torch.float32, 8, True)
    assert calls == ["chunked"]


def test_auto_takes_sdpa_where_the_chunked_kernel_does_not_apply(calls):
    q = torch.randn(1, 2, 8, 4, dtype=torch.bfloat16)
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    auto_attention(q, q, q, mask, 0.0)  # a padding mask
    auto_attention(q[:, :, -1:], q, q, mask[..., -1:, :], 0.0)  # one new token over a cache
    auto_attention(q, q, q, None, 0.1)  # attention dropout
    off_cpu = q.to("meta")  # any device but the CPU (meta tensors carry shapes only)
    auto_attention(off_cpu, off_cpu, off_cpu, None, 0.0)
    assert calls == ["sdpa"] * 4


def test_chunked_falls_back_only_where_it_cannot_run(calls):
    q = torch.randn(1, 2, 8, 4)
    chunked_attention(q, q, q, None, 0.0)
    chunked_attention(q, q, q, torch.ones(1, 1, 8, 8, dtype=torch.bool).tril(), 0.0)
    assert calls == ["chunked", "sdpa"]


@pytest.mark.parametrize("variant", PAIRWISE, ids=variant_id)
def test_model_gradients_equal_the_written_out_attention(variant):
    """A whole model of every variant has the same gradients through ``chunked`` as through ``reference``."""
    fast = MiniGPT(tiny_config(*variant, attn_impl="chunked", qk_norm=True))
    plain = MiniGPT(tiny_config(*variant, attn_impl="reference", qk_norm=True))
    plain.load_state_dict(fast.state_dict())
    data = torch.randint(0, fast.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(0))
    for model in (fast, plain):
        lm_loss(model(data[:, :-1])[0], data[:, 1:]).backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_second_derivative_is_refused_not_silently_zero():
    """The saved probabilities carry no graph, so differentiating the backward is an error, not a zero."""
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = chunked_causal_attention(q, k, v, chunk=4)
    (grad_q,) = torch.autograd.grad((out * out).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice a function that was marked with @once_differentiable"):
        grad_q.sum().backward()


def test_float64_is_left_alone_by_autocast():
    """Autocast casts float32 (and half types), never float64: neither does the kernel, nor ``auto``'s choice."""
    q = torch.randn(1, 2, 8, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_causal_attention(q, q, q)
        expected = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert out.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_a_model_over_several_chunks_trains_like_the_written_out_attention():
    """300 positions: three query chunks (the last one ragged) with GQA, RoPE and QK-norm in a whole model."""
    config = dict(context_length=300, qk_norm=True)
    fast = MiniGPT(tiny_config("rope", "rmsnorm", "swiglu", "gqa", attn_impl="chunked", **config))
    plain = MiniGPT(tiny_config("rope", "rmsnorm", "swiglu", "gqa", attn_impl="reference", **config))
    plain.load_state_dict(fast.state_dict())
    data = torch.randint(0, fast.config.vocab_size, (2, 301), generator=torch.Generator().manual_seed(1))
    losses = [lm_loss(model(data[:, :-1])[0], data[:, 1:]) for model in (fast, plain)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    for loss in losses:
        loss.backward()
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
