"""The one lock of every directory the project writes: a second writer refused with the holder's pid, a dead
holder's lock taken over, re-entrant within a process, and the symbolic-link rule. Two real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from llm_lab.utils.dirlock import DirectoryLockedError, lock_directory, lock_path

HOLD = """
import sys, time
from llm_lab.utils.dirlock import lock_directory
with lock_directory(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of tmp_path/out (it sleeps until killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, holder):
    target = tmp_path / "out"
    expected = rf"{target} is being written by another llm-lab command \(pid {holder.pid} on {socket.gethostname()}; "
    expected += r"lock file .*\.out\.lock\)"
    with pytest.raises(DirectoryLockedError, match=expected) as info, lock_directory(target):
        pass
    assert info.value.pid == holder.pid
    assert isinstance(info.value, OSError)  # one of the CLI's user errors: one line, exit code 2
    assert lock_path(target).read_text().split() == [str(holder.pid), socket.gethostname()]


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path, holder):
    target = tmp_path / "out"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(target).is_file()  # the dead writer's lock file is still there: stale
    with lock_directory(target):
        assert lock_path(target).read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert not lock_path(target).exists()


def test_a_lock_file_no_process_holds_is_taken_over(tmp_path):
    target = tmp_path / "out"
    lock_path(target).write_text("999999999 elsewhere\n")  # left by a writer long gone
    with lock_directory(target):
        assert lock_path(target).read_text().split()[0] == str(os.getpid())


def test_the_lock_is_reentrant_within_a_process_and_removed_at_the_end(tmp_path):
    target = tmp_path / "sub" / "out"
    with lock_directory(target), lock_directory(tmp_path / "sub" / "." / "out"):
        assert lock_path(target).is_file()
    assert not lock_path(target).exists()
    assert list((tmp_path / "sub").iterdir()) == []


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symbolic_link_is_refused(tmp_path, dangling):
    destination = tmp_path / "real"
    if not dangling:
        destination.mkdir()
    link = tmp_path / "link"
    link.symlink_to(destination)
    expected = rf"{link} is a symbolic link \(to {destination}\); llm-lab writes only"
    with pytest.raises(ValueError, match=expected), lock_directory(link):
        pass
    assert destination.exists() is not dangling and not lock_path(link).exists()


def test_remove_stale_lock_removes_only_a_lock_no_live_process_holds(tmp_path, holder):
    from llm_lab.utils.dirlock import remove_stale_lock

    assert not remove_stale_lock(tmp_path / "out")  # held by the other process
    assert lock_path(tmp_path / "out").is_file()
    holder.kill()
    holder.wait()
    assert remove_stale_lock(tmp_path / "out")
    assert not lock_path(tmp_path / "out").exists()
    with lock_directory(tmp_path / "out"):
        assert not remove_stale_lock(tmp_path / "out")  # ours
        assert lock_path(tmp_path / "out").is_file()
