"""The wdiff file header and the sorted wdiff: packs of diff records.

::

    file header (32 B) || (pack header (4096 B) || record data ...)* || EOF pack (4096 B)

File header (checksum over its 32 bytes, salt 0, self-inclusive)::

    checksum u32 || version u16 (=2) || type u8 (0 sorted, 1 indexed) || reserved u8
    || reserved u32 || reserved u32 || uuid 16B

Pack header (16 bytes, 127 records of 32 bytes, zeros to 4096; checksum over the whole
4096-byte block, salt 0)::

    checksum u32 || n_records u16 || flags u8 (bit0 END) || reserved u8
    || total_size u32 (bytes of data after the block) || reserved u32

Diff record::

    io_address u64 (LB) || io_blocks u32 (LB) || flags u8 || compression u8 || reserved u16
    || data_offset u32 || data_size u32 || checksum u32 (of the stored bytes) || reserved u32

A normal record has neither ALLZERO nor DISCARD; the EXIST bit is never set by writers
and is ignored by readers. Records are sorted by address and never overlap.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from ..errors import BadField, BadMagic, ChecksumMismatch, TruncatedRecord, UnsupportedVersion
from . import checksum as csum
from .compression import Compression

WALB_DIFF_VERSION = 2  # version 2 widened io_blocks to 32 bits
FILE_HEADER_STRUCT = struct.Struct("<IHBBII16s")
PACK_HEADER_STRUCT = struct.Struct("<IHBBII")
DIFF_RECORD_STRUCT = struct.Struct("<QIBBHIIII")

PACK_SIZE = 4096  # [bytes] a pack header block
MAX_PACK_RECORDS = (PACK_SIZE - PACK_HEADER_STRUCT.size) // DIFF_RECORD_STRUCT.size  # 127
MAX_PACK_DATA = 32 << 20  # [bytes] WALB_DIFF_PACK_MAX_SIZE, unless the pack holds one record
DEFAULT_MAX_IO_LB = 2048  # [LB] 1 MiB: writers split larger IOs (walb-tools DEFAULT_MAX_IO_LB)
MAX_IO_BLOCKS = 0xFFFF_FFFF
PACK_FLAG_END = 1 << 0


class DiffType(enum.IntEnum):
    """Type byte of a wdiff file header."""

    SORTED = 0
    INDEXED = 1


class DiffFlag(enum.IntFlag):
    """Flags of a diff record."""

    EXIST = 1 << 0  # never set by writers; ignored
    ALLZERO = 1 << 1
    DISCARD = 1 << 2


# Plain ints for the per-record path (IntFlag arithmetic is slow).
_ALLZERO = int(DiffFlag.ALLZERO)
_DISCARD = int(DiffFlag.DISCARD)
_NOT_EXIST = ~int(DiffFlag.EXIST)
_COMPRESSION_IDS = frozenset(int(kind) for kind in Compression)


@dataclass(frozen=True)
class FileHeader:
    """The 32-byte header both wdiff formats start with."""

    uuid: bytes
    type: DiffType = DiffType.SORTED

    def serialize(self) -> bytes:
        if len(self.uuid) != 16:
            raise BadField("wdiff uuid must be 16 bytes")
        try:
            kind = DiffType(self.type)
        except ValueError:
            raise BadField(f"wdiff type {self.type} is neither sorted (0) nor indexed (1)") from None
        raw = bytearray(FILE_HEADER_STRUCT.pack(0, WALB_DIFF_VERSION, kind, 0, 0, 0, self.uuid))
        struct.pack_into("<I", raw, 0, csum.checksum(raw))
        return bytes(raw)

    @classmethod
    def parse(cls, raw: bytes | memoryview) -> "FileHeader":
        """Parse and verify a wdiff file header.

        Raises:
            TruncatedRecord, UnsupportedVersion, ChecksumMismatch, BadMagic.
        """
        if len(raw) < FILE_HEADER_STRUCT.size:
            raise TruncatedRecord(f"wdiff header needs {FILE_HEADER_STRUCT.size} bytes, got {len(raw)}", 0)
        _checksum, version, diff_type, _r1, _r2, _r3, raw_uuid = FILE_HEADER_STRUCT.unpack_from(raw, 0)
        if version != WALB_DIFF_VERSION:
            raise UnsupportedVersion(f"wdiff version {version}, expected {WALB_DIFF_VERSION} (not a wdiff?)", 4)
        if not csum.verifies(memoryview(raw)[:FILE_HEADER_STRUCT.size]):
            raise ChecksumMismatch("wdiff file header checksum mismatch", 0)
        try:
            kind = DiffType(diff_type)
        except ValueError:
            raise BadMagic(f"wdiff type {diff_type} is neither sorted (0) nor indexed (1)", 6) from None
        return cls(bytes(raw_uuid), kind)


class RecordKind:
    """What the flags of a diff record say; shared by sorted and indexed records."""

    io_address: int
    io_blocks: int
    flags: int

    @property
    def is_all_zero(self) -> bool:
        return bool(self.flags & _ALLZERO)

    @property
    def is_discard(self) -> bool:
        return bool(self.flags & _DISCARD)

    @property
    def is_normal(self) -> bool:
        return not self.flags & (_ALLZERO | _DISCARD)

    @property
    def end_address(self) -> int:
        return self.io_address + self.io_blocks


@dataclass(frozen=True)
class DiffRecord(RecordKind):
    """One IO of a sorted wdiff."""

    io_address: int  # [LB]
    io_blocks: int  # [LB]
    flags: int = 0
    compression: int = Compression.NONE
    data_offset: int = 0  # [bytes] from the end of the pack block
    data_size: int = 0  # [bytes] stored
    checksum: int = 0  # of the stored bytes, salt 0

    def check(self) -> None:
        """Raise BadField if the record breaks WalB's rules."""
        if self.io_blocks == 0 or self.io_blocks > MAX_IO_BLOCKS:
            raise BadField(f"diff record at LB {self.io_address}: io_blocks {self.io_blocks} out of 1..{MAX_IO_BLOCKS}")
        if self.is_all_zero and self.is_discard:
            raise BadField(f"diff record at LB {self.io_address}: both ALLZERO and DISCARD set")
        if self.is_normal:
            if self.compression not in _COMPRESSION_IDS:
                raise BadField(f"diff record at LB {self.io_address}: unknown compression id {self.compression}")
            if self.data_size == 0:
                raise BadField(f"diff record at LB {self.io_address}: normal record without data")
        elif self.data_size != 0:
            raise BadField(f"diff record at LB {self.io_address}: ALLZERO/DISCARD record with {self.data_size} "
                           "bytes of data")

    def serialize(self) -> bytes:
        return DIFF_RECORD_STRUCT.pack(self.io_address, self.io_blocks, self.flags, self.compression, 0,
                                       self.data_offset, self.data_size, self.checksum, 0)

    @classmethod
    def parse(cls, raw: bytes | memoryview, offset: int = 0) -> "DiffRecord":
        if len(raw) - offset < DIFF_RECORD_STRUCT.size:
            raise TruncatedRecord(f"diff record needs {DIFF_RECORD_STRUCT.size} bytes, got {max(0, len(raw) - offset)}")
        address, blocks, flags, compression, _r1, data_offset, data_size, checksum_, _r2 = \
            DIFF_RECORD_STRUCT.unpack_from(raw, offset)
        return cls(address, blocks, flags & _NOT_EXIST, compression, data_offset, data_size, checksum_)


