"""Continuous batching: many requests decoded as one batch, each joining and leaving it at a token boundary.

One scheduler thread owns the decode path of the model. A request becomes a *group*: its ``prompts x n`` rows
with their own sampling settings, random generator (seeded per request), stop strings, log-probabilities and
callback. Each turn of the loop (:meth:`BatchScheduler._turn`):

1. Groups whose client went away are dropped and their slots freed at once.
2. Waiting groups are admitted from the front of the queue while enough slots are free. The queue is strictly
   first come, first served: a group that needs more slots than are free waits, and so does everyone behind it,
   so a request with a large ``n`` is never overtaken for ever. The queue has a bounded length; past it
   :meth:`~BatchScheduler.submit` raises :class:`QueueFullError` (the server answers 429 with ``Retry-After``).
3. Chunked prefill: the oldest admitted group still reading its prompt runs one forward pass over at most
   ``prefill_chunk`` more prompt tokens (batch 1, in a cache of its own). So a newcomer's prompt delays the running
   rows by one chunk per turn, never by a whole long prompt. When the prompt is read, its cache is copied into
   the group's slots and its first tokens are sampled. (The alternative, mixing prompt tokens into the decode
   step's batch as vLLM does, would change the shapes a decode step runs in, and with them its rounding: see 5.)
4. One decode step for all slots at once (or the first ones, see 5): one token per row, each at its own position,
   through :class:`~llm_lab.core.model.kv_cache.SlotKVCache`. Each group then samples its rows from their logits
   with its own sampler and generator, reports text and log-probabilities, and leaves the batch when all its rows
   ended.
5. Exactness. The decode step always runs over all ``context`` cache columns, and over all ``(slots, 1)`` rows,
   busy or idle: a matrix product rounds a row differently depending on how many rows it has, and a softmax
   depending on how many columns, so only fixed shapes make a row's arithmetic independent of the other rows.
   With them a request's logits, hence its greedy text, its sampled text for a seed and its log-probabilities,
   are bit for bit the same alone or in any batch on the same server (same ``max_batch`` and model). They are not
   bit for bit those of the library's :func:`~llm_lab.core.decode.generate`, which runs other shapes (equal up to
   rounding). One exception, for the rows only: a decode copy that computes each row alone
   (:func:`~llm_lab.core.decode.fast_linear.rows_independent`: ``int8`` through fbgemm on a CPU, activation
   widths a multiple of 32 and small enough for the slots) runs only the slots up to the highest busy one (slots
   are handed out lowest first), through :meth:`~llm_lab.core.model.kv_cache.SlotKVCache.first_rows`; its rows
   come out the same in any number. Idle slots are otherwise not free: a lone client on an 8-slot fp32 server
   gets about 2.4x fewer tokens/s than on a 1-slot one (docs/how-to/serve-many.md).

A model with a previous-token embedding (``bigram_embedding``) cannot use the slot cache (the model reads the
previous token at a fixed column); its requests are decoded one at a time, in queue order, through the library's
:func:`~llm_lab.core.decode.stream` (the server as it was before continuous batching).

Memory. Every slot holds a KV cache of the full context, ``context x 2 x n_layer x n_kv_head x head_dim``
elements, so the slots are ``min(max_batch, memory_bytes // per_slot)`` (:class:`BatchLimits`).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from llm_lab.core.decode.fast_linear import rows_independent
from llm_lab.core.decode.logprobs import step_logprobs, to_token_logprobs
from llm_lab.core.decode.row_text import RowText
from llm_lab.core.decode.sampler import Sampler, check_next_token_scores
from llm_lab.core.model.kv_cache import KVCache, SlotKVCache
from llm_lab.serve.engine import CompletionEngine

__all__ = ["BatchLimits", "BatchScheduler", "QueueFullError", "Submission"]

#: A callback of one group: ``("text", row, piece)``, ``("tokens", row, piece, TokenLogprob)``,
#: ``("finish", row, reason, completion_tokens)`` or ``("error", exception)``; called on the scheduler thread.
EventCallback = Callable[[tuple], None]


@dataclass(frozen=True)
class BatchLimits:
    """How many sequences decode at once, how many requests may wait, and how prompts are read.

    Attributes:
        max_batch: the most rows (choices) decoding at once (``--max-batch``).
        max_queue: the most requests waiting for a slot; one more is refused (429) (``--max-queue``).
        prefill_chunk: prompt tokens read per turn of the loop (``--prefill-chunk``). 32 tokens of a 6 x 384
            model cost about one decode step of 8 rows on the development machine (see docs/how-to/serve-many.md).
        memory_bytes: the most memory the slots' KV caches may take (``--batch-memory-mb``); fewer slots than
            ``max_batch`` when they would need more.
    """

    max_batch: int = 8
    max_queue: int = 64
    prefill_chunk: int = 32
    memory_bytes: int = 1024 * 2**20

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "prefill_chunk", "memory_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class QueueFullError(RuntimeError):
    """The waiting queue is full. ``retry_after`` is a guess, in whole seconds, of when a place frees up."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def kv_bytes_per_slot(config: Any, context: int, element_size: int) -> int:
    """Bytes of one slot's KV cache: ``context`` positions of keys and values in every layer."""
    return context * 2 * config.n_layer * config.n_kv_head * config.head_dim * element_size


