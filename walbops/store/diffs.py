"""Laying a chain of wdiff files over an image: verify every file first, then apply them merged.

This is walb-archive's restore/apply data path (``src/archive.cpp``: the selected
diffs are merged on the fly and written in one pass) with walbops' rule that a corrupt
input changes nothing: every file is read completely — headers, checksums,
decompression, bounds — before the first byte reaches the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..diff.engine import BlockTarget, DiscardPolicy
from ..diff.files import iter_diff, merged_ios
from ..diff.io import DiffIo, IoKind, Stats, merge_ios
from ..errors import FormatError, OperationError

# [bytes] How much of the diffs (as stored plus decompressed) the verify pass may keep in memory
# for the apply pass, which then neither reads, checksums nor decompresses them again; larger
# chains are read a second time. An archive runs a few applies and restores at once.
KEEP_VERIFIED_BYTES = 256 << 20


@dataclass(frozen=True)
class VerifiedDiffs:
    """Diffs read completely and found sound (:func:`verify_diffs`), ready for :func:`apply_diffs`."""

    paths: tuple[str, ...]
    stats: Stats
    # Each file's IOs with their data in memory, oldest file first; None when they did not fit
    # KEEP_VERIFIED_BYTES (the apply pass reads the files again).
    kept: tuple[tuple[DiffIo, ...], ...] | None = None

    def merged(self) -> Iterator[DiffIo]:
        """The IOs of every file merged: sorted, non-overlapping, newer data wins."""
        if self.kept is None:
            return merged_ios(self.paths)
        return merge_ios([iter(ios) for ios in self.kept])


def _held_bytes(io: DiffIo) -> int:
    """What keeping a verified IO holds in memory, at most: its decompressed data and its image as
    stored (an image several IOs share is counted for each)."""
    if io.kind != IoKind.NORMAL:
        return 0
    return io.nbytes + (io.image.size if io.image is not None else 0)


def verify_diffs(paths: Sequence[str], size_lb: int, discard: DiscardPolicy,
                 keep_bytes: int | None = None) -> VerifiedDiffs:
    """Read every IO of every file, decompressing the data, and check it fits ``size_lb``.

    Each file is read on its own rather than merged, so IOs a later diff overwrites are
    verified too: a corrupt file is refused even where it would not show. The IOs are kept,
    with their data, while they hold at most ``keep_bytes`` (default KEEP_VERIFIED_BYTES).

    Raises:
        FormatError: a file is corrupt (it names the file and the offset).
        OperationError: a file is missing, or an IO lies beyond the image.
    """
    keep_bytes = KEEP_VERIFIED_BYTES if keep_bytes is None else keep_bytes
    bounds = BlockTarget(-1, size_lb, discard)
    stats = Stats()
    kept: list[tuple[DiffIo, ...]] | None = []
    held = 0
    for path in paths:
        ios: list[DiffIo] = []
        try:
            for io in iter_diff(path):
                bounds.check(io)
                if io.kind == IoKind.NORMAL:
                    io.data()
                stats.count(io)
                if kept is not None:
                    held += _held_bytes(io)
                    if held > keep_bytes:
                        kept, ios = None, []
                    else:
                        ios.append(io)
        except FileNotFoundError as exc:
            raise OperationError(f"{path}: no such diff") from exc
        except OperationError as exc:
            raise OperationError(f"{path}: {exc}") from exc
        if kept is not None:
            kept.append(tuple(ios))
    stats.extra["diffs"] = len(paths)
    return VerifiedDiffs(tuple(paths), stats, None if kept is None else tuple(kept))


def verify_or_refuse(what: str, paths: Sequence[str], size_lb: int, discard: DiscardPolicy) -> VerifiedDiffs:
    """:func:`verify_diffs`, with every refusal an OperationError that starts with ``what``.

    A corrupt file's FormatError is the ``__cause__``.
    """
    try:
        return verify_diffs(paths, size_lb, discard)
    except (FormatError, OperationError) as exc:
        raise OperationError(f"{what}: {exc}") from exc


def apply_diffs(verified: VerifiedDiffs, target: BlockTarget, on_io: Callable[[], None] | None = None) -> None:
    """Write the merged IOs of ``verified`` onto ``target`` and fsync it (``on_io`` before each IO)."""
    if verified.paths:
        for io in verified.merged():
            if on_io is not None:
                on_io()
            target.apply(io)
    os.fsync(target.fd)
