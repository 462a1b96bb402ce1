"""DiffIo, the IO the engine passes around, and the interval map that keeps IOs apart.

A DiffIo covers ``blocks`` LB from ``address``. A normal one carries its data either
decompressed or as the stored (compressed) image it came from, which is passed
through untouched when a writer can reuse it.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import numpy as np

from ..errors import BadField, TruncatedRecord
from ..formats.compression import decompress
from ..formats.ldev import LOGICAL_BLOCK_SIZE

# The largest decompressed IO the engine accepts [bytes]: WalB logs at most 65535 LB
# (32 MiB - 512) per IO; anything larger in a diff is refused before allocating.
MAX_IO_BYTES = 64 << 20
# IOs a table holds before it is written out as a sorted run: ~250 bytes of Python
# objects each, so this bounds a table at ~75 MiB when IOs hold no data themselves.
MAX_TABLE_ENTRIES = 300_000


class IoKind(enum.IntEnum):
    """What a DiffIo writes."""

    NORMAL = 0
    ALLZERO = 1
    DISCARD = 2


def read_exact(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes unless the stream ends first (then fewer)."""
    parts = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def is_all_zero(data: bytes | memoryview) -> bool:
    """True if every byte is zero (numpy, ~10 GB/s; data is whole LBs)."""
    view = memoryview(data).cast("B")
    if view and (view[0] or view[-1]):
        return False  # most data is decided here, without numpy
    if len(view) % 8:
        return not any(view)
    return not np.frombuffer(view, dtype=np.uint64).any()


@dataclass(slots=True, eq=False)
class StoredImage:
    """A compressed image as a file holds it, shared by the IOs that point into it.

    A writer that has already put the image in a file keeps only its place
    (``file_offset``, ``stored_size``) and no bytes. An image with an ``fd`` is read
    from that file each time its data is needed and never cached, so a table of
    millions of such IOs costs no data memory (used for IOs still inside a wlog).
    """

    stored: bytes | memoryview
    compression: int
    checksum: int
    blocks: int  # [LB] decompressed size
    file_offset: int = -1  # [bytes] where an indexed wdiff holds it, when known
    stored_size: int = -1  # [bytes] when ``stored`` is not kept
    fd: int = -1  # read ``stored_size`` bytes at ``file_offset`` from here when needed
    _plain: memoryview | None = None

    @classmethod
    def reference(cls, file_offset: int, size: int, compression: int, checksum: int, blocks: int) -> "StoredImage":
        """An image already written to a file: its place only."""
        return cls(memoryview(b""), compression, checksum, blocks, file_offset, size)

    @classmethod
    def in_file(cls, fd: int, file_offset: int, blocks: int) -> "StoredImage":
        """Uncompressed data that stays in a file until it is needed."""
        return cls(memoryview(b""), 0, 0, blocks, file_offset, blocks * LOGICAL_BLOCK_SIZE, fd)

    @property
    def size(self) -> int:
        """Stored size [bytes]."""
        return self.stored_size if self.stored_size >= 0 else len(self.stored)

    @property
    def in_memory(self) -> bool:
        """Whether ``stored`` holds the image's bytes (so they can be copied as they are)."""
        return self.stored_size < 0

    def plain(self) -> memoryview:
        if self.fd >= 0:
            data = os.pread(self.fd, self.stored_size, self.file_offset)
            if len(data) != self.stored_size:
                raise TruncatedRecord(f"{self.stored_size} bytes at offset {self.file_offset} are gone from the file")
            return memoryview(decompress(self.compression, data, self.blocks * LOGICAL_BLOCK_SIZE))
        if self._plain is None:
            self._plain = memoryview(decompress(self.compression, self.stored, self.blocks * LOGICAL_BLOCK_SIZE))
        return self._plain