@dataclass
class _Settings:
    """What one group decodes with (a view of the server's ``SamplingSettings``)."""

    max_new_tokens: int
    sampling: Any
    stop: list[str]
    logprobs: int | None


class Submission:
    """A handle on a submitted request: :meth:`cancel` it when its client goes away."""

    def __init__(self, group: _Group, scheduler: BatchScheduler) -> None:
        self._group = group
        self._scheduler = scheduler

    def cancel(self) -> None:
        """Stop the request after the current step and free its slots (or drop it from the queue)."""
        self._group.cancelled = True
        self._scheduler._wake()


class _Group:
    """One request's rows: prompt reading, per-row text and the sampler and generator they share."""

    def __init__(
        self,
        rows: list[list[int]],
        settings: _Settings,
        generator: torch.Generator,
        on_event: EventCallback,
        tokenizer: Any,
        eos_ids: frozenset[int],
        vocab_size: int,
        device: torch.device,
    ) -> None:
        self.rows = rows
        self.settings = settings
        self.generator = generator
        self.on_event = on_event
        self.eos_ids = eos_ids
        self.cancelled = False
        self.slots: list[int] = []
        # Prefill state: each distinct prompt is read once, into its own batch-1 cache, chunk by chunk.
        self.prompts = list(dict.fromkeys(tuple(r) for r in rows))
        self.prefill_caches: dict[tuple[int, ...], KVCache] = {}
        self.prompt_logits: dict[tuple[int, ...], torch.Tensor] = {}
        self.prefilling = True
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        self.sampler = Sampler(settings.sampling, ids.to(device), vocab_size, mask.to(device))
        self.texts = [RowText(tokenizer, settings.stop) for _ in rows]
        self.finished = [False] * len(rows)
        self.counts = [0] * len(rows)
        self.steps = 0
        self.next_tokens: torch.Tensor | None = None  # (rows,) fed to the next decode step
        self.pad_token_id = min(eos_ids) if eos_ids else 0

    @property
    def done(self) -> bool:
        return all(self.finished)

    def _finish(self, row: int, reason: str, flush: str = "") -> None:
        if flush:
            self.on_event(("text", row, flush))
        self.finished[row] = True
        self.on_event(("finish", row, reason, self.counts[row]))

    def take(self, logits: torch.Tensor) -> None:
        """Pick one token per row from ``(rows, V)`` logits and report it (what ``Decoder.step`` does for one call)."""
        sampler = self.sampler
        if not sampler.greedy:
            logits = logits.float()
        scores = sampler.process(logits)
        check_next_token_scores(scores, logits)
        token = sampler.pick(scores, self.generator)
        done = torch.tensor(self.finished, device=token.device)
        token = token.masked_fill(done, self.pad_token_id)
        scored = None
        if self.settings.logprobs is not None:
            scored = [t.tolist() for t in step_logprobs(logits, token, self.settings.logprobs)]
        sampler.advance(token)
        self.next_tokens = token
        self.steps += 1
        last = self.steps >= self.settings.max_new_tokens
        for r, t in enumerate(token.tolist()):
            if self.finished[r]:
                continue
            self.counts[r] += 1  # an end-of-text token is generated too, so it counts
            if t in self.eos_ids:
                self._finish(r, "stop", self.texts[r].finish())
                continue
            piece, hit = self.texts[r].add(t)
            if scored is not None:
                logprob = to_token_logprobs([t], *(column[r : r + 1] for column in scored))[0]
                self.on_event(("tokens", r, piece, logprob))
            elif piece:
                self.on_event(("text", r, piece))
            if hit:
                self._finish(r, "stop")
            elif last:
                self._finish(r, "length", self.texts[r].finish())


