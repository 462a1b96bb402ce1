"""The WalB log device: super sector, ring buffer addressing, log packs.

Layout of a log device (units PB unless stated; docs/formats.md §3)::

    bytes 0..4095 (unused) || super sector 0 || super sector 1 (unused) || ring buffer ...

    super sector 0 at PB  PAGE_SIZE / pbs     (pbs 512: PB 8, pbs 4096: PB 1)
    ring buffer starts    two PB later        (metadata_size is always 0)
    offset_pb(lsid) = ring_buffer_offset + lsid mod ring_buffer_size

Super sector (104 bytes, the rest of the PB zero)::

    sector_type u16 (=1) || version u16 (=2) || checksum u32 || logical_bs u32 (=512)
    || physical_bs u32 || metadata_size u32 (=0) || log_checksum_salt u32 || uuid 16B
    || name 32B (NUL-terminated) || ring_buffer_size u64 || oldest_lsid u64
    || written_lsid u64 || device_size u64 (LB)

Log pack header (24 bytes, then 32-byte records, then zeros to the PB end)::

    checksum u32 || sector_type u16 (=3) || total_io_size u16 (PB) || logpack_lsid u64
    || n_records u16 || n_padding u16 || reserved u32

Log record::

    checksum u32 || flags u32 || offset u64 (LB) || io_size u32 (LB) || lsid_local u16
    || reserved u16 || lsid u64
"""

from __future__ import annotations

import enum
import struct
import uuid as uuidlib
from dataclasses import dataclass, field

from ..errors import BadField, BadMagic, ChecksumMismatch, TruncatedRecord, UnsupportedVersion
from . import checksum as csum

LOGICAL_BLOCK_SIZE = 512  # [bytes] the LB
PAGE_SIZE = 4096  # [bytes] reserved head of the ldev; walb-tools uses getpagesize()
VALID_PBS = (512, 4096)
WALB_LOG_VERSION = 2  # version 2 widened io_size to 32 bits

SECTOR_TYPE_SUPER = 0x0001
SECTOR_TYPE_LOGPACK = 0x0003
SECTOR_TYPE_WALBLOG_HEADER = 0x0004

INVALID_LSID = 0xFFFF_FFFF_FFFF_FFFF
MAX_LSID = INVALID_LSID - 1
UINT64_MAX = 0xFFFF_FFFF_FFFF_FFFF

MAX_NORMAL_IO_LB = 65535  # a logged IO's size fits 16 bits of LB in the driver
MAX_DISCARD_IO_LB = 0xFFFF_FFFF
MAX_TOTAL_IO_SIZE_PB = 65535  # total_io_size is a u16
DISK_NAME_LEN = 32  # [bytes] including the NUL
UUID_SIZE = 16  # [bytes]

SUPER_STRUCT = struct.Struct("<HHIIIII16s32sQQQQ")
LOGPACK_HEADER_STRUCT = struct.Struct("<IHHQHHI")
LOG_RECORD_STRUCT = struct.Struct("<IIQIHHQ")


def check_pbs(pbs: int) -> int:
    """Return ``pbs`` if it is a physical block size WalB supports."""
    if pbs not in VALID_PBS:
        raise BadField(f"physical block size {pbs} is not 512 or 4096")
    return pbs


def max_records(pbs: int) -> int:
    """How many records fit in one log pack header PB (15 at 512 B, 127 at 4 KiB)."""
    return (pbs - LOGPACK_HEADER_STRUCT.size) // LOG_RECORD_STRUCT.size


