"""Traced forward passes: attention probabilities equal Hugging Face's ``output_attentions`` (eager attention) on
converted GPT-2 and Llama models (GQA and MQA included), with padding and with the KV cache; the residual stream
read through the final norm and head at the last layer is the model's output; a trace changes no logits.
"""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.model import ForwardTrace, MiniGPT, MiniGPTConfig
from llm_lab.core.package.hf import from_hf_model

transformers = pytest.importorskip("transformers")

VOCAB, B, T = 61, 3, 10
ATOL = 1e-5


def _randomize(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_scale = p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight")
            p.copy_(1.0 + 0.2 * noise if is_scale else 0.2 * noise)


def _gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, attn_implementation="eager",
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _llama(n_kv_head: int) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_head, max_position_embeddings=32, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, attn_implementation="eager",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


FAMILIES = {"gpt2": _gpt2, "llama-gqa": lambda: _llama(2), "llama-mqa": lambda: _llama(1)}


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def pair(request):
    hf = FAMILIES[request.param]()
    _randomize(hf)
    hf.eval()
    ours = from_hf_model(hf)
    assert ours.config.attn_impl == "auto"  # the default fast path; the trace still gives the probabilities
    return hf, ours


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_attentions_equal_hf_output_attentions(pair):
    hf, ours = pair
    ids = _ids(1)
    with torch.no_grad():
        expected = hf(input_ids=ids, output_attentions=True).attentions
        trace = ForwardTrace()
        ours(ids, trace=trace)
    assert len(trace.attentions) == len(expected) == 2
    for got, want in zip(trace.attentions, expected, strict=True):
        assert got.shape == want.shape == (B, 4, T, T)
        assert (got - want).abs().max().item() <= ATOL
    assert float(expected[0][:, :, -1].max()) < 0.99  # the last query spreads its attention: not a trivial match


def test_attentions_respect_a_padding_mask(pair):
    hf, ours = pair
    ids = _ids(2)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, :1] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, position_ids=positions, output_attentions=True).attentions
        trace = ForwardTrace()
        ours(ids, attention_mask=mask, trace=trace)
    real = mask.bool()
    for got, want in zip(trace.attentions, expected, strict=True):
        got, want = got.transpose(1, 2)[real], want.transpose(1, 2)[real]  # (real queries, n_head, S)
        assert (got - want).abs().max().item() <= ATOL
        padded_keys = ~real[0]
        assert float(trace.attentions[0][0][..., padded_keys][:, 4:].abs().max()) == 0.0  # padding gets nothing


def test_attentions_with_the_kv_cache_are_the_rows_of_the_full_pass(pair):
    hf, ours = pair
    ids = _ids(3)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = hf(input_ids=ids, attention_mask=mask, position_ids=positions, output_attentions=True).attentions
        _, cache = ours(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        for t in range(6, T):
            trace = ForwardTrace()
            ours(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache, trace=trace)
            for got, want in zip(trace.attentions, full, strict=True):
                assert got.shape == (B, 4, 1, t + 1)
                assert (got[:, :, 0] - want[:, :, t, : t + 1]).abs().max().item() <= ATOL


@pytest.mark.parametrize("pos_encoding", ["learned", "rope", "alibi"])
def test_a_trace_changes_nothing_and_the_last_lens_row_is_the_output(pos_encoding):
    config = MiniGPTConfig(vocab_size=VOCAB, context_length=16, n_layer=3, n_head=4, n_kv_head=2, n_embd=32,
                           pos_encoding=pos_encoding)  # fmt: skip
    torch.manual_seed(0)
    model = MiniGPT(config).eval()
    ids = _ids(4)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :2] = 0
    with torch.no_grad():
        plain, _ = model(ids, attention_mask=mask)
        trace = ForwardTrace()
        traced, _ = model(ids, attention_mask=mask, trace=trace)
        lens_last = model.lm_head(model.final_norm(trace.hidden_states[-1]))
    assert torch.allclose(traced, plain, atol=1e-5, rtol=0)
    assert torch.equal(lens_last, traced)
    assert len(trace.hidden_states) == config.n_layer + 1
    assert all(tuple(a.shape) == (B, 4, T, T) for a in trace.attentions)
    row_sums = torch.stack(trace.attentions).sum(-1)
    assert torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-5)
    assert float(torch.stack(trace.attentions).triu(1).abs().max()) == 0.0  # causal: nothing from the future
