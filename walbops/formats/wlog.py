"""The wlog file: a 4 KiB walblog header, log packs, an end marker.

::

    walblog header (4096 B) || (logpack header PB || data PBs)* || end-marker header PB

walblog header (zero-padded to 4096 bytes; checksum over all 4096 with salt 0)::

    sector_type u16 (=4) || version u16 (=2) || header_size u16 (=4096) || reserved u16
    || checksum u32 || log_checksum_salt u32 || logical_bs u32 || physical_bs u32
    || uuid 16B || begin_lsid u64 || end_lsid u64

end_lsid may lie beyond the real end (walb-tools writes UINT64_MAX when unknown); the
end marker, not end_lsid, ends a wlog.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import BadField, BadMagic, ChecksumMismatch, TruncatedRecord, UnsupportedVersion
from . import checksum as csum
from .ldev import (
    LOGICAL_BLOCK_SIZE,
    SECTOR_TYPE_WALBLOG_HEADER,
    UINT64_MAX,
    UUID_SIZE,
    WALB_LOG_VERSION,
    check_pbs,
)

WLOG_HEADER_SIZE = 4096  # [bytes]
WLOG_HEADER_STRUCT = struct.Struct("<HHHHIIII16sQQ")


@dataclass(frozen=True)
class WlogHeader:
    """The header of a wlog file."""

    physical_bs: int
    log_checksum_salt: int
    uuid: bytes
    begin_lsid: int
    end_lsid: int = UINT64_MAX
    logical_bs: int = LOGICAL_BLOCK_SIZE

    def check(self) -> None:
        check_pbs(self.physical_bs)
        if self.logical_bs != LOGICAL_BLOCK_SIZE:
            raise BadField(f"wlog header logical_bs is {self.logical_bs}, expected 512")
        if len(self.uuid) != UUID_SIZE:
            raise BadField(f"wlog uuid must be {UUID_SIZE} bytes")
        if self.begin_lsid >= self.end_lsid:
            raise BadField(f"wlog begin_lsid {self.begin_lsid} is not below end_lsid {self.end_lsid}")

    def serialize(self) -> bytes:
        self.check()
        block = bytearray(WLOG_HEADER_SIZE)
        WLOG_HEADER_STRUCT.pack_into(block, 0, SECTOR_TYPE_WALBLOG_HEADER, WALB_LOG_VERSION, WLOG_HEADER_SIZE, 0, 0,
                                     self.log_checksum_salt, self.logical_bs, self.physical_bs, self.uuid,
                                     self.begin_lsid, self.end_lsid)
        struct.pack_into("<I", block, 8, csum.checksum(block))
        return bytes(block)

    @classmethod
    def parse(cls, block: bytes | memoryview) -> "WlogHeader":
        """Parse a walblog header.

        Raises:
            TruncatedRecord, BadMagic, UnsupportedVersion, ChecksumMismatch, BadField.
        """
        if len(block) < WLOG_HEADER_SIZE:
            raise TruncatedRecord(f"wlog header needs {WLOG_HEADER_SIZE} bytes, got {len(block)}", 0)
        (sector_type, version, header_size, _reserved, _checksum, salt, logical_bs, physical_bs, raw_uuid,
         begin_lsid, end_lsid) = WLOG_HEADER_STRUCT.unpack_from(block, 0)
        if sector_type != SECTOR_TYPE_WALBLOG_HEADER:
            raise BadMagic(f"wlog header sector type is {sector_type:#06x}, expected "
                           f"{SECTOR_TYPE_WALBLOG_HEADER:#06x} (not a wlog file?)", 0)
        if version != WALB_LOG_VERSION:
            raise UnsupportedVersion(f"wlog version {version}, expected {WALB_LOG_VERSION}", 0)
        if header_size != WLOG_HEADER_SIZE:
            raise BadField(f"wlog header_size {header_size}, expected {WLOG_HEADER_SIZE}", 4)
        if not csum.verifies(memoryview(block)[:WLOG_HEADER_SIZE]):
            raise ChecksumMismatch("wlog header checksum mismatch", 8)
        header = cls(physical_bs, salt, bytes(raw_uuid), begin_lsid, end_lsid, logical_bs)
        header.check()
        return header