def capacity_pb(pbs: int, io_size_lb: int) -> int:
    """PBs needed to hold ``io_size_lb`` LBs of data."""
    return -(-io_size_lb * LOGICAL_BLOCK_SIZE // pbs)


def super_sector_offset_pb(pbs: int) -> int:
    """PB address of super sector 0."""
    return PAGE_SIZE // check_pbs(pbs)


def ring_buffer_offset_pb(pbs: int) -> int:
    """PB address of the ring buffer's first block (metadata_size is 0)."""
    return super_sector_offset_pb(pbs) + 2


def ring_buffer_size_for(ldev_bytes: int, pbs: int) -> int:
    """Ring buffer size [PB] that ``wdevc format-ldev`` gives an ldev of ``ldev_bytes``."""
    size = ldev_bytes // check_pbs(pbs) - ring_buffer_offset_pb(pbs)
    if size <= 0:
        raise BadField(f"log device of {ldev_bytes} bytes is too small for a ring buffer at pbs {pbs}")
    return size


def lsid_to_offset_pb(lsid: int, pbs: int, ring_buffer_size: int) -> int:
    """PB address on the ldev where the block of ``lsid`` lives."""
    return ring_buffer_offset_pb(pbs) + lsid % ring_buffer_size


def _text_name(raw: bytes, offset: int | None) -> str:
    end = raw.find(b"\0")
    if end < 0:
        raise BadField("device name is not NUL-terminated", offset)
    # The field is bytes to WalB; undecodable bytes survive a round trip.
    return raw[:end].decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class SuperSector:
    """The log device's super sector 0."""

    physical_bs: int
    log_checksum_salt: int
    uuid: bytes
    name: str
    ring_buffer_size: int
    oldest_lsid: int
    written_lsid: int
    device_size: int  # [LB] size of the walb device
    logical_bs: int = LOGICAL_BLOCK_SIZE
    metadata_size: int = 0

    @property
    def ring_buffer_offset(self) -> int:
        """PB address of the ring buffer."""
        return ring_buffer_offset_pb(self.physical_bs)

    @property
    def uuid_hex(self) -> str:
        return self.uuid.hex()

    def offset_pb(self, lsid: int) -> int:
        """PB address of ``lsid`` on the ldev."""
        return self.ring_buffer_offset + lsid % self.ring_buffer_size

    def check(self) -> None:
        """Raise the matching FormatError if a field breaks WalB's rules."""
        check_pbs(self.physical_bs)
        if self.logical_bs != LOGICAL_BLOCK_SIZE:
            raise BadField(f"super sector logical_bs is {self.logical_bs}, expected 512")
        if self.metadata_size != 0:
            raise BadField(f"super sector metadata_size is {self.metadata_size}, expected 0")
        if len(self.uuid) != UUID_SIZE:
            raise BadField(f"uuid must be {UUID_SIZE} bytes")
        if len(self.name.encode("utf-8", "surrogateescape")) >= DISK_NAME_LEN:
            raise BadField(f"device name {self.name!r} is longer than {DISK_NAME_LEN - 1} bytes")
        if INVALID_LSID in (self.oldest_lsid, self.written_lsid):
            raise BadField("super sector oldest_lsid or written_lsid is INVALID_LSID")
        if self.oldest_lsid > self.written_lsid:
            raise BadField(f"super sector oldest_lsid {self.oldest_lsid} > written_lsid {self.written_lsid}")
        if self.ring_buffer_size == 0:
            raise BadField("super sector ring_buffer_size is 0")

    def serialize(self) -> bytes:
        """Return the whole PB, checksummed with salt 0."""
        self.check()
        block = bytearray(self.physical_bs)
        name = self.name.encode("utf-8", "surrogateescape")
        SUPER_STRUCT.pack_into(
            block, 0, SECTOR_TYPE_SUPER, WALB_LOG_VERSION, 0, self.logical_bs, self.physical_bs,
            self.metadata_size, self.log_checksum_salt, self.uuid, name, self.ring_buffer_size,
            self.oldest_lsid, self.written_lsid, self.device_size,
        )
        struct.pack_into("<I", block, 4, csum.checksum(block))
        return bytes(block)

    @classmethod
    def parse(cls, block: bytes | memoryview, pbs: int | None = None) -> "SuperSector":
        """Parse a super sector PB; ``pbs`` is the device's, when known.

        Raises:
            TruncatedRecord, BadMagic, UnsupportedVersion, ChecksumMismatch, BadField.
        """
        if len(block) < SUPER_STRUCT.size:
            raise TruncatedRecord(f"super sector needs {SUPER_STRUCT.size} bytes, got {len(block)}")
        (sector_type, version, _checksum, logical_bs, physical_bs, metadata_size, salt, raw_uuid, raw_name,
         ring_size, oldest, written, device_size) = SUPER_STRUCT.unpack_from(block, 0)
        if sector_type != SECTOR_TYPE_SUPER:
            raise BadMagic(f"super sector type is {sector_type:#06x}, expected {SECTOR_TYPE_SUPER:#06x}")
        if version != WALB_LOG_VERSION:
            raise UnsupportedVersion(f"super sector version {version}, expected {WALB_LOG_VERSION}")
        check_pbs(physical_bs)
        if pbs is not None and physical_bs != pbs:
            raise BadField(f"super sector physical_bs {physical_bs} differs from the device's {pbs}")
        if len(block) < physical_bs:
            raise TruncatedRecord(f"super sector needs {physical_bs} bytes, got {len(block)}")
        if not csum.verifies(memoryview(block)[:physical_bs]):
            raise ChecksumMismatch("super sector checksum mismatch")
        sector = cls(
            physical_bs=physical_bs, log_checksum_salt=salt, uuid=bytes(raw_uuid), name=_text_name(raw_name, 40),
            ring_buffer_size=ring_size, oldest_lsid=oldest, written_lsid=written, device_size=device_size,
            logical_bs=logical_bs, metadata_size=metadata_size,
        )
        sector.check()
        return sector

    @classmethod
    def format(cls, ldev_bytes: int, ddev_bytes: int, pbs: int, name: str = "",
               salt: int | None = None, uuid: bytes | None = None) -> "SuperSector":
        """A fresh super sector as ``wdevc format-ldev`` writes it (random salt and uuid)."""
        fresh = uuidlib.uuid4().bytes
        return cls(
            physical_bs=check_pbs(pbs),
            log_checksum_salt=int.from_bytes(fresh[:4], "little") if salt is None else salt,
            uuid=uuidlib.uuid4().bytes if uuid is None else uuid,
            name=name, ring_buffer_size=ring_buffer_size_for(ldev_bytes, pbs),
            oldest_lsid=0, written_lsid=0, device_size=ddev_bytes // LOGICAL_BLOCK_SIZE,
        )


class RecordFlag(enum.IntFlag):
    """Flags of a log record."""

    EXIST = 1 << 0
    PADDING = 1 << 1
    DISCARD = 1 << 2


_EXIST = int(RecordFlag.EXIST)
_PADDING = int(RecordFlag.PADDING)
_DISCARD = int(RecordFlag.DISCARD)
_KNOWN_FLAGS = int(RecordFlag.EXIST | RecordFlag.PADDING | RecordFlag.DISCARD)


@dataclass(frozen=True)
class LogRecord:
    """One IO in a log pack."""

    offset: int  # [LB] address on the device; 0 for padding
    io_size: int  # [LB]
    lsid_local: int  # [PB] position of the data after the header, >= 1
    lsid: int  # logpack_lsid + lsid_local
    flags: int = _EXIST
    checksum: int = 0  # of the io_size * 512 data bytes, salted; 0 for padding and discard

    # Plain ints: IntFlag arithmetic costs ~1 us a call on the per-IO path.
    @property
    def is_padding(self) -> bool:
        return bool(self.flags & _PADDING)

    @property
    def is_discard(self) -> bool:
        return bool(self.flags & _DISCARD)

    @property
    def is_normal(self) -> bool:
        return not self.flags & (_PADDING | _DISCARD)

    @property
    def has_data(self) -> bool:
        """Normal and padding records occupy PBs after the header; discards do not."""
        return not self.flags & _DISCARD

    def data_pb(self, pbs: int) -> int:
        """PBs of data this record occupies in the log."""
        return capacity_pb(pbs, self.io_size) if self.has_data else 0

    def serialize(self) -> bytes:
        return LOG_RECORD_STRUCT.pack(self.checksum, self.flags, self.offset, self.io_size, self.lsid_local, 0,
                                      self.lsid)

    @classmethod
    def parse(cls, raw: bytes | memoryview, offset: int = 0) -> "LogRecord":
        if len(raw) - offset < LOG_RECORD_STRUCT.size:
            raise TruncatedRecord(f"log record needs {LOG_RECORD_STRUCT.size} bytes, got {max(0, len(raw) - offset)}")
        checksum_, flags, io_offset, io_size, lsid_local, _reserved, lsid = LOG_RECORD_STRUCT.unpack_from(raw, offset)
        return cls(io_offset, io_size, lsid_local, lsid, flags, checksum_)


@dataclass(frozen=True)
class LogpackHeader:
    """A log pack header: where a pack starts and what IOs follow it."""

    logpack_lsid: int
    total_io_size: int = 0  # [PB] data after the header, padding included, discards excluded
    records: tuple[LogRecord, ...] = field(default_factory=tuple)

    @property
    def n_records(self) -> int:
        return len(self.records)

    @property
    def n_padding(self) -> int:
        return sum(1 for rec in self.records if rec.is_padding)

    @property
    def is_end(self) -> bool:
        """The end marker of a wlog file: no records and lsid UINT64_MAX."""
        return not self.records and self.logpack_lsid == UINT64_MAX

    @property
    def next_lsid(self) -> int:
        """lsid of the pack that follows this one."""
        if not self.records:
            return self.logpack_lsid
        return self.logpack_lsid + 1 + self.total_io_size

    def check(self, pbs: int) -> None:
        """Raise BadField if the header breaks WalB's validity rules."""
        records = self.records
        if len(records) > max_records(pbs):
            raise BadField(f"log pack has {len(records)} records, at most {max_records(pbs)} fit in {pbs} B")
        if self.total_io_size > MAX_TOTAL_IO_SIZE_PB:
            raise BadField(f"log pack total_io_size {self.total_io_size} exceeds {MAX_TOTAL_IO_SIZE_PB}")
        if not records:
            if self.total_io_size != 0:
                raise BadField("log pack without records has total_io_size != 0")
            return
        if self.logpack_lsid + 1 + self.total_io_size > MAX_LSID:
            raise BadField(f"log pack at lsid {self.logpack_lsid}: lsid overflows")
        if len(records) > 1 and self.n_padding > 1:
            raise BadField(f"log pack has {self.n_padding} padding records, at most 1")
        for index, rec in enumerate(records):
            problem = self._record_problem(rec, pbs)
            if problem is not None:
                raise BadField(f"log record {index} of pack at lsid {self.logpack_lsid}: {problem}")

    def _record_problem(self, rec: LogRecord, pbs: int) -> str | None:
        """What is wrong with one of this pack's records, or None (on the path of every IO: the
        message is only made for a record that is wrong)."""
        flags = rec.flags
        if not flags & _EXIST:
            return "EXIST flag not set"
        if flags & ~_KNOWN_FLAGS:
            return f"unknown flag bits {flags:#x}"
        if rec.lsid > MAX_LSID:
            return f"lsid {rec.lsid} beyond MAX_LSID"
        padding, discard = flags & _PADDING, flags & _DISCARD
        if padding and discard:
            return "both PADDING and DISCARD set"
        if rec.lsid_local < 1 or rec.lsid - rec.lsid_local != self.logpack_lsid:
            return f"lsid {rec.lsid} and lsid_local {rec.lsid_local} do not match the pack"
        io_size = rec.io_size
        if io_size == 0 and not padding:
            # walb-tools' wlog-gen writes zero-size padding records; the driver accepts them.
            return "io_size is 0"
        if not discard and io_size > MAX_NORMAL_IO_LB:
            return f"io_size {io_size} LB exceeds {MAX_NORMAL_IO_LB}"
        if padding and io_size * LOGICAL_BLOCK_SIZE % pbs:
            return f"padding of {io_size} LB is not whole PBs"
        if not discard and rec.lsid_local - 1 + capacity_pb(pbs, io_size) > self.total_io_size:
            return f"data ends past total_io_size {self.total_io_size}"
        return None

    def serialize(self, pbs: int, salt: int) -> bytes:
        """Return the header PB, checksummed with ``salt``."""
        self.check(pbs)
        block = bytearray(pbs)
        LOGPACK_HEADER_STRUCT.pack_into(block, 0, 0, SECTOR_TYPE_LOGPACK, self.total_io_size, self.logpack_lsid,
                                        len(self.records), self.n_padding, 0)
        for index, rec in enumerate(self.records):
            offset = LOGPACK_HEADER_STRUCT.size + index * LOG_RECORD_STRUCT.size
            block[offset:offset + LOG_RECORD_STRUCT.size] = rec.serialize()
        struct.pack_into("<I", block, 0, csum.checksum(block, salt))
        return bytes(block)

    @classmethod
    def parse(cls, block: bytes | memoryview, pbs: int, salt: int) -> "LogpackHeader":
        """Parse and validate a header PB.

        Raises:
            TruncatedRecord, BadMagic, ChecksumMismatch, BadField.
        """
        check_pbs(pbs)
        if len(block) < pbs:
            raise TruncatedRecord(f"log pack header needs {pbs} bytes, got {len(block)}")
        _checksum, sector_type, total_io_size, lsid, n_records, n_padding, _reserved = \
            LOGPACK_HEADER_STRUCT.unpack_from(block, 0)
        if sector_type != SECTOR_TYPE_LOGPACK:
            raise BadMagic(f"log pack header sector type is {sector_type:#06x}, expected {SECTOR_TYPE_LOGPACK:#06x}")
        if n_records > max_records(pbs):
            raise BadField(f"log pack claims {n_records} records, at most {max_records(pbs)} fit in {pbs} B")
        if n_records and not csum.verifies(memoryview(block)[:pbs], salt):
            raise ChecksumMismatch(f"log pack header at lsid {lsid}: checksum mismatch")
        records = tuple(
            LogRecord.parse(block, LOGPACK_HEADER_STRUCT.size + index * LOG_RECORD_STRUCT.size)
            for index in range(n_records)
        )
        if n_padding > min(1, n_records):
            raise BadField(f"log pack at lsid {lsid}: n_padding {n_padding} with {n_records} records")
        header = cls(lsid, total_io_size, records)
        header.check(pbs)
        return header


def end_marker(pbs: int, salt: int) -> bytes:
    """The header PB that ends a wlog stream."""
    return LogpackHeader(UINT64_MAX).serialize(pbs, salt)


class LogpackBuilder:
    """Builds log packs the way the walb driver does, padding at the ring end.

    The builder is pure: it collects headers and the data of each record; callers
    write them out. ``ring_buffer_size`` decides where padding goes; pass ``None``
    for an endless log (a wlog without ring).

    Args:
        pbs: physical block size.
        salt: log checksum salt.
        lsid: lsid of the first pack.
        ring_buffer_size: ring size [PB], or None.
    """

    def __init__(self, pbs: int, salt: int, lsid: int, ring_buffer_size: int | None = None) -> None:
        self.pbs = check_pbs(pbs)
        self.salt = salt
        self.ring_buffer_size = ring_buffer_size
        self.lsid = lsid
        self._records: list[LogRecord] = []
        self._data: list[bytes | memoryview] = []
        self._total_io_size = 0

    @property
    def empty(self) -> bool:
        return not self._records

    def _room_pb(self, lsid: int) -> int | None:
        if self.ring_buffer_size is None:
            return None
        return self.ring_buffer_size - lsid % self.ring_buffer_size

    def fits(self, io_size_lb: int, discard: bool = False) -> bool:
        """Whether one more IO (and a padding record it may need) fits in this pack."""
        need_records = 1
        need_pb = 0 if discard else capacity_pb(self.pbs, io_size_lb)
        if not discard:
            data_lsid = self.lsid + 1 + self._total_io_size
            room = self._room_pb(data_lsid)
            if room is not None and room < need_pb:
                if any(rec.is_padding for rec in self._records):
                    return False
                need_records += 1
                need_pb += room
        return (len(self._records) + need_records <= max_records(self.pbs)
                and self._total_io_size + need_pb <= MAX_TOTAL_IO_SIZE_PB)

    def add_normal(self, offset_lb: int, data: bytes | memoryview) -> None:
        """Add a write of ``data`` (a whole number of LBs) at ``offset_lb``."""
        if len(data) == 0 or len(data) % LOGICAL_BLOCK_SIZE:
            raise BadField(f"IO of {len(data)} bytes is not a positive multiple of 512")
        io_size = len(data) // LOGICAL_BLOCK_SIZE
        if io_size > MAX_NORMAL_IO_LB:
            raise BadField(f"IO of {io_size} LB exceeds {MAX_NORMAL_IO_LB}")
        if not self.fits(io_size):
            raise BadField("IO does not fit in the current log pack")
        need_pb = capacity_pb(self.pbs, io_size)
        room = self._room_pb(self.lsid + 1 + self._total_io_size)
        if room is not None and room < need_pb:
            self._append(LogRecord(0, room * self.pbs // LOGICAL_BLOCK_SIZE, self._total_io_size + 1,
                                   self.lsid + self._total_io_size + 1, _EXIST | _PADDING),
                         b"", room)
        lsid_local = self._total_io_size + 1
        rec = LogRecord(offset_lb, io_size, lsid_local, self.lsid + lsid_local, _EXIST,
                        csum.checksum(data, self.salt))
        self._append(rec, data, need_pb)

    def add_discard(self, offset_lb: int, io_size_lb: int) -> None:
        """Add a discard of ``io_size_lb`` LBs at ``offset_lb`` (no data in the log)."""
        if not 0 < io_size_lb <= MAX_DISCARD_IO_LB:
            raise BadField(f"discard of {io_size_lb} LB is out of 1..{MAX_DISCARD_IO_LB}")
        if not self.fits(io_size_lb, discard=True):
            raise BadField("discard does not fit in the current log pack")
        lsid_local = self._total_io_size + 1
        self._append(LogRecord(offset_lb, io_size_lb, lsid_local, self.lsid + lsid_local,
                               _EXIST | _DISCARD), b"", 0)

    def _append(self, rec: LogRecord, data: bytes | memoryview, pb: int) -> None:
        self._records.append(rec)
        self._data.append(data)
        self._total_io_size += pb

    def finish(self) -> tuple[LogpackHeader, list[bytes | memoryview]]:
        """Close the pack; returns its header and the data of each record.

        Data of normal records is as given (callers pad it to whole PBs); padding
        records get b"". The builder then starts the next pack.
        """
        header = LogpackHeader(self.lsid, self._total_io_size, tuple(self._records))
        data = self._data
        self.lsid = header.next_lsid
        self._records, self._data, self._total_io_size = [], [], 0
        return header, data
