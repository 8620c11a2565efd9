"""Prompts as the decoders read them: the accepted forms of ``input_ids`` turned into one left-padded batch.

Shared by :mod:`llm_lab.core.decode.generate` (generation) and :mod:`llm_lab.core.decode.logprobs` (scoring), so
both read prompts one way and neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def is_int(value: Any) -> bool:
    """A Python int that is not a bool (``True`` is an int to Python, never a token id or a count here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def prepare_prompts(
    input_ids: Any,
    attention_mask: torch.Tensor | None,
    pad_token_id: int,
    vocab_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """Turn the accepted prompt forms into ``(ids (B, P), mask (B, P) or None, real lengths)`` on ``device``.

    The mask is ``None`` when no row is padded, so the model can take its unmasked fast path.
    """
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
            if attention_mask is not None and isinstance(attention_mask, torch.Tensor):
                attention_mask = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len) or (seq_len,), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"empty prompt: input_ids has shape {tuple(input_ids.shape)}; give at least one token")
        ids = input_ids.to(device=device, dtype=torch.long)
    elif isinstance(input_ids, Sequence) and not isinstance(input_ids, str | bytes):
        if attention_mask is not None:
            raise ValueError(
                "attention_mask is only accepted with a tensor of input_ids; lists of prompts are left-padded "
                "and masked here"
            )
        if len(input_ids) == 0:
            raise ValueError("empty prompt: input_ids is an empty list; give at least one token")
        rows = [input_ids] if all(is_int(t) for t in input_ids) else list(input_ids)
        for i, row in enumerate(rows):
            if not isinstance(row, Sequence) or isinstance(row, str | bytes) or not all(is_int(t) for t in row):
                raise ValueError(
                    "input_ids must be a list of ints, a list of lists of ints, or an integer tensor; "
                    f"prompt {i} is {type(row).__name__}"
                )
            if len(row) == 0:
                raise ValueError(f"empty prompt: prompt {i} has no tokens; give at least one token")
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        attention_mask = mask if bool((mask == 0).any()) else None
        ids = ids.to(device)
    else:
        raise ValueError(
            f"input_ids must be a list of ints, a list of lists of ints, or an integer tensor, got "
            f"{type(input_ids).__name__}"
        )

    if ((ids < 0) | (ids >= vocab_size)).any():
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(
            f"token ids must lie in [0, vocab_size={vocab_size}); got {int(bad[0])} ({bad.numel()} id(s) out of range)"
        )

    B, P = ids.shape
    if attention_mask is None:
        return ids, None, [P] * B
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != (B, P):
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids shape {(B, P)}; "
            "give one 0/1 entry per token"
        )
    mask = attention_mask.to(device=device).long()
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError(
            "attention_mask must describe left padding (zeros, then ones, in every row): new tokens are appended "
            "on the right, so right-padded prompts would put padding in the middle of the text"
        )
    lengths = mask.sum(dim=1).tolist()
    if min(lengths) == 0:
        raise ValueError(f"empty prompt: row {lengths.index(0)} of attention_mask has no real token")
    return ids, (mask if min(lengths) < P else None), lengths
