"""Reading and writing log packs: wlog files and the ring buffer of a log device."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import BadField, ChecksumMismatch, FormatError, TruncatedRecord
from ..formats import checksum as csum
from ..formats.ldev import (
    LOG_RECORD_STRUCT,
    LOGICAL_BLOCK_SIZE,
    LOGPACK_HEADER_STRUCT,
    SECTOR_TYPE_LOGPACK,
    LogpackHeader,
    LogRecord,
    SuperSector,
    end_marker,
    max_records,
    super_sector_offset_pb,
)
from ..formats.wlog import WLOG_HEADER_SIZE, WlogHeader
from .io import read_exact

WINDOW_BYTES = 4 << 20  # [bytes] of the ring read at once: its packs are parsed and verified together
_MASK32 = 0xFFFF_FFFF


@dataclass(frozen=True)
class LogPack:
    """A log pack with its data: ``total_io_size`` PBs after the header."""

    header: LogpackHeader
    data: memoryview
    pbs: int
    file_offset: int = -1  # [bytes] where the data lies in a seekable wlog file, if known
    shrunk: bool = False  # cut at an invalid IO: its header is no longer the one stored

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
        return LogPack(header, self.data[:total * self.pbs], self.pbs, self.file_offset, shrunk=True)

    def serialize_header(self, salt: int) -> bytes:
        return self.header.serialize(self.pbs, salt)


def parse_header_unchecked(block: memoryview, pbs: int, salt: int) -> LogpackHeader:
    """:meth:`LogpackHeader.parse` of a whole header PB, less the checksum of a header with
    records: the caller verifies many of those at once (:func:`bad_checksums`)."""
    fields = LOGPACK_HEADER_STRUCT.unpack_from(block, 0)
    sector_type, total_io_size, lsid, n_records, n_padding = fields[1:6]
    if sector_type != SECTOR_TYPE_LOGPACK or n_records > max_records(pbs) or n_padding > min(1, n_records):
        LogpackHeader.parse(block, pbs, salt)  # raises what is wrong with it
        raise BadField(f"log pack header at lsid {lsid} is invalid")
    start = LOGPACK_HEADER_STRUCT.size
    records = tuple(LogRecord(io_offset, io_size, lsid_local, rec_lsid, flags, checksum_)
                    for checksum_, flags, io_offset, io_size, lsid_local, _r, rec_lsid
                    in LOG_RECORD_STRUCT.iter_unpack(block[start:start + n_records * LOG_RECORD_STRUCT.size]))
    header = LogpackHeader(lsid, total_io_size, records)
    header.check(pbs)
    return header


def bad_checksums(buffer: memoryview, spans: Sequence[tuple[int, int, int]], salt: int) -> list[int]:
    """Indexes of the ``(start, end, stored)`` spans of ``buffer`` whose WalB checksum with
    ``salt`` is not ``stored`` (0 for a block that holds its own checksum).

    Sorted, non-overlapping spans at multiples of 4 bytes (packs in log order) are summed by
    one numpy call (:func:`checksum.span_sums`); others one by one.
    """
    if not spans:
        return []
    table = np.array(spans, dtype=np.int64)
    sums = csum.span_sums(buffer, table[:, :2])
    bad = (sums + np.uint64(salt) + table[:, 2].astype(np.uint64)) & np.uint64(_MASK32)
    return np.flatnonzero(bad).tolist()


def _pack_spans(packs: Sequence[tuple[int, LogpackHeader]], pbs: int) -> tuple[list[tuple[int, int, int]], list[int]]:
    """The checksummed spans of packs at byte offsets of one buffer: each header PB (if it has
    records), then its normal records' data; and for each span, the index of its pack."""
    spans: list[tuple[int, int, int]] = []
    owners: list[int] = []
    for index, (offset, header) in enumerate(packs):
        if header.records:
            spans.append((offset, offset + pbs, 0))
            owners.append(index)
        for rec in header.records:
            if rec.is_normal:
                start = offset + rec.lsid_local * pbs
                spans.append((start, start + rec.io_size * LOGICAL_BLOCK_SIZE, rec.checksum))
                owners.append(index)
    return spans, owners


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
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_raw(self, begin_lsid: int, end_lsid: int, piece: int = 1 << 20) -> Iterator[bytes]:
        """The ring's bytes from ``begin_lsid`` to ``end_lsid`` as they are, ``piece`` bytes at a time."""
        step = max(1, piece // self.pbs)
        for lsid in range(begin_lsid, end_lsid, step):
            yield self._read_pb(lsid, min(step, end_lsid - lsid))

    def packs(self, begin_lsid: int, end_lsid: int | None = None) -> Iterator[LogPack]:
        """Yield packs from ``begin_lsid`` until the end of valid logs or ``end_lsid``.

        The ring is read ``WINDOW_BYTES`` at a time and the checksums of a window's packs are
        verified together; a pack's data is a view into its window.
        """
        for _stored, packs in self.windows(begin_lsid, end_lsid):
            yield from packs

    def windows(self, begin_lsid: int, end_lsid: int | None = None) -> Iterator[tuple[memoryview, list[LogPack]]]:
        """:meth:`packs` a window at a time: ``(stored, packs)``, where ``stored`` is the ring's
        bytes of those packs as they are, except a last pack cut at an invalid IO (``shrunk``),
        which ``stored`` leaves out. Valid logs end after a window with a shrunk pack."""
        lsid = begin_lsid
        window_pb = min(max(1, WINDOW_BYTES // self.pbs), self.super.ring_buffer_size)
        while end_lsid is None or lsid < end_lsid:
            count = window_pb if end_lsid is None else min(window_pb, end_lsid - lsid)
            window = memoryview(self._read_pb(lsid, count))
            found, valid = self._walk(window, lsid, end_lsid)
            if not found and valid:  # one pack larger than the window: read it whole
                try:
                    header = parse_header_unchecked(window[:self.pbs], self.pbs, self.salt)
                except FormatError:
                    return
                window = memoryview(self._read_pb(lsid, 1 + header.total_io_size))
                found, valid = self._walk(window, lsid, end_lsid)
            spans, owners = _pack_spans(found, self.pbs)
            bad = bad_checksums(window, spans, self.salt)
            if bad:
                valid = False
                found = found[:owners[bad[0]] + 1]
            packs = [LogPack(header, window[offset + self.pbs:offset + (1 + header.total_io_size) * self.pbs],
                             self.pbs) for offset, header in found]
            stored = len(window) if not found else found[-1][0] + (1 + found[-1][1].total_io_size) * self.pbs
            if bad:
                last_offset, _header = found[-1]
                stored = last_offset
                last = packs.pop()
                if csum.verifies(window[last_offset:last_offset + self.pbs], self.salt):
                    index = last.first_bad_record(self.salt)
                    if index:  # else nothing of it is valid
                        packs.append(last.shrink(index))
            if packs:
                yield window[:stored], packs
                lsid = packs[-1].header.next_lsid
            if not valid or not found:
                return

    def _walk(self, window: memoryview, lsid: int,
              end_lsid: int | None) -> tuple[list[tuple[int, LogpackHeader]], bool]:
        """The whole packs of ``window`` (which starts at ``lsid``), as (byte offset, header),
        checksums not verified; and False if a header that cannot start a valid pack ended them."""
        found: list[tuple[int, LogpackHeader]] = []
        offset, pbs = 0, self.pbs
        while (end_lsid is None or lsid < end_lsid) and offset + pbs <= len(window):
            try:
                header = parse_header_unchecked(window[offset:offset + pbs], pbs, self.salt)
            except FormatError:
                return found, False
            if header.logpack_lsid != lsid or not header.records:
                return found, False
            if offset + (1 + header.total_io_size) * pbs > len(window):
                break
            found.append((offset, header))
            offset += (1 + header.total_io_size) * pbs
            lsid = header.next_lsid
        return found, True


class WlogStream:
    """Parses a wlog that arrives in pieces, verifying every pack as :class:`WlogReader` does.

    ``feed`` returns the packs completed by each piece, all verified; their data is valid
    until the next call. ``finish`` checks that the end marker came.

    Args:
        source: name used in error messages.
    """

    def __init__(self, source: str = "wlog") -> None:
        self.source = source
        self.header: WlogHeader | None = None
        self.ended = False
        self.offset = 0  # [bytes] stream offset of the first byte not yet parsed
        self.lsid = 0  # of the next pack
        self._pending = b""

    def feed(self, data: bytes | memoryview) -> list[LogPack]:
        """Take the next piece of the stream; the packs it completes, verified.

        Raises:
            FormatError: the wlog is corrupt (a bad header, record, checksum or order), or
                data follows its end marker.
        """
        if self.ended:
            if len(data):
                raise BadField("data after the wlog's end marker", self.offset, self.source)
            return []
        buffer = memoryview(b"".join((self._pending, data)) if self._pending else data)  # one copy
        at = 0
        if self.header is None:
            if len(buffer) < WLOG_HEADER_SIZE:
                self._pending = bytes(buffer)
                return []
            try:
                self.header = WlogHeader.parse(buffer[:WLOG_HEADER_SIZE])
            except FormatError as exc:
                raise exc.located(self.source, 0)
            self.lsid = self.header.begin_lsid
            at = WLOG_HEADER_SIZE
        found: list[tuple[int, LogpackHeader]] = []
        pbs = self.header.physical_bs
        try:
            at = self._walk(buffer, at, found)
        except FormatError:
            self._verify(buffer, found)  # the first error in stream order is the one to report
            raise
        self._verify(buffer, found)
        self._pending = bytes(buffer[at:])
        self.offset += at
        return [LogPack(header, buffer[offset + pbs:offset + pbs + header.total_io_size * pbs], pbs)
                for offset, header in found]

    def _walk(self, buffer: memoryview, at: int, found: list[tuple[int, LogpackHeader]]) -> int:
        """Parse the whole packs from ``at`` into ``found``; returns where the rest begins."""
        assert self.header is not None
        pbs, salt = self.header.physical_bs, self.header.log_checksum_salt
        while at + pbs <= len(buffer):
            block = buffer[at:at + pbs]
            try:
                header = parse_header_unchecked(block, pbs, salt)
                if not header.records:  # the end marker, whose checksum is not summed with the others
                    header = LogpackHeader.parse(block, pbs, salt)
            except FormatError as exc:
                raise exc.located(self.source, self.offset + at)
            if header.is_end:
                self.ended = True
                at += pbs
                if at < len(buffer):
                    raise BadField("data after the wlog's end marker", self.offset + at, self.source)
                return at
            if header.logpack_lsid != self.lsid:
                raise ChecksumMismatch(f"log pack lsid {header.logpack_lsid}, expected {self.lsid}", self.offset + at,
                                       self.source)
            if at + (1 + header.total_io_size) * pbs > len(buffer):
                break
            found.append((at, header))
            at += (1 + header.total_io_size) * pbs
            self.lsid = header.next_lsid
        return at

    def _verify(self, buffer: memoryview, found: list[tuple[int, LogpackHeader]]) -> None:
        assert self.header is not None
        pbs, salt = self.header.physical_bs, self.header.log_checksum_salt
        spans, owners = _pack_spans(found, pbs)
        bad = bad_checksums(buffer, spans, salt)
        if not bad:
            return
        start = spans[bad[0]][0]
        offset, header = found[owners[bad[0]]]
        if start == offset:
            raise ChecksumMismatch(f"log pack header at lsid {header.logpack_lsid}: checksum mismatch",
                                   self.offset + offset, self.source)
        pack = LogPack(header, buffer[offset + pbs:offset + pbs + header.total_io_size * pbs], pbs)
        index = pack.first_bad_record(salt) or 0
        rec = header.records[index]
        raise ChecksumMismatch(f"IO checksum mismatch in record {index} (lsid {rec.lsid}, LB {rec.offset})",
                               self.offset + start, self.source)

    def finish(self) -> None:
        """Raises TruncatedRecord unless the end marker has arrived."""
        if self.header is None or not self.ended:
            raise TruncatedRecord("wlog ends without its end marker", self.offset + len(self._pending), self.source)
