"""Stopping on request: SIGTERM (what SLURM and Kubernetes send before they stop a job) as a clean stop.

Ctrl+C (SIGINT) is Python's ``KeyboardInterrupt``: the command stops where it is and says ``interrupted`` (exit
130). SIGTERM joins the same mechanism as :class:`Stopped`, a ``KeyboardInterrupt`` that carries its own message
and exit code (143 = 128 + SIGTERM), so every clean-up that runs for Ctrl+C runs for it too:

* outside a long loop, :func:`install_stop_handler` (the ``llm-lab`` command installs it first) turns SIGTERM
  into :class:`Stopped` at once;
* inside :func:`deferred_stop` (the trainer's loop, a sweep's runs) SIGTERM is only recorded; the loop sees
  :func:`stop_requested` at its next safe point (the end of a training step), saves what it must (a checkpoint)
  and raises :class:`Stopped` with one line saying what was kept.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["Stopped", "deferred_stop", "install_stop_handler", "stop_requested"]


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM) and stopped cleanly. ``str()`` is the one line to print.

    Attributes:
        exit_code: 128 + the signal number, as a shell reports a process the signal ended (143 for SIGTERM).
    """

    def __init__(self, message: str = "terminated (SIGTERM)", signum: int = signal.SIGTERM) -> None:
        super().__init__(message, signum)
        self.message, self.signum = message, int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message


_requested: list[int] = []  # signals received inside deferred blocks, in order
_callbacks: list[Callable[[int], None]] = []  # the on_request of each open deferred block, outermost first


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(f"terminated ({signal.Signals(signum).name})", signum)


def _record(signum: int, frame: object) -> None:
    _requested.append(signum)
    for callback in list(_callbacks):
        callback(signum)


def install_stop_handler() -> None:
    """Make SIGTERM raise :class:`Stopped` in the main thread (a command's clean-up then runs, exit code 143)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stopped)


def stop_requested() -> int | None:
    """The signal received inside an open :func:`deferred_stop` block, or ``None``."""
    return _requested[0] if _requested else None


@contextlib.contextmanager
def deferred_stop(on_request: Callable[[int], None] | None = None) -> Iterator[None]:
    """While the block runs, SIGTERM does not stop the process: it is recorded for :func:`stop_requested`.

    Blocks nest (a sweep's block around a trainer's); each block's ``on_request(signum)`` is called when the signal
    arrives (a sweep passes it on to its worker processes). The handler in place before the outermost block is
    put back after it, and the request is forgotten. Off the main thread (where Python cannot handle signals)
    the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = not _callbacks
    previous = signal.signal(signal.SIGTERM, _record) if outermost else None
    _callbacks.append(on_request or (lambda signum: None))
    try:
        yield
    finally:
        _callbacks.pop()
        if outermost:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            _requested.clear()
