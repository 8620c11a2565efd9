"""The arguments of one :class:`~llm_lab.core.model.gpt.MiniGPT` forward pass, checked in one place.

:func:`check_forward_inputs` turns what a caller passed (ids, mask, cache, positions, ``logits_to_keep``) into a
:class:`ForwardInputs`: every wrong input is a ``ValueError`` that says what to change, never a silent wrong
answer, and what the compute path reads is already normalised (ids an embedding can look up, a bool padding mask,
the position of every new token, the cache to extend). The model's ``forward`` calls it first and then only
computes.

Checks that read tensor values (ids inside the vocabulary, mask values 0/1, explicit positions in range) reduce
a tensor to one Python bool: on a GPU that is a host-device sync, which stalls the queue of kernels. They run at
the public entry, for callers who may pass anything, and are left out where they cost without protecting:

* while ``torch.compile`` traces the model (a data-dependent branch would break the graph);
* ids only, with ``check_id_range=False``: for callers that checked their ids where they entered. The trainer does
  (its dataset's largest id is checked against the vocabulary once, when the trainer is built), so a training
  step runs no range check.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from llm_lab.core.model.config import MiniGPTConfig
from llm_lab.core.model.kv_cache import KVCache

__all__ = ["ForwardInputs", "check_forward_inputs", "check_ids_in_vocab"]


class ForwardInputs(NamedTuple):
    """One forward pass's arguments, checked and normalised by :func:`check_forward_inputs`.

    A named tuple (not a dataclass) so that ``torch.compile`` traces it without a graph break.
    """

    input_ids: torch.Tensor  # (B, T) long or int32: what the embedding lookups take
    position_ids: torch.Tensor  # (B, T) long: the position of each new token
    padding_mask: torch.Tensor | None  # (B, past_len + T) bool, True at real tokens; None: no padding
    cache: KVCache | None  # the cache this pass extends (in place), or None
    past_len: int  # positions already in the cache
    logits_to_keep: int  # logits for the last this many positions; 0: all


def check_ids_in_vocab(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` unless every id lies in ``[0, vocab_size)``.

    One reduction, a host-device sync on a GPU; without it an out-of-range id is a device-side assert there (and
    an ``IndexError`` deep inside the embedding on a CPU).
    """
    if ((input_ids < 0) | (input_ids >= vocab_size)).any():
        lo, hi = int(input_ids.min()), int(input_ids.max())
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}); got values in [{lo}, {hi}]")


def _check_input_ids(input_ids: torch.Tensor, vocab_size: int, check_range: bool) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor (e.g. torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        hint = " (for a single sequence use input_ids[None])" if input_ids.dim() == 1 else ""
        raise ValueError(f"input_ids must be 2-D (batch, seq_len), got shape {tuple(input_ids.shape)}{hint}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must hold at least one token, got shape {tuple(input_ids.shape)}")
    if check_range and not torch.compiler.is_compiling():
        check_ids_in_vocab(input_ids, vocab_size)
    if input_ids.dtype not in (torch.long, torch.int32):
        input_ids = input_ids.long()  # the embedding lookup takes only these two (uint8, int16 ids are fine too)
    return input_ids


def _check_logits_to_keep(logits_to_keep: int | None) -> int:
    if logits_to_keep is None:
        return 0
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an integer >= 0 (0: all positions) or None, got {logits_to_keep!r}")
    return logits_to_keep


def _check_cache(
    model: nn.Module, past_key_values: KVCache | None, use_cache: bool, batch: int, seq_len: int
) -> KVCache | None:
    config: MiniGPTConfig = model.config
    cache = past_key_values
    if cache is not None and not isinstance(cache, KVCache):
        raise ValueError(
            f"past_key_values must be a KVCache (from a previous call with use_cache=True), got {type(cache).__name__}"
        )
    if cache is None and use_cache:
        cache = KVCache(config, batch)  # device and dtype follow the first keys written
    past_len = cache.length if cache is not None else 0
    if past_len + seq_len > config.max_positions:
        room = config.max_positions - past_len
        hint = f"crop the input to its last {room} tokens" if past_len == 0 else f"at most {room} more fit"
        raise ValueError(
            f"sequence too long: {past_len} cached + {seq_len} new = {past_len + seq_len} positions > "
            f"max_positions={config.max_positions} (context_length={config.context_length}, "
            f"max_seq_len={config.max_seq_len}); {hint}"
        )
    if cache is not None:
        cache.check_compatible(config, batch)
        cache.check_room(seq_len)
        if not torch.compiler.is_compiling():  # bookkeeping on a Python object: keep it out of traced graphs
            cache.check_owner(model)
    return cache


def _check_attention_mask(attention_mask: torch.Tensor, batch: int, total_len: int) -> torch.Tensor:
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
    position_ids: torch.Tensor | None,
    padding_mask: torch.Tensor | None,
    max_positions: int,
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
            f"position_ids must have shape ({batch}, {seq_len}) (or (1, {seq_len})), got {tuple(position_ids.shape)}"
        )
    if not torch.compiler.is_compiling() and ((position_ids < 0) | (position_ids >= max_positions)).any():
        raise ValueError(
            f"position_ids must lie in [0, max_positions={max_positions}); got values in "
            f"[{int(position_ids.min())}, {int(position_ids.max())}]"
        )
    return position_ids.to(device=device, dtype=torch.long).expand(batch, seq_len)


def check_forward_inputs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    past_key_values: KVCache | None = None,
    use_cache: bool = False,
    position_ids: torch.Tensor | None = None,
    logits_to_keep: int | None = None,
    check_id_range: bool = True,
) -> ForwardInputs:
    """Check the arguments of ``model.forward`` (see there) and normalise them for the compute path.

    The checks run in a fixed order (ids, ``logits_to_keep``, cache, length, mask, positions), so one input with
    several faults always gets the same message.

    Args:
        model: the ``MiniGPT`` about to run (its ``config``; a filled cache must be its own).
        input_ids, attention_mask, past_key_values, use_cache, position_ids, logits_to_keep: as in ``forward``.
        check_id_range: check that every id lies in ``[0, vocab_size)`` (a host-device sync on a GPU); ``False``
            only for ids already checked where they entered.

    Returns:
        The :class:`ForwardInputs`; with ``use_cache`` and no cache, a new :class:`KVCache` in ``cache``.

    Raises:
        ValueError: see ``MiniGPT.forward``.
    """
    config: MiniGPTConfig = model.config
    input_ids = _check_input_ids(input_ids, config.vocab_size, check_id_range)
    B, T = input_ids.shape
    keep = _check_logits_to_keep(logits_to_keep)
    cache = _check_cache(model, past_key_values, use_cache, B, T)
    past_len = cache.length if cache is not None else 0
    padding_mask = None
    if attention_mask is not None:
        padding_mask = _check_attention_mask(attention_mask, B, past_len + T).to(input_ids.device)
    positions = _position_ids(position_ids, padding_mask, config.max_positions, B, T, past_len, input_ids.device)
    return ForwardInputs(input_ids, positions, padding_mask, cache, past_len, keep)
