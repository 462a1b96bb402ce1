"""Reading and writing log packs: wlog files and the ring buffer of a log device."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import ChecksumMismatch, FormatError, TruncatedRecord
from ..formats import checksum as csum
from ..formats.ldev import (
    LOGICAL_BLOCK_SIZE,
    LogpackHeader,
    LogRecord,
    SuperSector,
    end_marker,
    super_sector_offset_pb,
)
from ..formats.wlog import WLOG_HEADER_SIZE, WlogHeader
from .io import read_exact


@dataclass(frozen=True)
class LogPack:
    """A log pack with its data: ``total_io_size`` PBs after the header."""

    header: LogpackHeader
    data: memoryview
    pbs: int
    file_offset: int = -1  # [bytes] where the data lies in a seekable wlog file, if known

    def record_data(self, rec: LogRecord) -> memoryview:
        """The ``io_size * 512`` bytes of a normal record (the checksummed part)."""
        start = (rec.lsid_local - 1) * self.pbs
        return self.data[start:start + rec.io_size * LOGICAL_BLOCK_SIZE]

    def first_bad_record(self, salt: int) -> int | None:
        """Index of the first normal record whose IO checksum fails, or None."""
        for index, rec in enumerate(self.header.records):
            if rec.is_normal and csum.checksum(self.record_data(rec), salt) != rec.checksum:
                return index
        return None

    def shrink(self, count: int) -> "LogPack":
        """Keep only the first ``count`` records (WalB's shrink at an invalid IO)."""
        records = self.header.records[:count]
        total = max((rec.lsid_local - 1 + rec.data_pb(self.pbs) for rec in records if rec.has_data), default=0)
        header = LogpackHeader(self.header.logpack_lsid, total, records)
        return LogPack(header, self.data[:total * self.pbs], self.pbs, self.file_offset)

    def serialize_header(self, salt: int) -> bytes:
        return self.header.serialize(self.pbs, salt)


class WlogReader:
    """Reads a wlog file pack by pack, verifying every checksum.

    Args:
        stream: a binary stream positioned at the walblog header.
        source: name used in error messages.
        reuse_buffer: read every pack into one buffer; a pack's data is then valid
            only until the next pack is read (saves an allocation per pack).
    """

    def __init__(self, stream: BinaryIO, source: str = "wlog", reuse_buffer: bool = False) -> None:
        self.stream = stream
        self.source = source
        self.offset = 0
        self._buffer = bytearray() if reuse_buffer else None
        try:
            self.header = WlogHeader.parse(self._read(WLOG_HEADER_SIZE))
        except FormatError as exc:
            raise exc.located(source)
        self.pbs = self.header.physical_bs
        self.salt = self.header.log_checksum_salt
        self.end_lsid = self.header.begin_lsid

    def _read(self, size: int) -> bytes:
        data = read_exact(self.stream, size)
        self.offset += len(data)
        return data

    def _read_data(self, size: int) -> memoryview:
        if self._buffer is None:
            return memoryview(self._read(size))
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        view = memoryview(self._buffer)[:size]
        got = 0
        while got < size:
            count = self.stream.readinto(view[got:])  # type: ignore[attr-defined]
            if not count:
                break
            got += count
        self.offset += got
        return view[:got]

    def __iter__(self) -> Iterator[LogPack]:
        lsid = self.header.begin_lsid
        while True:
            at = self.offset
            block = self._read(self.pbs)
            if len(block) < self.pbs:
                raise TruncatedRecord("wlog ends without its end marker", at, self.source)
            try:
                header = LogpackHeader.parse(block, self.pbs, self.salt)
            except FormatError as exc:
                raise exc.located(self.source, at)
            if header.is_end:
                self.end_lsid = lsid
                return
            if header.logpack_lsid != lsid:
                raise ChecksumMismatch(f"log pack lsid {header.logpack_lsid}, expected {lsid}", at, self.source)
            size = header.total_io_size * self.pbs
            data = self._read_data(size)
            if len(data) < size:
                raise TruncatedRecord(f"log pack at lsid {lsid} needs {size} bytes of data", at + self.pbs,
                                      self.source)
            pack = LogPack(header, data, self.pbs, at + self.pbs)
            bad = pack.first_bad_record(self.salt)
            if bad is not None:
                rec = header.records[bad]
                raise ChecksumMismatch(f"IO checksum mismatch in record {bad} (lsid {rec.lsid}, LB {rec.offset})",
                                       at + self.pbs + (rec.lsid_local - 1) * self.pbs, self.source)
            yield pack
            lsid = header.next_lsid


class WlogWriter:
    """Writes a wlog: header, packs, end marker (on ``close``)."""

    def __init__(self, stream: BinaryIO, header: WlogHeader) -> None:
        self.stream = stream
        self.header = header
        self.pbs = header.physical_bs
        self.salt = header.log_checksum_salt
        self.next_lsid = header.begin_lsid
        stream.write(header.serialize())

    def write_pack(self, header: LogpackHeader, data: bytes | bytearray | memoryview) -> None:
        """Write one pack; ``data`` is its ``total_io_size`` PBs."""
        if header.logpack_lsid != self.next_lsid:
            raise FormatError(f"log pack lsid {header.logpack_lsid} does not continue the wlog at {self.next_lsid}")
        if len(data) != header.total_io_size * self.pbs:
            raise FormatError(f"log pack data is {len(data)} bytes, expected {header.total_io_size * self.pbs}")
        self.stream.write(header.serialize(self.pbs, self.salt))
        self.stream.write(data)
        self.next_lsid = header.next_lsid

    def write_built(self, header: LogpackHeader, record_data: list[bytes | memoryview]) -> None:
        """Write a pack from LogpackBuilder.finish(): data per record, padded to PBs here."""
        parts = bytearray(header.total_io_size * self.pbs)
        for rec, data in zip(header.records, record_data, strict=True):
            if rec.is_normal:
                start = (rec.lsid_local - 1) * self.pbs
                parts[start:start + len(data)] = data
        self.write_pack(header, parts)

    def close(self) -> None:
        self.stream.write(end_marker(self.pbs, self.salt))


def read_super(fd: int, pbs: int | None = None) -> SuperSector:
    """Read super sector 0 of a log device; tries both block sizes unless told."""
    failures: list[FormatError] = []
    for size in (pbs,) if pbs else (512, 4096):
        offset = super_sector_offset_pb(size) * size
        try:
            return SuperSector.parse(os.pread(fd, size, offset), size)
        except FormatError as exc:
            failures.append(exc.located(offset=offset))
    raise failures[-1]


class LdevLogReader:
    """Reads valid log packs from a log device's ring buffer.

    The stream ends at the first header that is invalid or not at the expected lsid
    (WalB's end of valid logs). A pack whose IO checksum fails is cut at that record
    and ends the stream, as walb-tools' readers do.

    Args:
        fd: file descriptor of the log device (or an image of one).
        super_sector: its super sector.
    """

    def __init__(self, fd: int, super_sector: SuperSector) -> None:
        self.fd = fd
        self.super = super_sector
        self.pbs = super_sector.physical_bs
        self.salt = super_sector.log_checksum_salt

    def _read_pb(self, lsid: int, count: int) -> bytes:
        """Read ``count`` PBs starting at ``lsid``, following the ring around its end."""
        ring = self.super.ring_buffer_size
        parts = []
        while count:
            run = min(count, ring - lsid % ring)
            offset = self.super.offset_pb(lsid) * self.pbs
            part = os.pread(self.fd, run * self.pbs, offset)
            if len(part) < run * self.pbs:
                raise TruncatedRecord("log device ends inside its ring buffer", offset)
            parts.append(part)
            lsid += run
            count -= run
        return b"".join(parts)

    def packs(self, begin_lsid: int, end_lsid: int | None = None) -> Iterator[LogPack]:
        """Yield packs from ``begin_lsid`` until the end of valid logs or ``end_lsid``."""
        lsid = begin_lsid
        while end_lsid is None or lsid < end_lsid:
            try:
                header = LogpackHeader.parse(self._read_pb(lsid, 1), self.pbs, self.salt)
            except FormatError:
                return
            if header.logpack_lsid != lsid or not header.records:
                return
            pack = LogPack(header, memoryview(self._read_pb(lsid + 1, header.total_io_size)), self.pbs)
            bad = pack.first_bad_record(self.salt)
            if bad is not None:
                if bad:
                    yield pack.shrink(bad)
                return
            yield pack
            lsid = header.next_lsid
