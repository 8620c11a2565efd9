import errno

import pytest
import torch

from llm_lab.utils import io as io_module
from llm_lab.utils.io import (
    DiskFullError,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_disk_full,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target, "w") as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == '{\n  "ok": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    target = tmp_path / "perm.txt"
    atomic_write_text(target, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------------------------- a full disk

class _FillingFile:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written, as a full file system's do."""

    def __init__(self, f, room):
        self._f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.fixture
def disk_with_room(monkeypatch):
    """Writes through atomic_write get ``room`` bytes; the free space is not known (the write itself must fail)."""

    def install(room):
        real_open = open
        # atomic_write opens its temporary file with the builtin open, looked up in the io module
        monkeypatch.setattr(io_module, "open", lambda *a, **k: _FillingFile(real_open(*a, **k), room), raising=False)
        monkeypatch.setattr(io_module, "_free_bytes", lambda path: None)

    return install


@pytest.mark.parametrize("room", [0, 100, 2_000, 20_000])
def test_torch_save_on_a_full_disk_is_one_error_and_keeps_the_old_file(tmp_path, disk_with_room, room):
    target = tmp_path / "last.pt"
    atomic_torch_save({"w": torch.zeros(3)}, target)
    before = target.read_bytes()
    disk_with_room(room)
    # torch.save reports the failed write as a RuntimeError ("unexpected pos ..."), raised while handling ENOSPC
    with pytest.raises(DiskFullError, match=rf"no space left on device writing {target} \(needs at least 40.0 kB\)"):
        atomic_torch_save({"w": torch.zeros(10_000)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # the partial temporary file is gone


def test_a_write_of_known_size_that_cannot_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(io_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1_000})())
    expected = r"writing .*w\.bin \(needs at least 5\.0 kB, 1\.0 kB free\); free some space"
    with pytest.raises(DiskFullError, match=expected):
        atomic_write_bytes(tmp_path / "w.bin", b"x" * 5_000)
    assert list(tmp_path.iterdir()) == []


def test_a_needed_size_below_the_free_space_is_not_shown_as_what_is_needed(tmp_path):
    # The tensors' bytes (a lower bound) fitted in the free space, but the file with its framing did not.
    assert "(needs more space, 20.5 kB free)" in str(DiskFullError(tmp_path / "f", 16_100, 20_500))


def test_disk_full_is_an_oserror_with_its_errno_and_survives_pickling(tmp_path):
    import pickle

    error = pickle.loads(pickle.dumps(DiskFullError(tmp_path / "f", 2_000_000, 10)))
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    expected = f"no space left on device writing {tmp_path / 'f'} (needs at least 2.0 MB, 10 bytes free)"
    assert str(error).startswith(expected)


@pytest.mark.parametrize(
    "error, full",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), True),
        (OSError(errno.EACCES, "Permission denied"), False),
        (RuntimeError("unexpected pos 576 vs 534"), False),
    ],
)
def test_is_disk_full_knows_each_writers_wording(error, full):
    assert is_disk_full(error) is full


def test_is_disk_full_follows_the_exception_torch_raised_while_handling_enospc():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534") from None
    except RuntimeError as e:
        assert is_disk_full(e)  # `from None` hides it from tracebacks, but __context__ still holds the cause
