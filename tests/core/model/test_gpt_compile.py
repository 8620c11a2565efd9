"""``torch.compile(model, fullgraph=True)`` traces forward and backward of every registry variant in one graph.

``fullgraph=True`` turns any graph break (a Python-side branch on a tensor value, an ``.item()``, an untraceable
call) into an error, so these tests fail the day a variant brings one in. The variants come from the registries
themselves, so a new norm, MLP, positional encoding or attention implementation is covered without touching this
file. To keep compiling affordable on a CPU, the cases cycle through the registries side by side (case ``i``
takes entry ``i`` of each, wrapping around): every entry of every registry, and each speed-run option on and
off, is compiled at least once in ``max(len(registry))`` compilations rather than their product. The matrix
compiles with ``aot_eager`` (Dynamo's tracing, where graph breaks are found, plus AOTAutograd's joint forward and
backward graph, without inductor's code generation); one case goes through the default inductor backend too.
"""

from __future__ import annotations

import pytest
import torch

from llm_lab.core.model import MiniGPT, MiniGPTConfig, lm_loss
from llm_lab.core.model.attention import ATTENTION_IMPLS
from llm_lab.core.model.config import ATTENTION_TYPES
from llm_lab.core.model.mlp import MLPS
from llm_lab.core.model.norms import NORMS
from llm_lab.core.model.positional import POSITIONAL_ENCODINGS
from llm_lab.core.train.device import compile_unsupported_reason

N_HEAD = 4
KV_HEADS = (N_HEAD, 2, 1)  # MHA, GQA, MQA
OPTIONS = ("qk_norm", "bigram_embedding", "value_embeddings")  # the speed-run switches that change the forward

AXES: dict[str, list] = {
    "pos_encoding": list(POSITIONAL_ENCODINGS),
    "norm": list(NORMS),
    "mlp": list(MLPS),
    "attn_impl": list(ATTENTION_IMPLS),
    "n_kv_head": list(KV_HEADS),
}


def tiny(**choices) -> MiniGPTConfig:
    return MiniGPTConfig(
        vocab_size=37, context_length=12, n_layer=2, n_head=N_HEAD, n_embd=16, mlp_hidden=24, **choices
    )


def _cases() -> list[dict]:
    n = max(len(values) for values in AXES.values())
    cases = []
    for i in range(n):
        case = {axis: values[i % len(values)] for axis, values in AXES.items()}
        case.update({option: (i + k) % 2 == 0 for k, option in enumerate(OPTIONS)})
        case["dropout"] = 0.1 if i % 2 else 0.0  # training-mode dropout in half the cases (no parity check there)
        cases.append(case)
    return cases


CASES = _cases()


def _case_id(case: dict) -> str:
    flags = [option for option in OPTIONS if case[option]] + (["dropout"] if case["dropout"] else [])
    kv = {N_HEAD: "mha", 1: "mqa"}.get(case["n_kv_head"], "gqa")
    return "-".join([case["pos_encoding"], case["norm"], case["mlp"], kv, case["attn_impl"], *flags])


def test_the_cases_cover_every_registry_entry_and_option():
    """Guards the cycling above: every value of every axis and both settings of every option appear."""
    for axis, values in AXES.items():
        assert {case[axis] for case in CASES} == set(values), axis
    for option in (*OPTIONS, "dropout"):
        assert {bool(case[option]) for case in CASES} == {True, False}, option
    assert {tiny(n_kv_head=n).attention_type for n in KV_HEADS} == set(ATTENTION_TYPES)


def _forward_backward(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    logits, _ = model(ids)
    lm_loss(logits[:, :-1], ids[:, 1:]).backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _check_compiled(case: dict, backend: str) -> None:
    torch.compiler.reset()  # each case compiles afresh, never hitting the recompile limit of MiniGPT.forward
    torch.manual_seed(0)
    eager = MiniGPT(tiny(**case))
    with torch.no_grad():  # the speed-run tables and zero-init branches start at zero: give them weight
        for p in eager.parameters():
            p.normal_(0.0, 0.2)
    compiled_model = MiniGPT(eager.config)
    compiled_model.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 37, (2, 12))
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)
    logits, grads = _forward_backward(compiled, ids)  # a graph break raises here
    assert len(grads) == len(list(compiled_model.parameters()))
    if case["dropout"] == 0.0:
        want_logits, want_grads = _forward_backward(eager, ids)
        torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
        for got, want in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_variant_compiles_forward_and_backward_without_a_graph_break(case):
    _check_compiled(case, "aot_eager")


@pytest.mark.slow
def test_the_default_backend_compiles_a_model_in_one_graph():
    if compile_unsupported_reason(torch.device("cpu")) is not None:
        pytest.skip("torch.compile cannot run on this machine (no C++ compiler)")
    _check_compiled(CASES[0], "inductor")
