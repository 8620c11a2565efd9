"""Worker pools for the data path: results in input order, a bounded number of tasks in flight.

``data prepare`` (encoding) and ``tokenizer train`` (counting words) stream a corpus through parallel workers.
Both need the same three things, kept here once:

- :func:`worker_processes`: a process pool whose workers ignore Ctrl+C (the parent handles it and stops them) and,
  on Linux, die with their parent (a killed command leaves no orphans); fork where the platform has it, so workers
  start at once and a script needs no ``__main__`` guard.
- :func:`map_in_order`: submit tasks from a stream, at most ``window`` at a time (memory stays bounded whatever
  the stream's length), and yield their results in the order the tasks came.
- :func:`alongside`: run one side job (saving a tokenizer while the encoders work) in a thread beside the block;
  its exception is raised by the ``check`` the block calls as it goes, or at the block's end.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["alongside", "map_in_order", "worker_processes"]

T = TypeVar("T")
R = TypeVar("R")


def _die_with_parent() -> None:
    """On Linux, ask the kernel to end this worker when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle; workers just stop
    _die_with_parent()
    if initializer is not None:
        initializer(*initargs)


def worker_processes(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, each running ``initializer(*initargs)`` once (see the module docstring)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(workers, context, _start_worker, (initializer, initargs))


def map_in_order(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``fn(item)`` for each item, run by ``pool``, yielded in order; at most ``window`` tasks in flight.

    The pool is shut down when the iteration ends, fails or is closed (pending tasks cancelled).
    """
    try:
        in_flight: collections.deque = collections.deque()
        for item in items:
            in_flight.append(pool.submit(fn, item))
            if len(in_flight) >= window:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def alongside(job: Callable[[], None]) -> Iterator[Callable[[], None]]:
    """Run ``job()`` in a thread while the ``with`` block runs; yield ``check``, which raises the job's exception
    once it has failed (call it as the block goes, so a failure stops the work early). At the block's end wait for
    the job, even through Ctrl+C (it may be writing where the caller cleans up next), and raise what it raised
    (the block's own exception wins).

    For side work beside encoders that release the GIL: done inline it would hold the GIL and stop the block
    from handing them work; in a thread it only takes turns with the block. Start it after any worker processes
    are forked, not before (a process forked while another thread works inherits that thread's locks).
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            job()
        except BaseException as exc:  # handed to the block's thread by check() or at the end
            failure.append(exc)

    def check() -> None:
        if failure:
            raise failure[0]

    thread = threading.Thread(target=run, name="llm-lab-alongside")
    thread.start()
    try:
        yield check
    finally:
        interrupted = False
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt:  # a second Ctrl+C: still wait (a few ms), then pass it on
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt
    check()
