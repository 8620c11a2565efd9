"""A preallocated (static) key/value cache for incremental decoding.

Autoregressive decoding recomputes nothing: each new token's keys and values are written into fixed
buffers of shape ``(B, n_kv_head, max_len, head_dim)`` per layer, and attention reads the filled prefix.
Storing ``n_kv_head`` (not ``n_head``) heads is where GQA/MQA save memory (Ainslie et al., 2023, "GQA").

Contract (the decoding code relies on it):

* ``KVCache(config, batch_size, max_len=None, device=None, dtype=None)``; ``max_len`` defaults to
  ``config.max_positions``. With ``device``/``dtype`` left ``None`` the buffers are allocated on the first
  ``update`` with the device and dtype of the keys written there, so the cache follows the model (including
  autocast). The model allocates one itself when called with ``use_cache=True`` and no cache.
* ``length``: how many positions are filled. ``update(layer_idx, k, v)`` writes ``k, v`` of shape
  ``(B, n_kv_head, T, head_dim)`` at ``[length, length + T)`` and returns views of ``[0, length + T)``; the
  model calls ``advance(T)`` once after all layers. ``reset()`` empties the cache for reuse (no reallocation).
* The cache also remembers each filled position's position id (``positions``), which ALiBi needs for its
  distances when earlier tokens are no longer recomputed.
* A filled cache belongs to the model that filled it (:meth:`check_owner`): keys computed by another model of the
  same shape would give wrong logits without any error, so the model refuses them. An empty (new or reset) cache
  may be filled by any model.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # config.py imports attention.py, which imports this module
    from llm_lab.core.model.config import MiniGPTConfig

__all__ = ["KVCache", "SlotKVCache"]


class KVCache:
    """Static per-layer key/value buffers plus the position ids of the filled slots.

    Args:
        config: the model's config (layers, key/value heads and head size are taken from it).
        batch_size: rows in the batch the cache serves.
        max_len: capacity in positions; defaults to ``config.max_positions``.
        device: buffer device; ``None`` follows the first keys written.
        dtype: buffer dtype; ``None`` follows the first keys written.
    """

    def __init__(
        self,
        config: MiniGPTConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        max_len = config.max_positions if max_len is None else max_len
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(max_len, int) or max_len <= 0:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
        if max_len > config.max_positions:
            raise ValueError(
                f"max_len ({max_len}) exceeds the model's max_positions ({config.max_positions}); "
                "the model cannot attend over more positions than that"
            )
        self.n_layer = config.n_layer
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self.positions: torch.Tensor | None = None  # (B, max_len) long, once allocated
        self.tokens: torch.Tensor | None = None  # (B, max_len) long ids, only for models that look back (bigram)
        self._owner: weakref.ref | None = None  # the model whose keys fill the cache (weak: never keeps it alive)
        if device is not None or dtype is not None:
            self._allocate(
                torch.device(device) if device is not None else torch.device("cpu"),
                dtype if dtype is not None else torch.get_default_dtype(),
            )

    def _allocate(self, device: torch.device, dtype: torch.dtype) -> None:
        shape = (self.batch_size, self.n_kv_head, self.max_len, self.head_dim)
        self._keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.n_layer)]
        self._values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.n_layer)]
        if self.positions is None:
            self.positions = torch.zeros(self.batch_size, self.max_len, device=device, dtype=torch.long)

    @property
    def device(self) -> torch.device | None:
        """Device of the buffers (``None`` before the first write when it was not given)."""
        return self._keys[0].device if self._keys else None

    @property
    def dtype(self) -> torch.dtype | None:
        """Dtype of the key/value buffers (``None`` before the first write when it was not given)."""
        return self._keys[0].dtype if self._keys else None

    def check_compatible(self, config: MiniGPTConfig, batch_size: int) -> None:
        """Raise ``ValueError`` unless this cache fits a model with ``config`` and a batch of ``batch_size``."""
        ours = (self.n_layer, self.n_kv_head, self.head_dim)
        theirs = (config.n_layer, config.n_kv_head, config.head_dim)
        if ours != theirs:
            raise ValueError(
                "past_key_values was built for another model shape: (n_layer, n_kv_head, head_dim) = "
                f"{ours} in the cache, {theirs} in this model"
            )
        if self.batch_size != batch_size:
            raise ValueError(
                f"past_key_values was built for batch size {self.batch_size}, but input_ids has batch size {batch_size}"
            )

    def check_owner(self, model: torch.nn.Module) -> None:
        """Raise ``ValueError`` if another model filled this cache; an empty cache becomes ``model``'s."""
        if self.length == 0:
            self._owner = weakref.ref(model)
        elif self._owner is not None and self._owner() is not model:
            raise ValueError(
                "past_key_values was filled by another model (its keys and values would give wrong logits here); "
                "use a new KVCache or reset() this one"
            )

    def check_room(self, new_tokens: int) -> None:
        """Raise ``ValueError`` if ``new_tokens`` more positions do not fit."""
        if self.length + new_tokens > self.max_len:
            raise ValueError(
                f"KV cache is full: {self.length} positions cached + {new_tokens} new > max_len {self.max_len}; "
                "build a larger KVCache (max_len) or reset() it"
            )

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` ``(B, n_kv_head, T, head_dim)`` at ``[length, length+T)``; return ``[0, length+T)``.

        Args:
            layer_idx: which layer's buffers.
            k: new keys.
            v: new values.

        Returns:
            Views ``(B, n_kv_head, length + T, head_dim)`` of all keys and values so far (``length`` is not
            moved: call :meth:`advance` once all layers are written).
        """
        T = k.shape[2]
        self.check_room(T)
        if not self._keys:
            self._allocate(k.device, k.dtype)
        elif (k.dtype, k.device) != (self.dtype, self.device):
            raise ValueError(
                f"past_key_values holds {self.dtype} keys on {self.device}, but the model computed {k.dtype} on "
                f"{k.device}; give the KVCache the model's dtype and device (or leave them None), and keep autocast "
                "as it was when the cache was filled"
            )
        start, end = self.length, self.length + T
        self._keys[layer_idx][:, :, start:end] = k
        self._values[layer_idx][:, :, start:end] = v
        return self._keys[layer_idx][:, :, :end], self._values[layer_idx][:, :, :end]

    def update_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Record the ``(B, T)`` position ids of the new tokens; return those of ``[0, length+T)``."""
        T = position_ids.shape[1]
        self.check_room(T)
        if self.positions is None:
            self.positions = torch.zeros(self.batch_size, self.max_len, device=position_ids.device, dtype=torch.long)
        self.positions[:, self.length : self.length + T] = position_ids
        return self.positions[:, : self.length + T]

    def update_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Record the ``(B, T)`` ids of the new tokens; return the ids of ``[0, length+T)``.

        Only models with a previous-token embedding call this: the first new token's predecessor is cached.
        """
        T = input_ids.shape[1]
        self.check_room(T)
        if self.tokens is None:
            self.tokens = torch.zeros(self.batch_size, self.max_len, device=input_ids.device, dtype=torch.long)
        self.tokens[:, self.length : self.length + T] = input_ids
        return self.tokens[:, : self.length + T]

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as filled (called once per forward, after every layer's ``update``)."""
        self.check_room(n)
        self.length += n

    def reset(self) -> None:
        """Empty the cache for reuse with the same shapes; the buffers are kept, nothing is zeroed."""
        self.length = 0

    def select_rows(self, rows: torch.Tensor) -> KVCache:
        """A new cache whose row ``i`` is a copy of this cache's row ``rows[i]`` (same length, owner and room).

        For scoring several continuations of each of several prefixes: the prefixes run once, as a batch, then every
        continuation runs on its own copy of its prefix's keys and values (``rows`` may repeat a row).

        Raises:
            ValueError: nothing cached yet, or ``rows`` is not a 1-D tensor of row indices.
        """
        if not self._keys:
            raise ValueError(f"select_rows needs a filled cache, this one is {self!r}")
        if rows.dim() != 1 or rows.numel() == 0:
            raise ValueError(f"rows must be a non-empty 1-D tensor of row indices, got shape {tuple(rows.shape)}")
        rows = rows.to(self._keys[0].device)
        copy = KVCache.__new__(KVCache)
        copy.__dict__.update(self.__dict__)
        copy.batch_size = int(rows.numel())
        copy._keys = [k.index_select(0, rows) for k in self._keys]
        copy._values = [v.index_select(0, rows) for v in self._values]
        copy.positions = self.positions.index_select(0, rows)
        copy.tokens = None if self.tokens is None else self.tokens.index_select(0, rows)
        return copy

    def __getstate__(self) -> dict:
        # A weak reference cannot be pickled; a cache read back has no known owner and accepts any model.
        return {**self.__dict__, "_owner": None}

    def __repr__(self) -> str:
        return (
            f"KVCache(n_layer={self.n_layer}, batch_size={self.batch_size}, n_kv_head={self.n_kv_head}, "
            f"head_dim={self.head_dim}, length={self.length}, max_len={self.max_len}, dtype={self.dtype})"
        )


class SlotKVCache(KVCache):
    """A cache of ``batch_size`` independent slots, each with its own length: for batches whose rows come and go.

    Row ``r`` holds its sequence at columns ``[0, lengths[r])``, from position 0, with no padding in front, and a
    decode step writes each row's new key at its own column ``lengths[r]``. The model is shown the whole buffer:
    :attr:`length` stays at ``max_len - 1``, so a one-token forward attends over all ``max_len`` columns and the
    caller's ``(B, max_len)`` padding mask (:meth:`step_mask`) says which of them are real.

    Why the whole buffer, always: floating-point sums depend on the shapes they run in (a matrix product of 8 rows
    rounds a row differently than one of 1 row; a softmax over 40 columns differently than over 12). With a fixed
    batch width and a fixed number of columns, a row's values sit at the same places whatever the other rows
    hold, so a row's logits are bit-for-bit the same alone or beside any others (``tests/core/model``). A model
    whose every operation computes a row alone (an int8 decode copy through fbgemm) can run fewer rows: a step
    through :meth:`first_rows` runs only the first slots, over the same columns.

    Only one-token steps run through it; a prompt is prefilled into a plain :class:`KVCache` and copied in with
    :meth:`write_row`. Models with a previous-token embedding (``bigram_embedding``) are not supported: the model
    reads the previous token at a fixed column.
    """

    def __init__(
        self,
        config: MiniGPTConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if getattr(config, "bigram_embedding", False):
            raise ValueError("a SlotKVCache cannot serve a model with bigram_embedding (it reads a fixed column)")
        # Buffers are allocated with the dtype of the first keys written (a prefilled row or a step), as in KVCache.
        super().__init__(config, batch_size, max_len)
        self._home = torch.device("cpu") if device is None else torch.device(device)
        if dtype is not None:
            self._allocate(self._home, dtype)
        self.length = self.max_len - 1  # the model sees every column; the mask says which ones are real
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self._home)
        self.active = torch.zeros(batch_size, dtype=torch.bool, device=self._home)
        self._rows = torch.arange(batch_size, device=self._home)

    def check_room(self, new_tokens: int) -> None:
        if new_tokens != 1:
            raise ValueError(f"a SlotKVCache takes one token per row and step, got {new_tokens}; prefill elsewhere")
        if bool(((self.lengths >= self.max_len) & self.active).any()):
            raise ValueError(f"a slot of the KV cache is full (max_len {self.max_len})")

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's one new key and value at its own column; return the whole buffers.

        The room is checked once per forward pass (``check_room``, from the model's input checks), not again
        for every layer: each check reads the lengths back, a pause per layer on a GPU.
        """
        if k.shape[2] != 1:
            self.check_room(k.shape[2])
        if not self._keys:
            self._allocate(k.device, k.dtype)
        columns = self.lengths.clamp(max=self.max_len - 1)  # an idle row writes where nothing is read
        self._keys[layer_idx][self._rows, :, columns] = k[:, :, 0]
        self._values[layer_idx][self._rows, :, columns] = v[:, :, 0]
        return self._keys[layer_idx], self._values[layer_idx]

    def update_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        if self.positions is None:
            self.positions = torch.zeros(self.batch_size, self.max_len, device=self._home, dtype=torch.long)
        columns = self.lengths.clamp(max=self.max_len - 1)
        self.positions[self._rows, columns] = position_ids[:, 0]
        return self.positions

    def update_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise ValueError("a SlotKVCache cannot serve a model with bigram_embedding")

    def advance(self, n: int) -> None:
        self.lengths += self.active.long() * n

    def reset(self) -> None:
        self.lengths.zero_()
        self.active.zero_()

    def step_mask(self) -> torch.Tensor:
        """``(B, max_len)`` bool: each row's filled columns plus the one its next token goes to."""
        columns = torch.arange(self.max_len, device=self._home)
        return columns[None, :] <= self.lengths[:, None]

    def write_row(self, row: int, source: KVCache, source_row: int = 0) -> None:
        """Copy ``source``'s filled prefix (a prefilled prompt, from position 0) into slot ``row`` and activate it."""
        n = source.length
        if n >= self.max_len:
            raise ValueError(f"{n} prefilled positions do not fit a slot of {self.max_len} (one is kept for a step)")
        if not self._keys:
            self._allocate(source.device, source.dtype)
        for mine, theirs in zip(self._keys + self._values, source._keys + source._values, strict=True):
            mine[row, :, :n] = theirs[source_row, :, :n]
        self.positions[row, :n] = source.positions[source_row, :n]
        self.lengths[row] = n
        self.active[row] = True

    def first_rows(self, n: int) -> SlotKVCache:
        """Slots ``[0, n)`` as a cache of their own that shares this one's buffers: a step through it reads and
        writes these slots here. For a decode step of a model whose rows are computed alone (the server runs only
        the slots up to the highest busy one then, see ``llm_lab/serve/scheduler.py``).

        Raises:
            ValueError: ``n`` outside ``[1, batch_size]``, or nothing written yet (the buffers to share do not exist).
        """
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"first_rows takes 1 to {self.batch_size} rows, got {n}")
        if n == self.batch_size:
            return self
        if not self._keys:
            raise ValueError("first_rows needs the buffers, allocated by the first write_row or step")
        view = SlotKVCache.__new__(SlotKVCache)
        view.__dict__.update(self.__dict__)
        view.batch_size = n
        view._keys = [k[:n] for k in self._keys]
        view._values = [v[:n] for v in self._values]
        view.positions = self.positions[:n]
        view.lengths, view.active, view._rows = self.lengths[:n], self.active[:n], self._rows[:n]
        return view

    def free_row(self, row: int) -> None:
        """Empty slot ``row`` (its buffers are kept; nothing in them is read again)."""
        self.lengths[row] = 0
        self.active[row] = False
