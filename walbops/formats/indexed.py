"""The indexed wdiff: compressed IO images, then an aligned index, then its super.

::

    file header (32 B, type 1) || image* || 0-7 zero bytes (8-byte alignment)
    || index record (48 B)* || index super (24 B)

Index record (``rec_checksum`` over the 48 bytes, salt 0, self-inclusive)::

    io_address u64 || io_blocks u32 || flags u8 || compression u8 || reserved u16
    || data_offset u64 (file offset of the image) || data_size u32 || io_offset u32 (LB)
    || orig_blocks u32 (LB of the whole image) || reserved u32 || io_checksum u32 (of the
    stored image) || rec_checksum u32

Index super (the file's last 24 bytes, self-inclusive checksum)::

    index_offset u64 || n_records u32 || n_data u32 || reserved u32 || checksum u32

Records are sorted, non-overlapping and *aligned*: io_blocks is a power of two no
larger than the maximum IO size, and io_address a multiple of io_blocks. Several
records may point into one image at different io_offsets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import BadField, ChecksumMismatch, TruncatedRecord
from . import checksum as csum
from .compression import Compression
from .wdiff import DEFAULT_MAX_IO_LB, FILE_HEADER_STRUCT, DiffFlag, RecordKind

INDEX_RECORD_STRUCT = struct.Struct("<QIBBHQIIIIII")
INDEX_SUPER_STRUCT = struct.Struct("<QIIII")
INDEX_ALIGNMENT = 8  # [bytes] the index starts at a multiple of this file offset
MAX_ALIGNED_BLOCKS = 1 << 31  # [LB] the largest power of two io_blocks (a u32) holds


def split_aligned(address: int, blocks: int, max_blocks: int = DEFAULT_MAX_IO_LB) -> list[tuple[int, int]]:
    """Split an IO into aligned power-of-two pieces of at most ``max_blocks`` LB.

    Each piece's size is the largest power of two that divides its address, fits
    the remaining length and does not exceed ``max_blocks`` rounded down to a power
    of two (walb-tools' splitIoToAligned); 0 means no limit but the u32 field's 2**31.
    """
    if max_blocks < 0:
        raise BadField(f"maximum IO size {max_blocks} LB must not be negative")
    max_blocks = MAX_ALIGNED_BLOCKS if max_blocks == 0 else min(1 << (max_blocks.bit_length() - 1),
                                                                 MAX_ALIGNED_BLOCKS)
    pieces = []
    end = address + blocks
    while address < end:
        size = max_blocks if address == 0 else min(address & -address, max_blocks)
        while size > end - address:
            size >>= 1
        pieces.append((address, size))
        address += size
    return pieces


@dataclass(frozen=True)
class IndexRecord(RecordKind):
    """One aligned piece of an IO, pointing into a compressed image."""

    io_address: int  # [LB]
    io_blocks: int  # [LB]
    flags: int = 0
    compression: int = Compression.NONE
    data_offset: int = 0  # [bytes] file offset of the image
    data_size: int = 0  # [bytes] stored image size
    io_offset: int = 0  # [LB] where this piece starts inside the decompressed image
    orig_blocks: int = 0  # [LB] size of the decompressed image
    io_checksum: int = 0  # of the stored image, salt 0

    def check(self, max_io_blocks: int | None = None) -> None:
        """Raise BadField if the record is not aligned or inconsistent."""
        where = f"index record at LB {self.io_address}"
        blocks = self.io_blocks
        if blocks == 0 or blocks & (blocks - 1):
            raise BadField(f"{where}: io_blocks {blocks} is not a power of two")
        if self.io_address % blocks:
            raise BadField(f"{where}: address is not a multiple of io_blocks {blocks}")
        if max_io_blocks is not None and blocks > max_io_blocks:
            raise BadField(f"{where}: io_blocks {blocks} exceeds {max_io_blocks}")
        if self.is_all_zero and self.is_discard:
            raise BadField(f"{where}: both ALLZERO and DISCARD set")
        if self.is_normal:
            try:
                Compression(self.compression)
            except ValueError:
                raise BadField(f"{where}: unknown compression id {self.compression}") from None
            if self.data_size == 0 or self.io_offset + blocks > self.orig_blocks:
                raise BadField(f"{where}: piece {self.io_offset}+{blocks} LB lies outside its image of "
                               f"{self.orig_blocks} LB")
            if self.data_offset < FILE_HEADER_STRUCT.size:
                raise BadField(f"{where}: image offset {self.data_offset} lies inside the file header")

    def serialize(self) -> bytes:
        raw = bytearray(INDEX_RECORD_STRUCT.pack(
            self.io_address, self.io_blocks, self.flags, self.compression, 0, self.data_offset, self.data_size,
            self.io_offset, self.orig_blocks, 0, self.io_checksum, 0))
        struct.pack_into("<I", raw, INDEX_RECORD_STRUCT.size - 4, csum.checksum(raw))
        return bytes(raw)

    @classmethod
    def parse(cls, raw: bytes | memoryview, offset: int = 0) -> "IndexRecord":
        """Parse and verify one index record.

        Raises:
            TruncatedRecord, ChecksumMismatch, BadField.
        """
        if len(raw) - offset < INDEX_RECORD_STRUCT.size:
            raise TruncatedRecord(f"index record needs {INDEX_RECORD_STRUCT.size} bytes", offset)
        view = memoryview(raw)[offset:offset + INDEX_RECORD_STRUCT.size]
        if not csum.verifies(view):
            raise ChecksumMismatch("index record checksum mismatch", offset)
        (address, blocks, flags, compression, _r1, data_offset, data_size, io_offset, orig_blocks, _r2, io_checksum,
         _rec_checksum) = INDEX_RECORD_STRUCT.unpack_from(view, 0)
        rec = cls(address, blocks, flags & ~DiffFlag.EXIST, compression, data_offset, data_size, io_offset,
                  orig_blocks, io_checksum)
        try:
            rec.check()
        except BadField as exc:
            raise exc.located(offset=offset)
        return rec


@dataclass(frozen=True)
class IndexSuper:
    """Where the index is: the last 24 bytes of an indexed wdiff."""

    index_offset: int
    n_records: int
    n_data: int

    def serialize(self) -> bytes:
        raw = bytearray(INDEX_SUPER_STRUCT.pack(self.index_offset, self.n_records, self.n_data, 0, 0))
        struct.pack_into("<I", raw, INDEX_SUPER_STRUCT.size - 4, csum.checksum(raw))
        return bytes(raw)

    @classmethod
    def parse(cls, raw: bytes | memoryview, file_size: int) -> "IndexSuper":
        """Parse the index super and check it against the file's size.

        Raises:
            TruncatedRecord, ChecksumMismatch, BadField.
        """
        if len(raw) < INDEX_SUPER_STRUCT.size:
            raise TruncatedRecord(f"index super needs {INDEX_SUPER_STRUCT.size} bytes", file_size - len(raw))
        where = file_size - INDEX_SUPER_STRUCT.size
        if not csum.verifies(memoryview(raw)[:INDEX_SUPER_STRUCT.size]):
            raise ChecksumMismatch("index super checksum mismatch", where)
        index_offset, n_records, n_data, _r1, _checksum = INDEX_SUPER_STRUCT.unpack_from(raw, 0)
        if index_offset % INDEX_ALIGNMENT or index_offset < FILE_HEADER_STRUCT.size:
            raise BadField(f"index offset {index_offset} is not an 8-byte aligned offset after the header", where)
        if index_offset + n_records * INDEX_RECORD_STRUCT.size != where:
            raise BadField(f"index of {n_records} records at {index_offset} does not end at the index super", where)
        return cls(index_offset, n_records, n_data)


def index_padding(offset: int) -> int:
    """Zero bytes needed after the images so the index starts aligned."""
    return -offset % INDEX_ALIGNMENT
