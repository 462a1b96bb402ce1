"""Reading and writing sorted wdiff files as streams of DiffIo."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import BadField, ChecksumMismatch, FormatError, TruncatedRecord
from ..formats import checksum as csum
from ..formats.compression import Compression, compress, decompress
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wdiff import (
    DEFAULT_MAX_IO_LB,
    FILE_HEADER_STRUCT,
    PACK_SIZE,
    DiffFlag,
    DiffType,
    FileHeader,
    PackBuilder,
    PackHeader,
    eof_pack,
)
from .io import MAX_IO_BYTES, DiffIo, IoKind, Stats, StoredImage, read_exact, split_max

# Slack a compressor may add on incompressible data [bytes]; a stored image larger
# than the raw IO plus this is refused as corrupt before it is read.
_COMPRESSION_SLACK = 1 << 16


_ALLZERO_FLAG = int(DiffFlag.ALLZERO)  # plain ints: IntFlag arithmetic is slow per record
_DISCARD_FLAG = int(DiffFlag.DISCARD)


def kind_of(flags: int) -> IoKind:
    if flags & _ALLZERO_FLAG:
        return IoKind.ALLZERO
    if flags & _DISCARD_FLAG:
        return IoKind.DISCARD
    return IoKind.NORMAL


FLAGS_OF = {IoKind.NORMAL: 0, IoKind.ALLZERO: int(DiffFlag.ALLZERO), IoKind.DISCARD: int(DiffFlag.DISCARD)}


class SortedDiffReader:
    """Reads a sorted wdiff, checking every header, checksum and the record order.

    Iterating yields DiffIo whose data is decompressed on first use. A reader can
    be iterated once.

    Args:
        stream: a binary stream at the start of the file (header already read is not allowed).
        source: name used in error messages.
        header: the file header, if the caller already parsed it (then ``stream`` is past it).
    """

    def __init__(self, stream: BinaryIO, source: str = "wdiff", header: FileHeader | None = None) -> None:
        self.stream = stream
        self.source = source
        self.offset = 0
        if header is None:
            raw = self._read(FILE_HEADER_STRUCT.size)
            try:
                header = FileHeader.parse(raw)
            except FormatError as exc:
                raise exc.located(source)
        else:
            self.offset = FILE_HEADER_STRUCT.size
        if header.type != DiffType.SORTED:
            raise BadField("not a sorted wdiff (type indexed)", 6, source)
        self.header = header
        self.uuid = header.uuid

    def _read(self, size: int) -> bytes:
        data = read_exact(self.stream, size)
        self.offset += len(data)
        return data

    def __iter__(self) -> Iterator[DiffIo]:
        previous_end = 0
        while True:
            at = self.offset
            block = self._read(PACK_SIZE)
            if not block:
                return  # physical EOF also ends a sorted wdiff (walb-tools readers accept it)
            try:
                pack = PackHeader.parse(block)
            except FormatError as exc:
                raise exc.located(self.source, at)
            if pack.is_end:
                return
            previous_end = _check_records(pack, previous_end, at, self.source)
            # Read record by record so a merge of many inputs holds one IO per input.
            for rec in pack.records:
                kind = kind_of(rec.flags)
                if kind != IoKind.NORMAL:
                    yield DiffIo(rec.io_address, rec.io_blocks, kind)
                    continue
                data_at = self.offset
                stored = self._read(rec.data_size)
                if len(stored) < rec.data_size:
                    raise TruncatedRecord(f"diff record at LB {rec.io_address} needs {rec.data_size} bytes of data",
                                          data_at, self.source)
                if csum.checksum(stored) != rec.checksum:
                    raise ChecksumMismatch(f"data checksum mismatch in diff record at LB {rec.io_address}",
                                           data_at, self.source)
                image = StoredImage(stored, rec.compression, rec.checksum, rec.io_blocks)
                yield DiffIo(rec.io_address, rec.io_blocks, IoKind.NORMAL, image=image)


def _check_records(pack: PackHeader, previous_end: int, at: int, source: str) -> int:
    """The rules a pack's records keep beyond their own fields: address order without overlap, and
    the IO and stored-size bounds. Returns where the last record ends [LB].

    Raises:
        BadField: the first record that breaks one, located at its pack (``at``).
    """
    for rec in pack.records:
        if rec.io_address < previous_end:
            raise BadField(f"diff record at LB {rec.io_address} overlaps or precedes the one before "
                           f"(ending at LB {previous_end})", at, source)
        previous_end = rec.end_address
        if rec.is_normal and (rec.io_blocks * LOGICAL_BLOCK_SIZE > MAX_IO_BYTES
                              or rec.data_size > rec.io_blocks * LOGICAL_BLOCK_SIZE + _COMPRESSION_SLACK):
            raise BadField(f"diff record at LB {rec.io_address}: {rec.io_blocks} LB / {rec.data_size} "
                           f"stored bytes exceed the {MAX_IO_BYTES >> 20} MiB IO bound", at, source)
    return previous_end


def verify_sorted(fd: int, source: str = "wdiff") -> int:
    """Check a whole sorted wdiff as reading it with :class:`SortedDiffReader` and loading every
    image would (every pack, record order and bound, data checksum, decompression to its size),
    but a pack at a time: one read and one numpy checksum call for a pack's data. Returns the
    number of records.

    Raises:
        FormatError: the first problem, as SortedDiffReader reports it: where the pack-wise pass
            finds one, the reader runs to name it exactly.
    """
    try:
        return _verify_packs(fd, source)
    except FormatError as found:
        with os.fdopen(os.dup(fd), "rb", buffering=1 << 20) as stream:
            stream.seek(0)
            for io in SortedDiffReader(stream, source):
                if io.kind == IoKind.NORMAL:
                    io.data()
        raise found


def _verify_packs(fd: int, source: str) -> int:
    header = FileHeader.parse(os.pread(fd, FILE_HEADER_STRUCT.size, 0))
    if header.type != DiffType.SORTED:
        raise BadField("not a sorted wdiff (type indexed)", 6, source)
    at, previous_end, records = FILE_HEADER_STRUCT.size, 0, 0
    while True:
        block = os.pread(fd, PACK_SIZE, at)
        if not block:
            return records  # physical EOF ends a sorted wdiff, as for the reader
        pack = PackHeader.parse(block)
        if pack.is_end:
            return records
        previous_end = _check_records(pack, previous_end, at, source)
        records += len(pack.records)
        at += PACK_SIZE
        normal = [rec for rec in pack.records if rec.is_normal]
        sizes = [rec.data_size for rec in normal]
        total = sum(sizes)
        data = os.pread(fd, total, at)
        if len(data) < total:
            raise TruncatedRecord("the data of a pack is cut short", at, source)
        if csum.checksums_end_to_end(data, sizes) != [rec.checksum for rec in normal]:
            raise ChecksumMismatch("data checksum mismatch in a pack", at, source)
        view, offset = memoryview(data), 0
        for rec, size in zip(normal, sizes, strict=True):
            decompress(rec.compression, view[offset:offset + size], rec.io_blocks * LOGICAL_BLOCK_SIZE)
            offset += size
        at += offset


class SortedDiffWriter:
    """Writes a sorted wdiff from IOs given in address order.

    IOs above ``max_io_blocks`` are split; data is compressed per record with a raw
    fallback, and a stored image already in the target compression is copied as it
    is. Zero data is not looked for here: as in WalB, a write becomes ALLZERO when it
    enters a diff (conversion, hash sync), not when a diff is written or merged.

    Args:
        stream: the output stream.
        uuid: the wdev uuid for the file header.
        compression: compression for new records.
        level: compression level (0 = the codec's default).
        max_io_blocks: split normal IOs larger than this [LB].
    """

    def __init__(self, stream: BinaryIO, uuid: bytes, compression: Compression = Compression.LZ4, level: int = 0,
                 max_io_blocks: int = DEFAULT_MAX_IO_LB) -> None:
        self.stream = stream
        self.compression = compression
        self.level = level
        self.max_io_blocks = max_io_blocks
        self._builder = PackBuilder()
        self._data: list[bytes | memoryview] = []
        self._previous_end = 0
        self.stats = Stats()
        self.bytes_written = FILE_HEADER_STRUCT.size
        stream.write(FileHeader(uuid, DiffType.SORTED).serialize())

    def write(self, io: DiffIo) -> None:
        """Append an IO; it must start at or after the end of the previous one."""
        if io.address < self._previous_end:
            raise BadField(f"IO at LB {io.address} written after one ending at LB {self._previous_end}")
        self._previous_end = io.end
        for piece in split_max(io, self.max_io_blocks):
            self._write_piece(piece)

    def _write_piece(self, io: DiffIo) -> None:
        kind = io.kind
        stored: bytes | memoryview = b""
        compression = Compression.NONE
        checksum = 0
        if kind == IoKind.NORMAL:
            image = io.whole_image()
            if image is not None and image.compression == self.compression:
                stored, compression, checksum = image.stored, Compression(image.compression), image.checksum
            else:
                compression, stored = compress(self.compression, io.data(), self.level)
                checksum = csum.checksum(stored)
        args = (io.address, io.blocks, FLAGS_OF[kind], compression, len(stored), checksum)
        if not self._builder.add(*args):
            self._flush()
            self._builder.add(*args)
        if stored:
            self._data.append(stored)
        self.stats.count(DiffIo(io.address, io.blocks, kind))

    def _flush(self) -> None:
        if self._builder.empty:
            return
        pack = self._builder.finish()
        self.stream.write(pack.serialize())
        self.bytes_written += PACK_SIZE
        for part in self._data:
            self.stream.write(part)
            self.bytes_written += len(part)
        self._data = []

    def close(self) -> None:
        """Write the last pack and the EOF pack."""
        self._flush()
        self.stream.write(eof_pack())
        self.bytes_written += PACK_SIZE
        self.stats.extra["bytes"] = self.bytes_written