@dataclass(slots=True, eq=False)
class DiffIo:
    """One IO of a diff.

    For a normal IO exactly one of ``plain`` (decompressed bytes of this IO) or
    ``image`` (with ``image_offset`` in LB into it) is set.
    """

    address: int  # [LB]
    blocks: int  # [LB]
    kind: IoKind = IoKind.NORMAL
    plain: memoryview | None = None
    image: StoredImage | None = None
    image_offset: int = 0  # [LB]

    @property
    def end(self) -> int:
        return self.address + self.blocks

    @property
    def nbytes(self) -> int:
        return self.blocks * LOGICAL_BLOCK_SIZE

    @property
    def memory_bytes(self) -> int:
        """Data bytes this IO keeps alive in memory (0 for data still in a file)."""
        if self.plain is not None:
            return self.plain.nbytes
        if self.image is not None and self.image.in_memory:
            return self.image.size
        return 0

    @classmethod
    def normal(cls, address: int, data: bytes | memoryview) -> "DiffIo":
        view = memoryview(data).cast("B")
        if not view.nbytes or view.nbytes % LOGICAL_BLOCK_SIZE:
            raise BadField(f"IO at LB {address}: {view.nbytes} bytes is not a positive multiple of 512")
        return cls(address, view.nbytes // LOGICAL_BLOCK_SIZE, IoKind.NORMAL, plain=view)

    def data(self) -> memoryview:
        """The decompressed data of a normal IO (blocks * 512 bytes)."""
        if self.plain is not None:
            return self.plain
        if self.image is None:
            raise BadField(f"IO at LB {self.address} has no data")
        start = self.image_offset * LOGICAL_BLOCK_SIZE
        return self.image.plain()[start:start + self.nbytes]

    def whole_image(self) -> StoredImage | None:
        """The stored image if this IO is exactly all of it (so it can be copied as is)."""
        image = self.image
        if image is not None and image.in_memory and self.image_offset == 0 and image.blocks == self.blocks:
            return image
        return None

    def cut(self, start: int, end: int) -> "DiffIo":
        """The part of this IO covering [start, end) LB."""
        if not self.address <= start < end <= self.end:
            raise BadField(f"cut [{start}, {end}) outside IO [{self.address}, {self.end})")
        if self.kind != IoKind.NORMAL:
            # An indexed writer keeps a place for these too (WalB records it in the index).
            offset = self.image_offset + start - self.address if self.image is not None else 0
            return DiffIo(start, end - start, self.kind, image=self.image, image_offset=offset)
        if self.plain is not None:
            skip = (start - self.address) * LOGICAL_BLOCK_SIZE
            size = (end - start) * LOGICAL_BLOCK_SIZE
            return DiffIo(start, end - start, self.kind, plain=self.plain[skip:skip + size])
        return replace(self, address=start, blocks=end - start, image_offset=self.image_offset + start - self.address)

    def owned(self) -> "DiffIo":
        """A copy whose data no longer shares a larger buffer (bounds memory after cuts)."""
        if self.plain is None:
            return self  # image-backed IOs share at most their own image
        return DiffIo(self.address, self.blocks, self.kind, plain=memoryview(bytes(self.data())))


def split_max(io: DiffIo, max_blocks: int) -> Iterator[DiffIo]:
    """Split an IO into consecutive pieces of at most ``max_blocks`` LB."""
    if io.blocks <= max_blocks or io.kind != IoKind.NORMAL:
        yield io
        return
    for start in range(io.address, io.end, max_blocks):
        yield io.cut(start, min(start + max_blocks, io.end))


class IntervalMap:
    """Non-overlapping IOs sorted by address; a newer IO replaces what it covers.

    ``held_bytes`` counts the data the IOs keep in memory so callers can bound it.
    """

    def __init__(self, on_cut: Callable[[DiffIo], DiffIo] = DiffIo.owned) -> None:
        self._starts: list[int] = []
        self._ios: list[DiffIo] = []
        self._on_cut = on_cut
        self.held_bytes = 0

    def __len__(self) -> int:
        return len(self._ios)

    def __iter__(self) -> Iterator[DiffIo]:
        return iter(self._ios)

    def _weight(self, io: DiffIo) -> int:
        return io.memory_bytes

    def add(self, io: DiffIo) -> None:
        """Insert ``io``, cutting away the parts of older IOs it overlaps."""
        first = bisect.bisect_right(self._starts, io.address) - 1
        if first < 0 or self._ios[first].end <= io.address:
            first += 1
        if first == len(self._ios) or self._ios[first].address >= io.end:
            # It overlaps nothing (most IOs of a log do not): one insertion.
            self._ios.insert(first, io)
            self._starts.insert(first, io.address)
            self.held_bytes += self._weight(io)
            return
        last = first
        left = right = None
        # Only the first overlapped IO can stick out on the left, only the last on the right.
        while last < len(self._ios) and self._ios[last].address < io.end:
            old = self._ios[last]
            self.held_bytes -= self._weight(old)
            if old.address < io.address:
                left = self._on_cut(old.cut(old.address, io.address))
            if old.end > io.end:
                right = self._on_cut(old.cut(io.end, old.end))
            last += 1
        pieces = [piece for piece in (left, io, right) if piece is not None]
        for piece in pieces:
            self.held_bytes += self._weight(piece)
        self._ios[first:last] = pieces
        self._starts[first:last] = [piece.address for piece in pieces]

    def overlapping(self, start: int, end: int) -> Iterator[DiffIo]:
        """The IOs that intersect [start, end) LB, in address order."""
        index = bisect.bisect_right(self._starts, start) - 1
        if index < 0 or self._ios[index].end <= start:
            index += 1
        while index < len(self._ios) and self._ios[index].address < end:
            yield self._ios[index]
            index += 1

    def clear(self) -> None:
        self._starts.clear()
        self._ios.clear()
        self.held_bytes = 0


def merge_ios(sources: list[Iterator[DiffIo]]) -> Iterator[DiffIo]:
    """Merge sorted, non-overlapping IO streams, oldest first; newer data wins.

    A single stream is already merged and passes through as it is.
    """
    if len(sources) == 1:
        return sources[0]
    return _swept(sources)


def _swept(sources: list[Iterator[DiffIo]]) -> Iterator[DiffIo]:
    """:func:`merge_ios` of several streams.

    Memory is one IO per source. The merge sweeps the address space: at each point the newest
    IO covering it wins, and an IO is cut only where a newer one takes over, so an IO that no
    newer one overlaps passes whole (the same object). Three heaps keep each step at
    O(log sources) however many streams are merged (a restore may lay a thousand diffs): the
    heads not reached yet by address, the heads under the sweep by end, and by age.
    """
    heads: list[DiffIo | None] = [next(source, None) for source in sources]
    waiting = [(io.address, index) for index, io in enumerate(heads) if io is not None]  # heads ahead of the sweep
    heapq.heapify(waiting)
    ending: list[tuple[int, int]] = []  # (end, index) of the heads under the sweep
    newest: list[int] = []  # -index of the heads under the sweep (lazily cleaned)
    covering = [False] * len(sources)

    def advance(index: int) -> None:
        covering[index] = False
        head = heads[index] = next(sources[index], None)
        if head is not None:
            heapq.heappush(waiting, (head.address, index))

    position = 0
    piece: DiffIo | None = None  # the winner of the segments not yet emitted, [piece_start, piece_end)
    piece_start = piece_end = 0
    while True:
        while ending and ending[0][0] <= position:
            advance(heapq.heappop(ending)[1])
        while waiting and waiting[0][0] <= position:
            index = heapq.heappop(waiting)[1]
            head = heads[index]
            if head is None or head.end <= position:
                advance(index)  # wholly under newer data already
                continue
            covering[index] = True
            heapq.heappush(ending, (head.end, index))
            heapq.heappush(newest, -index)
        if (ending and ending[0][0] <= position) or (waiting and waiting[0][0] <= position):
            continue  # heads moved on: look again at this position
        while newest and not covering[-newest[0]]:
            heapq.heappop(newest)
        if not newest:
            if not waiting:
                break
            position = waiting[0][0]
            continue
        winner = heads[-newest[0]]
        if winner is None:  # cannot happen: a covering head is live; keeps the type exact
            heapq.heappop(newest)
            continue
        boundary = min(winner.end, ending[0][0], waiting[0][0] if waiting else winner.end)
        if piece is winner and piece_end == position:
            piece_end = boundary  # the same IO goes on: one piece, cut only where another wins
        else:
            if piece is not None:
                yield _piece(piece, piece_start, piece_end)
            piece, piece_start, piece_end = winner, position, boundary
        position = boundary
    if piece is not None:
        yield _piece(piece, piece_start, piece_end)


def _piece(io: DiffIo, start: int, end: int) -> DiffIo:
    return io if start == io.address and end == io.end else io.cut(start, end)


@dataclass
class Stats:
    """What an operation saw, for ``--json`` output."""

    normal_ios: int = 0
    normal_lb: int = 0
    allzero_ios: int = 0
    allzero_lb: int = 0
    discard_ios: int = 0
    discard_lb: int = 0
    padding_pb: int = 0
    packs: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def count(self, io: DiffIo) -> None:
        if io.kind == IoKind.NORMAL:
            self.normal_ios += 1
            self.normal_lb += io.blocks
        elif io.kind == IoKind.ALLZERO:
            self.allzero_ios += 1
            self.allzero_lb += io.blocks
        else:
            self.discard_ios += 1
            self.discard_lb += io.blocks

    def as_dict(self) -> dict[str, int]:
        result = {key: value for key, value in vars(self).items() if key != "extra"}
        result.update(self.extra)
        return result
