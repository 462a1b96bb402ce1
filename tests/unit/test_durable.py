"""atomic_file: all or nothing for files, in place for devices and FIFOs."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from walbops.durable import atomic_file, atomic_write


def test_a_failure_leaves_the_old_content_and_no_temporary_file(tmp_path):
    path = tmp_path / "meta.json"
    atomic_write(str(path), b"old")
    with pytest.raises(RuntimeError), atomic_file(str(path)) as stream:
        stream.write(b"new, half written")
        raise RuntimeError("disk full, say")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_the_new_file_has_the_mode_asked_for(tmp_path):
    atomic_write(str(tmp_path / "a"), b"x", mode=0o600)
    atomic_write(str(tmp_path / "b"), b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o644


def test_a_planted_temporary_name_is_not_written_through(tmp_path):
    # The temporary name is random (mkstemp), so a link planted at a guessable name is never used.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    for pid_like in range(5):
        (tmp_path / f".out.tmp{pid_like}").symlink_to(victim)
    atomic_write(str(tmp_path / "out"), b"data")
    assert victim.read_bytes() == b"keep" and (tmp_path / "out").read_bytes() == b"data"


def test_a_fifo_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    atomic_write(str(fifo), b"through the pipe")
    reader.join(timeout=30)
    assert received == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError), atomic_file(str(tmp_path)):
        pass
