"""The variant matrix shared by the model tests: tiny configs and an all-pairs subset of the full product.

The axes are the registries themselves, so a variant added to a registry runs through every matrix test with no
edit here (``test_registries.py`` checks that each entry is in the default suite's subset).
"""

from __future__ import annotations

import itertools

from llm_lab.core.model.attention import ATTENTION_IMPLS
from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.mlp import MLPS
from llm_lab.core.model.norms import NORMS
from llm_lab.core.model.positional import POSITIONAL_ENCODINGS

POS = tuple(POSITIONAL_ENCODINGS)
NORM = tuple(NORMS)
MLP = tuple(MLPS)
# attention type (a key of attention.ATTENTION_TYPES, a head layout) -> n_kv_head for n_head = 4
ATTN = {"mha": 4, "gqa": 2, "mqa": 1}
# Attention implementations: every one is compared with the written-out ``reference`` over the matrix.
ATTN_IMPLS = tuple(ATTENTION_IMPLS)

FULL_PRODUCT = list(itertools.product(POS, NORM, MLP, ATTN))


def _all_pairs(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Greedy all-pairs cover: every value of every factor meets every value of every other factor at least once."""

    def pairs(row: tuple[str, ...]) -> set[tuple[int, str, int, str]]:
        return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}

    uncovered = set().union(*(pairs(r) for r in rows))
    chosen = []
    while uncovered:
        best = max(rows, key=lambda r: len(pairs(r) & uncovered))  # first best in product order: deterministic
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


PAIRWISE = _all_pairs(FULL_PRODUCT)


def variant_id(variant: tuple[str, ...]) -> str:
    return "-".join(variant)


def tiny_config(pos: str, norm: str, mlp: str, attn: str, **overrides) -> MiniGPTConfig:
    """A 2-layer, 32-wide model over 37 ids (an odd vocab catches reshapes that assume powers of two)."""
    kwargs = dict(
        vocab_size=37,
        context_length=24,
        n_layer=2,
        n_head=4,
        n_kv_head=ATTN[attn],
        n_embd=32,
        mlp_hidden=48,
        pos_encoding=pos,
        norm=norm,
        mlp=mlp,
        bias=norm == "layernorm",
        tie_embeddings=mlp != "swiglu",
    )
    kwargs.update(overrides)
    return MiniGPTConfig(**kwargs)


# The speedrun options: each is switched on over the base variant; the dict is what it sets.
SPEEDRUN_OPTIONS = {
    "zero_init_residual": {"zero_init_residual": True},
    "zero_init_head": {"zero_init_head": True, "tie_embeddings": False},
    "bigram_embedding": {"bigram_embedding": True},
    "value_embeddings": {"value_embeddings": True},
}


def incremental_logits(model, x, prefix: int = 5):
    """Logits of ``x`` (B, T) computed the decoding way: the first ``prefix`` tokens at once into a KV cache, then
    one token at a time. Returns ``(logits (B, T, V), cache)``; the caller compares them with the full forward."""
    import torch

    with torch.no_grad():
        step, cache = model(x[:, :prefix], use_cache=True)
        pieces = [step]
        for t in range(prefix, x.shape[1]):
            step, cache = model(x[:, t : t + 1], past_key_values=cache)
            pieces.append(step)
    return torch.cat(pieces, dim=1), cache
