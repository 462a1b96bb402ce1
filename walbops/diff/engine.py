"""Convert, merge and apply: the operations of the diff engine.

* wlog → wdiff: padding records are dropped, discards kept as DISCARD, all-zero IOs
  stored as ALLZERO, IOs above the maximum IO size split; a later IO wins where IOs
  overlap. Sorted output keeps at most ``memory_budget`` bytes of IO data in memory
  and spills sorted runs to temporary files beyond that, merged at the end.
* merge: N diffs, oldest first; later wins; the output is sorted and non-overlapping.
* apply/redo: every input is read and verified completely before the first byte is
  written, so a corrupt log or diff changes nothing.
"""

from __future__ import annotations

import enum
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import BinaryIO

from ..blockdev import ZERO_CHUNK, data_extents, discard_range, zero_range
from ..errors import BadField, OperationError
from ..formats.compression import Compression
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wdiff import DEFAULT_MAX_IO_LB
from .indexed_file import IndexedDiffWriter
from .io import MAX_TABLE_ENTRIES, DiffIo, IntervalMap, IoKind, Stats, StoredImage, is_all_zero, merge_ios
from .logs import LogPack
from .sorted_file import SortedDiffReader, SortedDiffWriter

DEFAULT_MEMORY_BUDGET = 64 << 20  # [bytes] IO data held in memory while sorting a wlog


class DiscardPolicy(enum.StrEnum):
    """What applying a DISCARD record does (walb-archive's -discard)."""

    IGNORE = "ignore"  # leave the blocks as they are
    ZERO = "zero"  # make them read as zeros
    PASSDOWN = "passdown"  # BLKDISCARD (a punched hole for image files)


def log_ios(packs: Iterable[LogPack], stats: Stats | None = None, in_file: int | None = None,
            zero_as_allzero: bool = True) -> Iterator[DiffIo]:
    """The IOs of log packs in log order: padding dropped, discards as DISCARD.

    Args:
        packs: verified log packs.
        stats: counts what goes by, as the log has it (zero writes count as normal).
        in_file: fd of the seekable wlog the packs come from; the IOs then refer to
            their data there instead of holding it (see StoredImage.in_file).
        zero_as_allzero: a write whose data is all zeros becomes ALLZERO. WalB decides
            this once per logged IO: a part of an IO that is zero after a later IO cut
            the rest away stays a normal record.
    """
    for pack in packs:
        if stats is not None:
            stats.packs += 1
        for rec in pack.header.records:
            if rec.is_padding:
                if stats is not None:
                    stats.padding_pb += rec.data_pb(pack.pbs)
                continue
            if rec.is_discard:
                io = DiffIo(rec.offset, rec.io_size, IoKind.DISCARD)
            elif zero_as_allzero and is_all_zero(pack.record_data(rec)):
                io = DiffIo(rec.offset, rec.io_size, IoKind.ALLZERO)
            elif in_file is not None and pack.file_offset >= 0:
                image = StoredImage.in_file(in_file, pack.file_offset + (rec.lsid_local - 1) * pack.pbs, rec.io_size)
                io = DiffIo(rec.offset, rec.io_size, IoKind.NORMAL, image=image)
            else:
                io = DiffIo.normal(rec.offset, pack.record_data(rec))
            if stats is not None:
                stats.count(io if io.kind != IoKind.ALLZERO else DiffIo(io.address, io.blocks))
            yield io


def write_sorted(ios: Iterable[DiffIo], writer: SortedDiffWriter) -> Stats:
    for io in ios:
        writer.write(io)
    writer.close()
    return writer.stats


def convert_to_sorted(ios: Iterable[DiffIo], out: BinaryIO, uuid: bytes, compression: Compression = Compression.LZ4,
                      level: int = 0, max_io_blocks: int = DEFAULT_MAX_IO_LB,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET, tmp_dir: str | None = None,
                      max_entries: int = MAX_TABLE_ENTRIES) -> Stats:
    """Turn IOs in log order into a sorted wdiff, spilling sorted runs past the budget.

    IOs whose data stays in the input file (``log_ios(..., in_file=fd)``) cost only
    their table entry, so a seekable wlog is usually sorted in one pass with no runs.
    """
    table = IntervalMap()
    with ExitStack() as stack:
        runs: list[BinaryIO] = []

        def spill() -> None:
            run = stack.enter_context(tempfile.TemporaryFile(dir=tmp_dir, prefix="walbops-run-"))
            write_sorted(iter(table), SortedDiffWriter(run, uuid, compression, level, max_io_blocks))
            run.seek(0)
            runs.append(run)
            table.clear()

        for io in ios:
            table.add(io.owned())
            if table.held_bytes > memory_budget or len(table) > max_entries:
                spill()
        writer = SortedDiffWriter(out, uuid, compression, level, max_io_blocks)
        if not runs:
            return write_sorted(iter(table), writer)
        if len(table):
            spill()
        readers = [iter(SortedDiffReader(run, f"run {index}")) for index, run in enumerate(runs)]
        stats = write_sorted(merge_ios(readers), writer)
        stats.extra["spilled_runs"] = len(runs)
        return stats


