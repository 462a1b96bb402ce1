"""Making file system changes durable: synced directories and atomic replacement.

:func:`atomic_file` is the one way walbops writes a file whole: metadata, pid files, and every
file a command writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


def fsync_dir(path: str) -> None:
    """fsync a directory, so the names created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write ``path`` so that a crash or a failure leaves its old content or the new, never a part.

    A regular file (or a new name) is written as a temporary file beside it, with ``mode``,
    fsynced and renamed over it, and the directory is fsynced; on failure the temporary file
    is removed. A device or FIFO that exists is written in place instead, as ``dd of=`` does:
    a rename would replace the node itself (``-o /dev/null`` run as root must not replace
    /dev/null with a file).

    Raises:
        IsADirectoryError: ``path`` is a directory.
        OSError: the directory is not writable, the disk is full, or another file system error.
    """
    try:
        existing = os.stat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        with open(path, "wb") as stream:  # O_TRUNC does nothing to a device or a FIFO
            yield stream
            stream.flush()
            if stat.S_ISBLK(existing.st_mode):
                os.fsync(stream.fileno())
        return
    directory = os.path.dirname(os.path.abspath(path))
    # mkstemp: O_EXCL with a random name, so a planted file or link is never written through.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with open(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content."""
    with atomic_file(path, mode) as stream:
        stream.write(data)
