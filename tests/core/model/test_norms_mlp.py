"""Norms and MLPs against their formulas and PyTorch's own layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.mlp import MLPS, build_mlp
from llm_lab.core.model.norms import NORMS, LayerNorm, RMSNorm, build_norm


def test_layernorm_matches_torch_and_can_drop_the_bias():
    x = torch.randn(3, 5, 8)
    ours = LayerNorm(8, eps=1e-5, bias=True)
    torch.nn.init.normal_(ours.weight)
    torch.nn.init.normal_(ours.bias)
    ref = torch.nn.LayerNorm(8, eps=1e-5)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x))
    assert LayerNorm(8, bias=False).bias is None
    assert [n for n, _ in LayerNorm(8, bias=False).named_parameters()] == ["weight"]


def test_rmsnorm_by_hand():
    """x = [3, 4]: mean square = 12.5, so with eps=0 the output is x / sqrt(12.5) * weight."""
    norm = RMSNorm(2, eps=0.0)
    norm.weight.data = torch.tensor([1.0, 2.0])
    expected = torch.tensor([3.0, 8.0]) / 12.5**0.5
    torch.testing.assert_close(norm(torch.tensor([3.0, 4.0])), expected)
    assert list(dict(RMSNorm(4, bias=True).named_parameters())) == ["weight"]  # never a bias


def test_norm_registry():
    assert set(NORMS) == {"layernorm", "rmsnorm"}
    with pytest.raises(ValueError, match=r"norm='batch' is not supported; choose one of: layernorm, rmsnorm"):
        build_norm("batch", 4, 1e-5, True)


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        ("gelu", lambda m, x: m.down_proj(F.gelu(m.up_proj(x)))),
        ("gelu_tanh", lambda m, x: m.down_proj(F.gelu(m.up_proj(x), approximate="tanh"))),
        ("relu2", lambda m, x: m.down_proj(F.relu(m.up_proj(x)) ** 2)),
        ("swiglu", lambda m, x: m.down_proj(F.silu(m.gate_proj(x)) * m.up_proj(x))),
    ],
)
def test_mlp_variants_compute_their_formula(name, formula):
    mlp = build_mlp(MiniGPTConfig(n_embd=8, n_head=2, mlp=name, mlp_hidden=12))
    assert mlp.up_proj.weight.shape == (12, 8) and mlp.down_proj.weight.shape == (8, 12)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(mlp(x), formula(mlp, x))


def test_gelu_variants_differ():
    x = torch.linspace(-3, 3, 50)
    assert not torch.allclose(F.gelu(x), F.gelu(x, approximate="tanh"), atol=1e-5)
    exact, tanh = (build_mlp(MiniGPTConfig(n_embd=8, n_head=2, mlp=m)) for m in ("gelu", "gelu_tanh"))
    tanh.load_state_dict(exact.state_dict())
    x = torch.randn(4, 8) * 3
    assert not torch.equal(exact(x), tanh(x))


def test_mlp_registry_lists_valid_names():
    assert set(MLPS) == {"gelu", "gelu_tanh", "swiglu", "relu2"}
    config = MiniGPTConfig(n_embd=8, n_head=2)
    config.mlp = "geglu"
    with pytest.raises(
        ValueError, match=r"mlp='geglu' is not supported; choose one of: gelu, gelu_tanh, swiglu, relu2"
    ):
        build_mlp(config)
