"""A single-worker model runner: every model call of the server goes through one thread, one job at a time.

Why one worker: a model on one device gains little from running two generations at once on the same cores, and
serialising the calls means no two requests ever share a KV cache, a random generator or a half-updated module.
Concurrent clients are queued in arrival order; the queue is bounded so an overloaded server answers ``503`` at
once instead of piling up work it will never finish.

Streaming jobs hand their pieces to the event loop as they are produced (``emit``) and stop early when the client
goes away (``cancelled``), so a closed browser tab frees the worker within one token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

T = TypeVar("T")

_DONE = object()


class RunnerBusyError(RuntimeError):
    """The runner's queue is full; the client should retry later (HTTP 503)."""


class ModelRunner:
    """Runs jobs on one worker thread, in submission order, with a bounded number of waiting jobs.

    Args:
        max_pending: the most jobs queued or running at once; one more raises :class:`RunnerBusyError`.
    """

    def __init__(self, max_pending: int = 64) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-lab-model")
        self._lock = threading.Lock()
        self._pending = 0
        self.jobs_done = 0

    @property
    def pending(self) -> int:
        """Jobs queued or running now."""
        return self._pending

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._pending >= self.max_pending:
                raise RunnerBusyError(
                    f"the server is busy ({self._pending} requests queued, limit {self.max_pending}); retry later"
                )
            self._pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: object) -> None:
        with self._lock:
            self._pending -= 1
            self.jobs_done += 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker and return its result (its exception is re-raised here)."""
        return await asyncio.wrap_future(self._submit(fn, *args))

    def stream(self, fn: Callable[[Callable[[Any], None], threading.Event], None]) -> AsyncIterator[Any]:
        """Queue ``fn(emit, cancelled)`` on the worker now; iterate the result to get every item it emits.

        The job is queued before this returns, so a full queue raises :class:`RunnerBusyError` here, before a
        response has started. When the consumer stops early (the client disconnected) ``cancelled`` is set, so ``fn``
        can return between two tokens; a job still waiting in the queue then returns without touching the model.
        Must be called from the event loop that consumes the items.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def job() -> None:
            try:
                if not cancelled.is_set():
                    fn(emit, cancelled)
            except BaseException as error:  # handed to the consumer, which re-raises it in the request's task
                emit(_Failure(error))
            finally:
                emit(_DONE)

        self._submit(job)

        async def items() -> AsyncIterator[Any]:
            try:
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        return
                    if isinstance(item, _Failure):
                        raise item.error
                    yield item
            finally:
                cancelled.set()

        return items()

    def shutdown(self) -> None:
        """Stop accepting jobs and wait for the running one to finish."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error
