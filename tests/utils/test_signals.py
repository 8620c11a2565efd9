"""SIGTERM as a clean stop: recorded inside deferred blocks (nested, each told), raised as Stopped outside."""

from __future__ import annotations

import os
import signal

import pytest

from llm_lab.utils.signals import Stopped, deferred_stop, install_stop_handler, stop_requested


@pytest.fixture(autouse=True)
def _restore_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_inside_a_deferred_block_sigterm_is_only_recorded_and_every_block_is_told():
    told = []
    with deferred_stop(on_request=lambda s: told.append(("outer", s))):
        with deferred_stop(on_request=lambda s: told.append(("inner", s))):
            assert stop_requested() is None
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: the process goes on
            assert stop_requested() == signal.SIGTERM
        assert stop_requested() == signal.SIGTERM  # the outer block still sees it
    assert told == [("outer", signal.SIGTERM), ("inner", signal.SIGTERM)]
    assert stop_requested() is None  # forgotten once the outermost block ends


def test_outside_a_block_sigterm_raises_stopped_with_exit_code_143():
    install_stop_handler()
    with pytest.raises(Stopped, match=r"^terminated \(SIGTERM\)$") as info:
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.exit_code == 143 and isinstance(info.value, KeyboardInterrupt)


def test_the_previous_handler_comes_back_after_the_outermost_block():
    install_stop_handler()
    before = signal.getsignal(signal.SIGTERM)
    with deferred_stop():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