def convert_to_indexed(ios: Iterable[DiffIo], out: BinaryIO, uuid: bytes, compression: Compression = Compression.LZ4,
                       level: int = 0, max_io_blocks: int = DEFAULT_MAX_IO_LB, tmp_dir: str | None = None,
                       max_entries: int = MAX_TABLE_ENTRIES) -> Stats:
    """Turn IOs in log order into an indexed wdiff (images in arrival order). An IO's data must
    stay valid while the conversion runs (as that of IOs read from wlog files does)."""
    writer = IndexedDiffWriter(out, uuid, compression, level, max_io_blocks, max_entries, tmp_dir)
    writer.add_all(ios)
    writer.close()
    return writer.stats


class BlockTarget:
    """An image file or block device that IOs are applied to.

    Args:
        fd: open for writing.
        size_lb: size of the target [LB]; IOs past it are refused before applying.
        discard: what DISCARD records do.
    """

    def __init__(self, fd: int, size_lb: int, discard: DiscardPolicy = DiscardPolicy.IGNORE) -> None:
        self.fd = fd
        self.size_lb = size_lb
        self.discard = discard

    def check(self, io: DiffIo) -> None:
        if io.end > self.size_lb and not (io.kind == IoKind.DISCARD and self.discard == DiscardPolicy.IGNORE):
            raise OperationError(f"IO [{io.address}, {io.end}) LB lies beyond the target's {self.size_lb} LB")

    def apply(self, io: DiffIo) -> None:
        offset = io.address * LOGICAL_BLOCK_SIZE
        if io.kind == IoKind.NORMAL:
            data = io.data()
            written = 0
            while written < len(data):
                written += os.pwrite(self.fd, data[written:], offset + written)
        elif io.kind == IoKind.ALLZERO or self.discard == DiscardPolicy.ZERO:
            zero_range(self.fd, offset, io.nbytes)
        elif self.discard == DiscardPolicy.PASSDOWN:
            discard_range(self.fd, offset, io.nbytes)


def verify_then_apply(make_ios: Callable[[], Iterator[DiffIo]], target: BlockTarget) -> Stats:
    """Read every IO (checksums, decompression, bounds), then apply them in a second pass.

    Args:
        make_ios: opens the input afresh each time it is called.
        target: where to write.
    """
    stats = Stats()
    for io in make_ios():
        target.check(io)
        if io.kind == IoKind.NORMAL:
            io.data()
        stats.count(io)
    for io in make_ios():
        target.apply(io)
    os.fsync(target.fd)
    return stats


def full_image(ios: Iterator[DiffIo], size_lb: int, base_fd: int | None = None,
               bulk_lb: int = DEFAULT_MAX_IO_LB) -> Iterator[memoryview]:
    """Stream the image ``base + ios`` in bulks; DISCARD and ALLZERO read as zeros.

    Args:
        ios: sorted, non-overlapping IOs (e.g. a merged chain of diffs).
        size_lb: image size [LB].
        base_fd: the base image, or None for zeros.
        bulk_lb: bulk size [LB].
    """
    pending = next(ios, None)
    # Only the base's data extents are read: a hole reads as zeros anyway, and reading one costs
    # the kernel a page of zeros and a copy per 4 KiB (half the time of a sparse base's scan).
    base = -1 if base_fd is None else base_fd
    extents = [] if base_fd is None else data_extents(base, size_lb * LOGICAL_BLOCK_SIZE)
    next_extent = 0
    for start in range(0, size_lb, bulk_lb):
        end = min(start + bulk_lb, size_lb)
        length = (end - start) * LOGICAL_BLOCK_SIZE
        buffer = bytearray(length)
        window_start, window_end = start * LOGICAL_BLOCK_SIZE, end * LOGICAL_BLOCK_SIZE
        while next_extent < len(extents) and extents[next_extent][1] <= window_start:
            next_extent += 1
        view = memoryview(buffer)
        for extent_start, extent_end in extents[next_extent:]:
            if extent_start >= window_end:
                break
            read_start, read_end = max(extent_start, window_start), min(extent_end, window_end)
            # A short read (a base shorter than the image) leaves zeros.
            os.preadv(base, [view[read_start - window_start:read_end - window_start]], read_start)
        view.release()
        while pending is not None and pending.address < end:
            piece_start = max(pending.address, start)
            piece_end = min(pending.end, end)
            if piece_end > piece_start:
                into = (piece_start - start) * LOGICAL_BLOCK_SIZE
                size = (piece_end - piece_start) * LOGICAL_BLOCK_SIZE
                if pending.kind == IoKind.NORMAL:
                    skip = (piece_start - pending.address) * LOGICAL_BLOCK_SIZE
                    buffer[into:into + size] = pending.data()[skip:skip + size]
                else:
                    buffer[into:into + size] = memoryview(ZERO_CHUNK)[:size] if size <= len(ZERO_CHUNK) \
                        else bytes(size)
            if pending.end > end:
                break
            pending = next(ios, None)
        yield memoryview(buffer)
    if pending is not None:
        raise BadField(f"IO [{pending.address}, {pending.end}) LB lies beyond the image's {size_lb} LB")
