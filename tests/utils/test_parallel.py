"""Tests for llm_lab/utils/parallel.py: results in input order, a bounded window, errors and Ctrl+C in workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from llm_lab.utils.parallel import alongside, map_in_order, worker_processes

_offset = 0


def _set_offset(value: int) -> None:
    global _offset
    _offset = value


def _add_offset(x: int) -> tuple[int, int, bool]:
    sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    return x + _offset, os.getpid(), sigint_ignored


def test_processes_run_the_initializer_keep_the_order_and_ignore_ctrl_c():
    results = list(map_in_order(worker_processes(2, _set_offset, (100,)), _add_offset, range(20), window=4))
    assert [value for value, _, _ in results] == list(range(100, 120))
    assert all(pid != os.getpid() for _, pid, _ in results)
    assert all(ignored for _, _, ignored in results)  # the parent handles Ctrl+C and stops them


def test_at_most_window_tasks_are_in_flight():
    lock = threading.Lock()
    running, most = 0, 0

    def slow(k: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002 * (k % 3))
        with lock:
            running -= 1
        return k

    submitted = []

    def stream():
        for k in range(30):
            submitted.append(k)
            yield k

    results = map_in_order(ThreadPoolExecutor(8), slow, stream(), window=3)
    first = next(results)
    assert first == 0 and len(submitted) == 3  # the stream is read no further ahead than the window
    assert [first, *results] == list(range(30)) and most <= 3


def test_an_error_in_a_task_reaches_the_caller_and_the_pool_stops():
    pool = ThreadPoolExecutor(2)

    def fail_on_five(k: int) -> int:
        if k == 5:
            raise ValueError("task 5 failed")
        return k

    with pytest.raises(ValueError, match="task 5 failed"):
        list(map_in_order(pool, fail_on_five, range(10), window=2))
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(fail_on_five, 1)


def test_alongside_runs_the_job_in_another_thread_and_waits_for_it():
    seen: list[str] = []
    started = threading.Event()

    def job() -> None:
        started.wait(5)  # the block runs while the job waits: they really are side by side
        time.sleep(0.05)
        seen.append(threading.current_thread().name)

    with alongside(job):
        started.set()
        assert seen == []
    assert seen == ["llm-lab-alongside"]  # finished before the block's end returned


def test_alongside_raises_the_jobs_error_at_the_end_and_the_blocks_own_error_wins():
    def broken() -> None:
        raise OSError("disk full while saving")

    with pytest.raises(OSError, match="disk full while saving"), alongside(broken):
        pass
    with pytest.raises(KeyError, match="the block's"), alongside(broken):
        raise KeyError("the block's")


def test_alongside_check_stops_the_block_once_the_job_failed():
    def broken() -> None:
        raise OSError("disk full while saving")

    done = []
    with pytest.raises(OSError, match="disk full while saving"), alongside(broken) as check:
        for step in range(1000):
            time.sleep(0.002)
            check()  # raises within a step or two of the failure, not after all 1000
            done.append(step)
    assert len(done) < 1000
