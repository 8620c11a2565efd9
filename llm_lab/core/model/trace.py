"""What a forward pass can record about its inside, for people who want to look: :class:`ForwardTrace`.

Pass ``trace=ForwardTrace()`` to :meth:`MiniGPT.forward <llm_lab.core.model.gpt.MiniGPT.forward>` and it fills:

* ``attentions``: one ``(B, n_head, T, S)`` float32 tensor per layer, the attention probabilities
  ``softmax(q k^T / sqrt(hd) + mask)`` of the ``T`` new queries over all ``S`` keys (cached prefix included).
  They come from the written-out (reference) attention path, which a traced pass always takes; the fused
  kernel never materialises them. Padded keys get probability 0; a left-padding *query* sees only itself.
  Hugging Face's ``output_attentions`` (eager attention) gives the same numbers.
* ``hidden_states``: ``n_layer + 1`` tensors ``(B, T, C)``: the residual stream after the embeddings and after
  each block, before the final norm. Reading them through the final norm and the output head is the logit lens
  (nostalgebraist, 2020, "interpreting GPT: the logit lens"); see :mod:`llm_lab.core.inspect`.

Without a trace nothing is recorded and the configured attention implementation (``auto`` by default) runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ForwardTrace"]


@dataclass
class ForwardTrace:
    """Filled in place by one traced forward pass (see the module docs for the shapes)."""

    attentions: list[torch.Tensor] = field(default_factory=list)
    hidden_states: list[torch.Tensor] = field(default_factory=list)