class BatchScheduler:
    """Runs every completion through one continuously batched decode loop on its own thread.

    Args:
        engine: the served model (its decode copy, tokenizer, end-of-text token and context window).
        limits: the :class:`BatchLimits`.

    Raises:
        ValueError: not even one slot's KV cache fits ``limits.memory_bytes``.
    """

    def __init__(self, engine: CompletionEngine, limits: BatchLimits) -> None:
        model = engine.decode_model
        config = model.config
        self.engine = engine
        self.model = model
        self.tokenizer = engine.tokenizer
        self.eos_ids = frozenset(engine.eos_token_ids)
        self.limits = limits
        self.context = context = engine.context_window
        tensors = [*model.parameters(), *model.buffers()]
        self.device = tensors[0].device if tensors else torch.device("cpu")
        # The keys take the dtype the model computes in: that of its floating-point weights (int8 weights are not).
        dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())
        per_slot = kv_bytes_per_slot(config, context, dtype.itemsize)
        # One at a time for a model the slot cache cannot serve (see the module docs).
        self.batched = not getattr(config, "bigram_embedding", False)
        self.slots = min(limits.max_batch if self.batched else 1, limits.memory_bytes // per_slot)
        if self.slots < 1:
            raise ValueError(
                f"the KV cache of one sequence of {context} positions needs {per_slot} bytes, more than the batch "
                f"memory limit of {limits.memory_bytes} bytes; raise --batch-memory-mb"
            )
        # A step may run only the busy slots when the model computes each row alone (see the module docs, 5).
        self.rows_independent = rows_independent(model, self.slots)
        self.cache: SlotKVCache | None = None
        if self.batched:
            self.cache = SlotKVCache(config, self.slots, max_len=context, device=self.device)
        self.vocab_size = int(config.vocab_size)
        self._free = list(range(self.slots))
        self._queue: collections.deque[_Group] = collections.deque()
        self._running: list[_Group] = []
        self._lock = threading.Condition()
        self._closed = False
        self.step_seconds = 0.0  # a running mean, for Retry-After
        self.steps_done = 0  # decode steps run so far
        self.peak_busy = 0  # the most slots held at once so far
        self._thread = threading.Thread(target=self._loop, name="llm-lab-batch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------------------------
    # The client side (any thread)

    @property
    def waiting(self) -> int:
        """Requests in the queue now."""
        return len(self._queue)

    @property
    def max_choices(self) -> int | None:
        """The most rows (``prompts x n``) one request may have: the slots (None: no bound, decoded alone)."""
        return self.slots if self.batched else None

    @property
    def busy_slots(self) -> int:
        """Slots held by admitted requests now."""
        return self.slots - len(self._free)

    def submit(
        self,
        rows: list[list[int]],
        settings: Any,
        generator: torch.Generator,
        on_event: EventCallback,
    ) -> Submission:
        """Queue one request; ``on_event`` gets its text, log-probabilities and finish reasons as they come.

        Args:
            rows: prompt ids, one list per choice (already checked against the context).
            settings: ``max_new_tokens``, ``sampling`` (a ``SamplingConfig``), ``stop``, ``logprobs``.
            generator: the request's own random source.
            on_event: see :data:`EventCallback`; called on the scheduler thread, so it must be quick.

        Raises:
            ValueError: the request has more rows than the batch has slots.
            QueueFullError: ``max_queue`` requests are waiting already.
        """
        if self.max_choices is not None and len(rows) > self.max_choices:
            raise ValueError(
                f"{len(rows)} choices (prompts x n) do not fit a batch of {self.slots} sequences "
                "(--max-batch and --batch-memory-mb); ask for fewer"
            )
        own = _Settings(settings.max_new_tokens, settings.sampling, list(settings.stop), settings.logprobs)
        group = _Group(rows, own, generator, on_event, self.tokenizer, self.eos_ids, self.vocab_size, self.device)
        if own.max_new_tokens == 0:  # nothing to generate: every row ends at once, without a slot
            for row in range(len(rows)):
                on_event(("finish", row, "length", 0))
            return Submission(group, self)
        with self._lock:
            if self._closed:
                raise RuntimeError("the scheduler is shut down")
            if len(self._queue) >= self.limits.max_queue:
                raise QueueFullError(
                    f"the server is busy ({len(self._queue)} requests waiting, limit {self.limits.max_queue}); "
                    "retry later",
                    self._retry_after(),
                )
            self._queue.append(group)
            self._lock.notify()
        return Submission(group, self)

    def _retry_after(self) -> int:
        """Seconds until about one batch's worth of the queued work is done (at least 1)."""
        tokens = sum(g.settings.max_new_tokens for g in self._queue) / max(self.slots, 1)
        return max(1, math.ceil(tokens * self.step_seconds))

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def close(self) -> None:
        """Stop the loop after the current turn (requests still queued or running get an error event)."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------------------------------------
    # The loop (scheduler thread)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._queue and not self._running:
                    self._lock.wait()
                if self._closed:
                    break
            try:
                with torch.inference_mode():
                    self._turn()
            except Exception as error:  # a failed forward: every admitted request gets it, the loop goes on
                for group in list(self._running):
                    self._release(group)
                    group.on_event(("error", error))
                self._running = []
        for group in [*self._running, *self._queue]:
            group.on_event(("error", RuntimeError("the server is shutting down")))

    def _turn(self) -> None:
        """One turn: drop the cancelled, admit the waiting, read one prompt chunk, decode one step."""
        if self.cache is None:
            self._turn_alone()
            return
        for group in [g for g in self._running if g.cancelled]:
            self._release(group)
        with self._lock:
            self._queue = collections.deque(g for g in self._queue if not g.cancelled)
            while self._queue and len(self._queue[0].rows) <= len(self._free):
                group = self._queue.popleft()
                group.slots = [self._free.pop(0) for _ in group.rows]
                self._running.append(group)
            self.peak_busy = max(self.peak_busy, self.slots - len(self._free))
        reading = next((g for g in self._running if g.prefilling), None)
        if reading is not None:
            self._prefill_chunk(reading)
        if any(not g.prefilling for g in self._running):
            self._decode_step()

    def _turn_alone(self) -> None:
        """Decode the first waiting request on its own, to the end (models the slot cache cannot serve)."""
        with self._lock:
            self._queue = collections.deque(g for g in self._queue if not g.cancelled)
            if not self._queue:
                return
            group = self._queue.popleft()
            group.slots = [self._free.pop(0)]
            self._running.append(group)
            self.peak_busy = 1
        settings = group.settings
        cancelled = threading.Event()

        def on_text(row: int, piece: str) -> None:
            group.on_event(("text", row, piece))
            if group.cancelled:
                cancelled.set()

        def on_token(row: int, piece: str, scored: Any) -> None:
            group.on_event(("tokens", row, piece, scored))
            if group.cancelled:
                cancelled.set()

        try:
            results = self.engine.complete(
                group.rows, settings, group.generator, on_text=on_text, cancelled=cancelled, on_token=on_token
            )
        finally:
            self._release(group)
        for row, result in enumerate(results):
            group.on_event(("finish", row, result.finish_reason, result.completion_tokens))

    def _release(self, group: _Group) -> None:
        for slot in group.slots:
            if self.cache is not None:
                self.cache.free_row(slot)
        self._free = sorted(self._free + group.slots)
        group.slots = []
        if group in self._running:
            self._running.remove(group)

    def _prefill_chunk(self, group: _Group) -> None:
        """Read up to ``prefill_chunk`` more tokens of the group's first unread prompt; start it when all are read."""
        prompt = next(p for p in group.prompts if p not in group.prompt_logits)
        cache = group.prefill_caches.get(prompt)
        if cache is None:
            cache = group.prefill_caches[prompt] = KVCache(self.model.config, 1, max_len=len(prompt))
        start = cache.length
        end = min(start + self.limits.prefill_chunk, len(prompt))
        ids = torch.tensor([prompt[start:end]], dtype=torch.long, device=self.device)
        logits, _ = self.model(ids, past_key_values=cache, logits_to_keep=1, check_id_range=False)
        if end < len(prompt):
            return
        group.prompt_logits[prompt] = logits[0, -1]
        if len(group.prompt_logits) < len(group.prompts):
            return
        if group.settings.max_new_tokens > 1:  # a single new token needs no slot: it comes from the prompt's logits
            for slot, row in zip(group.slots, group.rows, strict=True):
                self.cache.write_row(slot, group.prefill_caches[tuple(row)])
        first = torch.stack([group.prompt_logits[tuple(row)] for row in group.rows])  # (rows, V)
        group.prefill_caches.clear()
        group.prompt_logits.clear()
        group.prefilling = False
        self._take(group, first)

    def _take(self, group: _Group, logits: torch.Tensor) -> None:
        try:
            group.take(logits)
        except ValueError as error:  # scores that cannot be sampled (NaN): this request fails, the others go on
            self._release(group)
            group.on_event(("error", error))
            return
        if group.done or group.cancelled:
            self._release(group)

    def _decode_step(self) -> None:
        """One token for every decoding row: the whole fixed-shape batch at once, or its first ``rows`` slots."""
        started = time.perf_counter()
        decoding = [g for g in self._running if not g.prefilling]
        rows = self.slots
        if self.rows_independent:  # up to the highest decoding slot (the module docs, 5)
            rows = 1 + max(slot for group in decoding for slot in group.slots)
        tokens = torch.zeros(rows, 1, dtype=torch.long, device=self.device)
        for group in decoding:
            tokens[group.slots, 0] = group.next_tokens
        cache = self.cache.first_rows(rows)
        positions = cache.lengths[:, None].clamp(max=self.context - 1)
        logits, _ = self.model(
            tokens,
            attention_mask=cache.step_mask(),
            past_key_values=cache,
            position_ids=positions,
            logits_to_keep=1,
            check_id_range=False,
        )
        logits = logits[:, -1]  # (rows, V)
        for group in decoding:
            self._take(group, logits[group.slots])
        elapsed = time.perf_counter() - started
        self.steps_done += 1
        self.step_seconds += (elapsed - self.step_seconds) / min(self.steps_done, 20)
