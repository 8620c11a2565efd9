import pytest
import torch

from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.train import TrainerConfig
from llm_lab.core.train.muon import NS_COEFFICIENTS, Muon, orthogonalize
from llm_lab.core.train.optim import (
    apply_config,
    build_optimizer,
    make_optimizer,
    muon_ns_dtype,
    muon_param_groups,
    param_groups,
    set_step_values,
)


def _model(**kw):
    return MiniGPT(MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, n_embd=8, **kw))


def test_matrices_decay_vectors_do_not_and_tied_weights_appear_once():
    model = _model(tie_embeddings=True)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert id(model.tok_emb.weight) in {id(p) for p in decay["params"]}


def test_fused_adamw_on_cpu_and_foreach_when_asked():
    model = _model()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, device=torch.device("cpu"))
    assert opt.defaults["fused"] is True
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    opt = build_optimizer(
        model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, device=torch.device("cpu"), fused=False
    )
    assert not opt.defaults["fused"]


# ------------------------------------------------------------------------------------------------------------ Muon
A, B, C = NS_COEFFICIENTS


def _p(s: float) -> float:
    return A * s + B * s**3 + C * s**5


def test_one_newton_schulz_step_by_hand():
    """G = diag(3, 4): Frobenius norm 5, so X0 = diag(0.6, 0.8); one step maps each singular value s to
    a s + b s^3 + c s^5 with (a, b, c) = (3.4445, -4.7750, 2.0315):

        0.6 -> 2.0667 - 1.0314 + 0.15796944 = 1.19326944
        0.8 -> 2.7556 - 2.4448 + 0.66568192 = 0.97648192
    """
    out = orthogonalize(torch.diag(torch.tensor([3.0, 4.0])), steps=1)
    torch.testing.assert_close(out, torch.diag(torch.tensor([1.19326944, 0.97648192])), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4)])
def test_newton_schulz_matches_the_svd_form_and_stacks(shape):
    """Five steps act on the singular values alone: NS(G) = U p^5(S / |G|_F) V^T, with U, S, V from the SVD, for
    wide, square and tall matrices; a stack is each matrix on its own; every singular value ends in ~[0.7, 1.2]."""
    g = torch.Generator().manual_seed(0)
    mats = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    out = orthogonalize(mats.float(), steps=5)
    for m, o in zip(mats, out, strict=True):
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        x = s / torch.linalg.norm(m)
        for _ in range(5):
            x = _p(x)
        torch.testing.assert_close(o.double(), u @ torch.diag(x) @ vh, atol=2e-5, rtol=0)
        torch.testing.assert_close(orthogonalize(m.float()), o, atol=1e-5, rtol=0)  # alone == in the stack
        sv = torch.linalg.svdvals(o.double())
        assert sv.min() > 0.65 and sv.max() < 1.25, sv


def test_muon_step_is_the_orthogonalised_nesterov_momentum():
    """First step from a zero buffer: M = (1 - mu) G; Nesterov U = (1 - mu) G + mu M = (1 - mu)(1 + mu) G, and
    NS is scale-invariant, so W1 = W0 - lr * sqrt(rows / cols) * NS(G) for a tall matrix (6 x 3: factor sqrt 2)."""
    w = torch.nn.Parameter(torch.randn(6, 3, generator=torch.Generator().manual_seed(1)))
    w0 = w.detach().clone()
    w.grad = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    opt = Muon([{"params": [w], "use_muon": True}], lr=0.1, momentum=0.9)
    opt.step()
    torch.testing.assert_close(w.detach(), w0 - 0.1 * 2**0.5 * orthogonalize(w.grad), atol=1e-6, rtol=0)
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], 0.1 * w.grad)


def test_muon_refuses_vectors_in_muon_groups():
    with pytest.raises(ValueError, match=r"Muon updates 2-D matrices only; got a parameter of shape \(4,\)"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(4))], "use_muon": True}], lr=0.1)


def test_the_adamw_groups_of_muon_follow_torch_adamw():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = Muon([{"params": a, "use_muon": False}], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8)
    ref = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, foreach=False)
    for i in range(4):
        for pa, pb in zip(a, b, strict=True):
            pa.grad = pb.grad = torch.randn(pa.shape, generator=torch.Generator().manual_seed(i))
        ours.step()
        ref.step()
    for pa, pb in zip(a, b, strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-7, rtol=1e-6)


def test_muon_takes_the_blocks_linear_weights_and_adamw_the_rest():
    model = _model(tie_embeddings=False)
    muon, decay, no_decay = muon_param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in muon["params"]) == sorted(
        n for n, m in model.blocks.named_modules() for n in [f"blocks.{n}.weight"] if isinstance(m, torch.nn.Linear)
    )
    assert all(n.startswith("blocks.") and ("proj" in n) for n in map(names.get, map(id, muon["params"])))
    assert {names[id(p)] for p in decay["params"]} == {"tok_emb.weight", "lm_head.weight", "positions.weight"}
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert muon["use_muon"] and not decay["use_muon"] and not no_decay["use_muon"]
    assert len(muon["params"]) + len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match=r"train.optimizer='muon' needs a model with .blocks"):
        muon_param_groups(torch.nn.Linear(3, 3), 0.1)


def test_the_config_picks_the_optimizer_and_each_group_gets_its_learning_rate():
    model = _model()
    config = TrainerConfig(optimizer="muon", lr=2e-3, muon_lr=0.04, muon_momentum_warmup_steps=10)
    opt = make_optimizer(model, config, torch.device("cpu"))
    assert isinstance(opt, Muon)
    set_step_values(opt, config, step=5, lr=1e-3)  # half the peak, halfway through the momentum warm-up
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 1e-3, 1e-3])
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.90)
    adamw = make_optimizer(model, TrainerConfig(), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr_scale"] == 1.0
    with pytest.raises(ValueError, match=r"was the checkpoint written with another optimizer"):
        apply_config(adamw, config)


def test_newton_schulz_dtype_auto_follows_the_hardware(monkeypatch):
    """bf16 where it is fast (CUDA, CPUs with bf16 matrix units), else fp32; bf16 stays close to fp32."""
    import llm_lab.core.train.precision as precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: frozenset({"avx512_bf16"}))
    assert muon_ns_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: frozenset())
    assert muon_ns_dtype("auto", cpu) == torch.float32
    assert muon_ns_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert muon_ns_dtype("fp32", torch.device("cuda")) == torch.float32
    assert muon_ns_dtype("bf16", cpu) == torch.bfloat16
    m = torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(0))
    low = orthogonalize(m, dtype=torch.bfloat16)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, orthogonalize(m), atol=0.05, rtol=0)  # bf16 keeps 8 bits: ~0.4% per product
