"""MiniGPT: a decoder-only Transformer language model (GPT-2, Radford et al., 2019, and its descendants).

The model reads top to bottom: token embedding (+ positions) -> ``n_layer`` pre-norm blocks -> final norm ->
output head. Every architectural choice comes from :class:`MiniGPTConfig` through small registries (norms,
positional encodings, MLPs, attention implementations); see ``norms.py``, ``positional.py``, ``mlp.py``,
``attention.py``, ``block.py``. Weight initialisation is one function, :func:`init_weights`.

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
from llm_lab.core.model.kv_cache import KVCache
from llm_lab.core.model.memory import check_memory, estimate_memory
from llm_lab.core.model.norms import Norm, build_norm
from llm_lab.core.model.positional import LearnedPositions, PositionalEncoding, build_positional_encoding
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


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
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

    # ----------------------------------------------------------------------------------------------------------
    # Input checks: every wrong input is a ValueError that says what to change, never a silent wrong answer.

    def _check_input_ids(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor (e.g. torch.long), got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            hint = " (for a single sequence use input_ids[None])" if input_ids.dim() == 1 else ""
            raise ValueError(f"input_ids must be 2-D (batch, seq_len), got shape {tuple(input_ids.shape)}{hint}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must hold at least one token, got shape {tuple(input_ids.shape)}")
        # One reduction; on a GPU it syncs, but an out-of-range id would otherwise be a device-side assert.
        # Skipped while torch.compile traces (a data-dependent branch would break the graph).
        if torch.compiler.is_compiling():
            return
        if ((input_ids < 0) | (input_ids >= self.config.vocab_size)).any():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            raise ValueError(
                f"input_ids must lie in [0, vocab_size={self.config.vocab_size}); got values in [{lo}, {hi}]"
            )

    def _check_attention_mask(self, attention_mask: torch.Tensor, batch: int, total_len: int) -> torch.Tensor:
        if not isinstance(attention_mask, torch.Tensor):
            raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != (batch, total_len):
            raise ValueError(
                f"attention_mask must have shape (batch, past_len + seq_len) = ({batch}, {total_len}), "
                f"got {tuple(attention_mask.shape)}; pass the mask of the whole sequence so far, 1 for real "
                "tokens and 0 for padding"
            )
        # An additive mask (0 / -inf, another common convention) would turn into the inverse of what was meant.
        if attention_mask.dtype != torch.bool and not torch.compiler.is_compiling():
            other = (attention_mask != 0) & (attention_mask != 1)
            if other.any():
                raise ValueError(
                    f"attention_mask must hold only 1 (real token) and 0 (padding), got the value "
                    f"{attention_mask[other][0].item()}; an additive mask (0 / -inf) is not accepted"
                )
        return attention_mask.to(torch.bool)

    def _position_ids(
        self,
        position_ids: torch.Tensor | None,
        padding_mask: torch.Tensor | None,
        batch: int,
        seq_len: int,
        past_len: int,
        device: torch.device,
    ) -> torch.Tensor:
        if position_ids is None:
            if padding_mask is not None:
                # Count real tokens so a left-padded row gets the positions of the same text run unpadded.
                full = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, past_len + T)
                return full[:, -seq_len:]
            return torch.arange(past_len, past_len + seq_len, device=device).expand(batch, seq_len)
        if not isinstance(position_ids, torch.Tensor) or position_ids.is_floating_point():
            raise ValueError("position_ids must be an integer tensor of shape (batch, seq_len)")
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if position_ids.dim() != 2 or position_ids.shape[1] != seq_len or position_ids.shape[0] not in (1, batch):
            raise ValueError(
                f"position_ids must have shape ({batch}, {seq_len}) (or (1, {seq_len})), "
                f"got {tuple(position_ids.shape)}"
            )
        if ((position_ids < 0) | (position_ids >= self.config.max_positions)).any():
            raise ValueError(
                f"position_ids must lie in [0, max_positions={self.config.max_positions}); got values in "
                f"[{int(position_ids.min())}, {int(position_ids.max())}]"
            )
        return position_ids.to(device=device, dtype=torch.long).expand(batch, seq_len)

    # ----------------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
        trace: ForwardTrace | None = None,
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

        Returns:
            ``(logits, past)``: logits ``(B, T, vocab_size)`` (``(B, min(T, logits_to_keep), vocab_size)`` with
            ``logits_to_keep``); ``past`` is the cache (mutated in place) when
            ``use_cache`` is set or a cache was passed, else ``None``.

        Raises:
            ValueError: wrong dtype/shape/range of ``input_ids``, ``logits_to_keep`` not an integer >= 0, a
                mask of the wrong shape or with values other than 0/1, a sequence longer than
                ``config.max_positions`` or the cache's ``max_len``, or a cache built for another model shape or
                batch size, filled by another model, or of another dtype/device.
        """
        self._check_input_ids(input_ids)
        if input_ids.dtype not in (torch.long, torch.int32):
            input_ids = input_ids.long()  # the embedding lookup takes only these two (uint8, int16 ids are fine too)
        B, T = input_ids.shape
        if logits_to_keep is not None and (
            isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0
        ):
            raise ValueError(
                f"logits_to_keep must be an integer >= 0 (0: all positions) or None, got {logits_to_keep!r}"
            )
        cache = past_key_values
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(
                f"past_key_values must be a KVCache (from a previous call with use_cache=True), "
                f"got {type(cache).__name__}"
            )
        if cache is None and use_cache:
            cache = KVCache(self.config, B)  # device and dtype follow the first keys written
        past_len = cache.length if cache is not None else 0
        if past_len + T > self.config.max_positions:
            room = self.config.max_positions - past_len
            hint = f"crop the input to its last {room} tokens" if past_len == 0 else f"at most {room} more fit"
            raise ValueError(
                f"sequence too long: {past_len} cached + {T} new = {past_len + T} positions > "
                f"max_positions={self.config.max_positions} (context_length={self.config.context_length}, "
                f"max_seq_len={self.config.max_seq_len}); {hint}"
            )
        if cache is not None:
            cache.check_compatible(self.config, B)
            cache.check_room(T)
            if not torch.compiler.is_compiling():  # bookkeeping on a Python object: keep it out of traced graphs
                cache.check_owner(self)
        padding_mask = None
        if attention_mask is not None:
            padding_mask = self._check_attention_mask(attention_mask, B, past_len + T).to(input_ids.device)
        position_ids = self._position_ids(position_ids, padding_mask, B, T, past_len, input_ids.device)  # (B, T)
        key_positions = cache.update_positions(position_ids) if cache is not None else position_ids  # (B, S)

        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.prev_emb is not None:
            # The previous token of the first new one is in the cache: keep every id seen so far there.
            seen = cache.update_tokens(input_ids) if cache is not None else input_ids  # (B, past_len + T)
            x = x + self.prev_emb(seen, T, padding_mask).to(x.dtype)
        pos_emb = self.positions.embedding(position_ids, x.dtype)
        if pos_emb is not None:
            x = x + pos_emb
        x = self.drop(x)
        rotary = self.positions.rotary(position_ids, x.dtype)
        bias = self.positions.attention_bias(position_ids, key_positions)  # (B, n_head, T, S) or None
        mask = build_attention_mask(T, past_len + T, padding_mask, bias, x.device)
        values = self.value_embeds(input_ids) if self.value_embeds is not None else None  # (L, B, T, kv width)
        if trace is not None:
            trace.hidden_states.append(x)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rotary, cache, None if values is None else values[i], trace)  # (B, T, C)
            if trace is not None:
                trace.hidden_states.append(x)
        if cache is not None:
            cache.advance(T)
        if logits_to_keep and logits_to_keep < T:
            x = x[:, -logits_to_keep:]  # (B, logits_to_keep, C)
        logits = self.lm_head(self.final_norm(x))  # (B, T, vocab_size)
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
            total -= self.tok_emb.weight.numel() + self._extra_lookup_parameters()
            if isinstance(self.positions, LearnedPositions):
                total -= self.positions.weight.numel()
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
        n = self.num_parameters()
        if isinstance(self.positions, LearnedPositions):
            n -= self.positions.weight.numel()
        if not self.config.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        n -= self._extra_lookup_parameters()
        return 6.0 * n + 12.0 * self.config.n_layer * self.config.n_embd * T
