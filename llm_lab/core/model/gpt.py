"""MiniGPT: a decoder-only Transformer language model (GPT-2, Radford et al., 2019, and its descendants).

The model reads top to bottom: token embedding (+ positions) -> ``n_layer`` pre-norm blocks -> final norm ->
output head; ``forward`` is that compute path, after one call that checks its arguments
(:func:`~llm_lab.core.model.inputs.check_forward_inputs`). Every architectural choice comes from
:class:`MiniGPTConfig` through small registries (norms, positional encodings, MLPs, attention implementations);
see ``norms.py``, ``positional.py``, ``mlp.py``, ``attention.py``, ``block.py``. Weight initialisation is one
function, :func:`init_weights`.

Usage::

    logits, past = model(input_ids)                                     # (B, T, vocab_size), None
    logits, past = model(input_ids, attention_mask=mask, use_cache=True)  # past: a KVCache
    logits, past = model(next_ids, attention_mask=longer_mask, past_key_values=past)
    logits, _ = model(input_ids, trace=trace)  # trace = ForwardTrace(): .attentions, .hidden_states filled
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm_lab.core.model.attention import build_attention_mask
from llm_lab.core.model.block import Block
from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.embeddings import PreviousTokenEmbedding, ValueEmbeddings
from llm_lab.core.model.inputs import check_forward_inputs
from llm_lab.core.model.kv_cache import KVCache
from llm_lab.core.model.memory import check_memory, estimate_memory
from llm_lab.core.model.norms import Norm, build_norm
from llm_lab.core.model.positional import PositionalEncoding, build_positional_encoding
from llm_lab.core.model.trace import ForwardTrace

__all__ = ["ForwardTrace", "KVCache", "MiniGPT", "MiniGPTConfig", "init_weights", "lm_loss"]


def init_weights(model: MiniGPT) -> None:
    """Initialise every weight of ``model`` in place (called by ``MiniGPT.__init__``).

    ``std`` is ``config.init_std`` (0.02, GPT-2's value); ``L`` is ``config.n_layer``. What depends on a variant is
    asked of its class, never found by name: attention and MLP modules list their ``residual_projections``, and
    norms and positional encodings reset their own weights (``reset_parameters``).

    =========================================  ==========================  ==========================================
    weights                                    init                        why
    =========================================  ==========================  ==========================================
    token embedding (= output head when tied)  normal(0, std)              small logits at first: loss ~ ln(vocab)
    learned position table                     normal(0, std)              same scale as the token embedding
                                                                           (``LearnedPositions.reset_parameters``)
    q/k/v projections, MLP up/gate, untied     normal(0, std)              GPT-2's default for every linear layer
    output head
    residual projections (attention            normal(0, std / sqrt(2L))   GPT-2's scaled residual init: 2L branches
    ``o_proj``, MLP ``down_proj``: each                                    add to the residual stream, so its
    module's ``residual_projections``)                                     variance stays ~ constant with depth
    linear biases                              zeros                       no preferred direction at the start
    residual projections with                  zeros                       every block starts as the identity; the
    ``zero_init_residual``                                                 branches grow from the gradient (speedrun)
    output head with ``zero_init_head``        zeros                       uniform predictions at step 0, exactly
                                                                           ln(vocab) loss (speedrun)
    previous-token and value embeddings        zeros                       the model starts as the plain one
    norm scales / shifts (incl. QK-norm)       ones / zeros                identity transform at the start
                                                                           (``Norm.reset_parameters``)
    =========================================  ==========================  ==========================================
    """
    config = model.config
    std = config.init_std
    residual_std = std / math.sqrt(2 * config.n_layer)
    residual = {
        module.get_submodule(projection)
        for module in model.modules()
        for projection in getattr(module, "residual_projections", ())
    }
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            is_residual = module in residual
            if (is_residual and config.zero_init_residual) or (name == "lm_head" and config.zero_init_head):
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, PreviousTokenEmbedding | ValueEmbeddings):
            nn.init.zeros_(module.weight)
        elif isinstance(module, Norm | PositionalEncoding):
            module.reset_parameters()


IGNORE_INDEX = -100  # a target that is not scored (padding; a chat's prompt tokens): cross_entropy's default


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not ``ignore_index``.

    Args:
        logits: ``(B, T, vocab_size)`` (any float dtype; the loss is computed in float32).
        targets: ``(B, T)`` integer ids, already shifted (target ``t`` is the token after input ``t``); padded
            positions hold ``ignore_index``.
        ignore_index: target value that contributes nothing.

    Returns:
        A scalar: the mean over counted targets (0 when every target is ignored, rather than NaN).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"lm_loss expects logits (B, T, vocab) and targets (B, T); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if targets.is_floating_point():
        raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}")
    flat_targets = targets.reshape(-1).long()
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), flat_targets, ignore_index=ignore_index, reduction="sum"
    )
    count = (flat_targets != ignore_index).sum().clamp(min=1)
    return total / count


class MiniGPT(nn.Module):
    """Decoder-only Transformer language model.

    Args:
        config: the architecture; kept as ``model.config``.

    Raises:
        ValueError: the weights alone would not fit in the memory of the default device (see
            :mod:`llm_lab.core.model.memory`).
    """

    def __init__(self, config: MiniGPTConfig) -> None:
        super().__init__()
        if not isinstance(config, MiniGPTConfig):
            raise ValueError(f"MiniGPT needs a MiniGPTConfig, got {type(config).__name__}")
        # Refuse a model that cannot fit before allocating any of it (shapes on the meta device cost nothing).
        if torch.get_default_device().type != "meta":
            check_memory(estimate_memory(config), torch.get_default_device())
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.positions = build_positional_encoding(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.final_norm = build_norm(config.norm, config.n_embd, config.norm_eps, config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.prev_emb = PreviousTokenEmbedding(config) if config.bigram_embedding else None
        self.value_embeds = ValueEmbeddings(config) if config.value_embeddings else None
        if config.tie_embeddings:
            # Weight tying (Press & Wolf, 2017): one tensor is both the input table and the output head.
            self.lm_head.weight = self.tok_emb.weight
        init_weights(self)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
        trace: ForwardTrace | None = None,
        *,
        check_id_range: bool = True,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Next-token logits for every position.

        Args:
            input_ids: ``(B, T)`` integer token ids in ``[0, vocab_size)``. 1-D input is rejected (use
                ``input_ids[None]``) so that a batch of one and a sequence are never confused.
            attention_mask: ``(B, past_len + T)``, 1 (or True) for real tokens and 0 for padding, covering the
                cached prefix and the new tokens (Hugging Face's convention). Padded keys are never attended to;
                logits at padded positions are meaningless.
            past_key_values: a :class:`KVCache` from an earlier call (or built by hand); it is extended in place.
            use_cache: allocate a cache (``max_len = config.max_positions``) when none is passed.
            position_ids: ``(B, T)`` positions of the new tokens. Default: with a mask,
                ``clamp(cumsum(mask) - 1, min=0)`` over the full mask (last ``T`` columns), so left-padded rows
                get the same positions as unpadded ones; without one, ``past_len .. past_len + T - 1``.
            logits_to_keep: compute logits for the last this many positions only (``None`` or ``0``: all, as in
                Hugging Face). Generation needs just the last one, which saves the output head's work over a long
                prompt.
            trace: a :class:`ForwardTrace` to record what happens inside (each layer's attention probabilities,
                through the written-out attention path, and the residual stream); None (the default) records
                nothing and runs the configured attention implementation.
            check_id_range: check that every id lies in ``[0, vocab_size)``, a reduction that is a host-device
                sync on a GPU. ``False`` is for callers that checked their ids where they entered (the trainer
                checks its dataset once); an out-of-range id is then undefined behaviour.

        Returns:
            ``(logits, past)``: logits ``(B, T, vocab_size)`` (``(B, min(T, logits_to_keep), vocab_size)`` with
            ``logits_to_keep``); ``past`` is the cache (mutated in place) when
            ``use_cache`` is set or a cache was passed, else ``None``.

        Raises:
            ValueError: wrong dtype/shape/range of ``input_ids``, ``logits_to_keep`` not an integer >= 0, a
                mask of the wrong shape or with values other than 0/1, a sequence longer than
                ``config.max_positions`` or the cache's ``max_len``, or a cache built for another model shape or
                batch size, filled by another model, or of another dtype/device. All checked up front, in
                :func:`~llm_lab.core.model.inputs.check_forward_inputs`.
        """
        ids, positions, padding, cache, past_len, keep = check_forward_inputs(
            self, input_ids, attention_mask, past_key_values, use_cache, position_ids, logits_to_keep, check_id_range
        )
        T = ids.shape[1]
        key_positions = cache.update_positions(positions) if cache is not None else positions  # (B, S), S = past + T

        x = self.tok_emb(ids)  # (B, T, C)
        if self.prev_emb is not None:  # the first new token's predecessor is in the cache: keep every id seen there
            seen = cache.update_tokens(ids) if cache is not None else ids  # (B, S)
            x = x + self.prev_emb(seen, T, padding).to(x.dtype)  # (B, T, C)
        pos_emb = self.positions.embedding(positions, x.dtype)  # (B, T, C), or None
        x = self.drop(x if pos_emb is None else x + pos_emb)
        rotary = self.positions.rotary(positions, x.dtype)  # (cos, sin), each (B, T, head_dim), or None
        bias = self.positions.attention_bias(positions, key_positions)  # (B, n_head, T, S), or None
        mask = build_attention_mask(T, past_len + T, padding, bias, x.device)  # (B, 1 or n_head, T, S), or None
        values = self.value_embeds(ids) if self.value_embeds is not None else None  # (L, B, T, n_kv_head * hd)
        if trace is not None:
            trace.hidden_states.append(x)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rotary, cache, None if values is None else values[i], trace)  # (B, T, C)
            if trace is not None:
                trace.hidden_states.append(x)
        if cache is not None:
            cache.advance(T)
        if 0 < keep < T:
            x = x[:, -keep:]  # (B, keep, C)
        logits = self.lm_head(self.final_norm(x))  # (B, T or keep, vocab_size)
        return logits, cache

    # ----------------------------------------------------------------------------------------------------------

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied embedding/head counted once).

        Args:
            non_embedding: leave out the token-embedding table and the learned position table (Kaplan et al.,
                2020, count model size this way). An untied output head is still counted.
        """
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.tok_emb.weight.numel() + self.positions.lookup_parameters() + self._extra_lookup_parameters()
        return total

    def _extra_lookup_parameters(self) -> int:
        """Parameters of the optional previous-token and value embeddings: lookups, no matmul FLOPs."""
        return sum(m.weight.numel() for m in (self.prev_emb, self.value_embeds) if m is not None)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): ``6 N + 12 L C T`` (Kaplan et al., 2020; PaLM, App. B).

        ``N`` counts the parameters that take part in a matrix multiply: all parameters except the learned
        position table and, when untied, the input embedding (lookups cost no FLOPs); the output head is in.
        A matmul with ``n`` weights costs ``2n`` FLOPs per token forward and ``4n`` backward, hence ``6N``.
        Attention's ``q k^T`` and ``probs v`` add ``2 * 2 * T * C`` per layer forward (``C = n_embd``), tripled
        for the backward: ``12 L C T``, counted over the full ``T x T`` square as is conventional (a causal
        kernel skips about half). Norms, activations and softmax are ignored. Multiply by tokens per second and
        divide by the hardware peak to get MFU.

        Args:
            seq_len: the attention length ``T``; defaults to ``config.context_length``.
        """
        T = self.config.context_length if seq_len is None else seq_len
        n = self.num_parameters() - self.positions.lookup_parameters()
        if not self.config.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        n -= self._extra_lookup_parameters()
        return 6.0 * n + 12.0 * self.config.n_layer * self.config.n_embd * T