@dataclass(frozen=True)
class PackHeader:
    """A 4 KiB pack header: up to 127 records whose data follows the block."""

    records: tuple[DiffRecord, ...] = field(default_factory=tuple)
    is_end: bool = False

    @property
    def total_size(self) -> int:
        return sum(rec.data_size for rec in self.records)

    def check(self) -> None:
        if len(self.records) > MAX_PACK_RECORDS:
            raise BadField(f"diff pack has {len(self.records)} records, at most {MAX_PACK_RECORDS}")
        if self.is_end and self.records:
            raise BadField("EOF diff pack has records")
        running = 0
        previous_end = -1
        for rec in self.records:
            rec.check()
            if rec.data_offset != running:
                raise BadField(f"diff record at LB {rec.io_address}: data_offset {rec.data_offset}, expected {running}")
            if rec.io_address < previous_end:
                raise BadField(f"diff record at LB {rec.io_address} overlaps or precedes the previous record")
            previous_end = rec.end_address
            running += rec.data_size
        if running > MAX_PACK_DATA and len(self.records) > 1:
            raise BadField(f"diff pack holds {running} bytes of data, at most {MAX_PACK_DATA}")

    def serialize(self) -> bytes:
        self.check()
        block = bytearray(PACK_SIZE)
        PACK_HEADER_STRUCT.pack_into(block, 0, 0, len(self.records), PACK_FLAG_END if self.is_end else 0, 0,
                                     self.total_size, 0)
        for index, rec in enumerate(self.records):
            offset = PACK_HEADER_STRUCT.size + index * DIFF_RECORD_STRUCT.size
            block[offset:offset + DIFF_RECORD_STRUCT.size] = rec.serialize()
        struct.pack_into("<I", block, 0, csum.checksum(block))
        return bytes(block)

    @classmethod
    def parse(cls, block: bytes | memoryview) -> "PackHeader":
        """Parse and verify a pack header block.

        Raises:
            TruncatedRecord, ChecksumMismatch, BadField.
        """
        if len(block) < PACK_SIZE:
            raise TruncatedRecord(f"diff pack header needs {PACK_SIZE} bytes, got {len(block)}")
        if not csum.verifies(memoryview(block)[:PACK_SIZE]):
            raise ChecksumMismatch("diff pack header checksum mismatch")
        _checksum, n_records, flags, _r0, total_size, _r1 = PACK_HEADER_STRUCT.unpack_from(block, 0)
        if n_records > MAX_PACK_RECORDS:
            raise BadField(f"diff pack claims {n_records} records, at most {MAX_PACK_RECORDS}")
        records = tuple(DiffRecord.parse(block, PACK_HEADER_STRUCT.size + i * DIFF_RECORD_STRUCT.size)
                        for i in range(n_records))
        pack = cls(records, bool(flags & PACK_FLAG_END))
        pack.check()
        if pack.total_size != total_size:
            raise BadField(f"diff pack total_size {total_size} but its records hold {pack.total_size} bytes")
        return pack


class PackBuilder:
    """Groups diff records into packs under WalB's limits (127 records, 32 MiB).

    Pure: ``add`` returns False when the record does not fit, and the caller
    emits ``finish()`` and starts again.
    """

    def __init__(self) -> None:
        self._records: list[DiffRecord] = []
        self._size = 0

    @property
    def empty(self) -> bool:
        return not self._records

    def add(self, io_address: int, io_blocks: int, flags: int, compression: int, data_size: int,
            checksum_: int) -> bool:
        """Append a record if it fits; returns whether it did."""
        if self._records and (len(self._records) >= MAX_PACK_RECORDS or self._size + data_size > MAX_PACK_DATA):
            return False
        self._records.append(DiffRecord(io_address, io_blocks, flags, compression, self._size, data_size, checksum_))
        self._size += data_size
        return True

    def finish(self) -> PackHeader:
        pack = PackHeader(tuple(self._records))
        self._records, self._size = [], 0
        return pack


def eof_pack() -> bytes:
    """The 4 KiB pack that ends a sorted wdiff."""
    return PackHeader((), is_end=True).serialize()
