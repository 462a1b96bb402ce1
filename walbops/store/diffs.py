"""Laying a chain of wdiff files over an image: verify every file first, then apply them merged.

This is walb-archive's restore/apply data path (``src/archive.cpp``: the selected
diffs are merged on the fly and written in one pass) with walbops' rule that a corrupt
input changes nothing: every file is read completely — headers, checksums,
decompression, bounds — before the first byte reaches the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ..diff.engine import BlockTarget, DiscardPolicy
from ..diff.files import iter_diff, merged_ios
from ..diff.io import IoKind, Stats
from ..errors import FormatError, OperationError


def verify_diffs(paths: Sequence[str], size_lb: int, discard: DiscardPolicy) -> Stats:
    """Read every IO of every file, decompressing the data, and check it fits ``size_lb``.

    Each file is read on its own rather than merged, so IOs a later diff overwrites are
    verified too: a corrupt file is refused even where it would not show.

    Raises:
        FormatError: a file is corrupt (it names the file and the offset).
        OperationError: a file is missing, or an IO lies beyond the image.
    """
    bounds = BlockTarget(-1, size_lb, discard)
    stats = Stats()
    for path in paths:
        try:
            for io in iter_diff(path):
                bounds.check(io)
                if io.kind == IoKind.NORMAL:
                    io.data()
                stats.count(io)
        except FileNotFoundError as exc:
            raise OperationError(f"{path}: no such diff") from exc
        except OperationError as exc:
            raise OperationError(f"{path}: {exc}") from exc
    stats.extra["diffs"] = len(paths)
    return stats


def verify_or_refuse(what: str, paths: Sequence[str], size_lb: int, discard: DiscardPolicy) -> Stats:
    """:func:`verify_diffs`, with every refusal an OperationError that starts with ``what``.

    A corrupt file's FormatError is the ``__cause__``.
    """
    try:
        return verify_diffs(paths, size_lb, discard)
    except (FormatError, OperationError) as exc:
        raise OperationError(f"{what}: {exc}") from exc


def apply_diffs(paths: Sequence[str], target: BlockTarget, on_io: Callable[[], None] | None = None) -> None:
    """Write the merged IOs of verified ``paths`` onto ``target`` and fsync it (``on_io`` before each IO)."""
    if paths:
        for io in merged_ios(paths):
            if on_io is not None:
                on_io()
            target.apply(io)
    os.fsync(target.fd)
