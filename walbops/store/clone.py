"""Cloning an image file: a reflink where the filesystem shares extents, else a sparse copy.

A reflink (``ioctl(dst, FICLONE, src)``, xfs with ``reflink=1``, btrfs) costs no data
and no time: the clone shares every extent with the source until one of them is
written. Elsewhere the copy reads only the source's data extents (``SEEK_DATA`` /
``SEEK_HOLE``) and writes only the blocks that are not all zeros, so holes and zero
runs stay holes in the copy.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os

import numpy as np

from ..blockdev import data_extents, pwrite_all

FICLONE = 0x40049409  # _IOW(0x94, 9, int); fcntl.FICLONE only exists from Python 3.12

# errnos with which FICLONE says "not here" rather than "failed": the filesystem has
# no reflinks (EOPNOTSUPP; ext4 answers ENOTTY), the files are on two filesystems
# (EXDEV), or it refuses these files (EINVAL: e.g. an xfs without reflink=1).
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS})

COPY_CHUNK = 8 << 20  # [bytes] read per step of a sparse copy
ZERO_GRAIN = 4096  # [bytes] smallest zero run left as a hole (the filesystem block size on xfs/ext4/btrfs)


class CloneMethod(enum.StrEnum):
    """How a restored image was made from its base."""

    REFLINK = "reflink"  # FICLONE: extents shared with the base
    SPARSE_COPY = "sparse-copy"  # data extents copied, holes and zero runs left out
    LVM_SNAPSHOT = "lvm-snapshot"  # classic LVM snapshot (CoW area 1.2 × base)
    LVM_THIN_SNAPSHOT = "lvm-thin-snapshot"  # thin snapshot in the base's pool


class ClonePolicy(enum.StrEnum):
    """Which clone a DirStore may make."""

    AUTO = "auto"  # reflink, falling back to a sparse copy
    REFLINK = "reflink"  # reflink or fail
    COPY = "copy"  # always a sparse copy


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Make ``dst`` a reflink clone of ``src``; False if the filesystem cannot.

    Raises:
        OSError: FICLONE failed for another reason (e.g. ENOSPC, EIO).
    """
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return False
        raise
    return True


def _write_nonzero(fd: int, data: memoryview, offset: int) -> int:
    """Write the ZERO_GRAIN blocks of ``data`` that are not all zeros; returns bytes written."""
    whole = len(data) - len(data) % ZERO_GRAIN
    if offset % ZERO_GRAIN or not whole:
        return pwrite_all(fd, data, offset)
    grains = np.frombuffer(data[:whole], dtype=np.uint64).reshape(-1, ZERO_GRAIN // 8).any(axis=1)
    # Edges of the runs of non-zero grains: starts and ends alternate.
    edges = np.flatnonzero(np.diff(np.concatenate(([False], grains, [False])).astype(np.int8))).tolist()
    written = 0
    for first, last in zip(edges[0::2], edges[1::2], strict=True):
        start, end = first * ZERO_GRAIN, last * ZERO_GRAIN
        written += pwrite_all(fd, data[start:end], offset + start)
    if whole < len(data):
        written += pwrite_all(fd, data[whole:], offset + whole)
    return written


def sparse_copy(src_fd: int, dst_fd: int) -> int:
    """Copy ``src`` into the empty file ``dst``, leaving holes and zero runs out.

    Returns:
        the bytes actually written.
    """
    size = os.fstat(src_fd).st_size
    os.ftruncate(dst_fd, size)
    written = 0
    for start, end in data_extents(src_fd, size):
        for offset in range(start, end, COPY_CHUNK):
            data = os.pread(src_fd, min(COPY_CHUNK, end - offset), offset)
            if not data:
                break
            written += _write_nonzero(dst_fd, memoryview(data), offset)
    return written


def clone_file(src_fd: int, dst_fd: int, policy: ClonePolicy = ClonePolicy.AUTO) -> CloneMethod:
    """Clone ``src`` into the empty file ``dst`` as ``policy`` allows; returns how.

    Raises:
        OSError: ``policy`` is REFLINK and the filesystem has no reflinks (EOPNOTSUPP),
            or the clone failed.
    """
    if policy != ClonePolicy.COPY:
        if reflink(src_fd, dst_fd):
            return CloneMethod.REFLINK
        if policy == ClonePolicy.REFLINK:
            raise OSError(errno.EOPNOTSUPP, "the filesystem cannot reflink these files (FICLONE refused)")
    sparse_copy(src_fd, dst_fd)
    return CloneMethod.SPARSE_COPY
