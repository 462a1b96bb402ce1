"""Opening wdiff files of either type by path."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from ..errors import FormatError
from ..formats.wdiff import FILE_HEADER_STRUCT, DiffType, FileHeader
from .indexed_file import IndexedDiffReader
from .io import DiffIo, merge_ios
from .sorted_file import SortedDiffReader


def read_header(path: str) -> FileHeader:
    """A wdiff's file header (type and uuid)."""
    with open(path, "rb") as stream:
        try:
            return FileHeader.parse(stream.read(FILE_HEADER_STRUCT.size))
        except FormatError as exc:
            raise exc.located(path)


def iter_diff(path: str) -> Iterator[DiffIo]:
    """The IOs of a wdiff of either type, in address order (the file closes at the end)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            header = FileHeader.parse(os.pread(fd, FILE_HEADER_STRUCT.size, 0))
        except FormatError as exc:
            raise exc.located(path)
        if header.type == DiffType.INDEXED:
            yield from IndexedDiffReader(fd, path)
        else:
            with os.fdopen(os.dup(fd), "rb", buffering=1 << 20) as stream:
                yield from SortedDiffReader(stream, path)
    finally:
        os.close(fd)


def merged_ios(paths: Sequence[str]) -> Iterator[DiffIo]:
    """The IOs of ``paths`` (oldest first) merged: sorted, non-overlapping, newer data wins."""
    if len(paths) == 1:
        return iter_diff(paths[0])
    return merge_ios([iter_diff(path) for path in paths])
