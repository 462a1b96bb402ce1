"""Opening wdiff files of either type by path."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from ..errors import FormatError
from ..formats.wdiff import FILE_HEADER_STRUCT, DiffType, FileHeader
from .indexed_file import IndexedDiffReader
from .io import DiffIo, merge_ios
from .sorted_file import SortedDiffReader, verify_sorted


def read_header(path: str) -> FileHeader:
    """A wdiff's file header (type and uuid)."""
    with open(path, "rb") as stream:
        try:
            return FileHeader.parse(stream.read(FILE_HEADER_STRUCT.size))
        except FormatError as exc:
            raise exc.located(path)


def _opened(path: str) -> tuple[int, FileHeader]:
    """An fd of the wdiff at ``path`` and its parsed file header (the caller closes the fd)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return fd, FileHeader.parse(os.pread(fd, FILE_HEADER_STRUCT.size, 0))
    except FormatError as exc:
        os.close(fd)
        raise exc.located(path)


def _sorted_ios(fd: int, path: str) -> Iterator[DiffIo]:
    with os.fdopen(os.dup(fd), "rb", buffering=1 << 20) as stream:
        yield from SortedDiffReader(stream, path)


def iter_diff(path: str) -> Iterator[DiffIo]:
    """The IOs of a wdiff of either type, in address order (the file closes at the end)."""
    fd, header = _opened(path)
    try:
        yield from IndexedDiffReader(fd, path) if header.type == DiffType.INDEXED else _sorted_ios(fd, path)
    finally:
        os.close(fd)


def verify_wdiff(path: str) -> FileHeader:
    """Read a wdiff of either type completely, as a restore would: every header, record and
    checksum, and every image decompressed. Returns its file header.

    Raises:
        FormatError: the first problem found, located in the file.
    """
    fd, header = _opened(path)
    try:
        if header.type == DiffType.INDEXED:
            IndexedDiffReader(fd, path).verify()
        else:
            verify_sorted(fd, path)
    finally:
        os.close(fd)
    return header


def merged_ios(paths: Sequence[str]) -> Iterator[DiffIo]:
    """The IOs of ``paths`` (oldest first) merged: sorted, non-overlapping, newer data wins."""
    return merge_ios([iter_diff(path) for path in paths])
