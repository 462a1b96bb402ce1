"""Tests for walbops.formats.ldev: super sector, ring addressing, log packs (docs/formats.md §3).

Golden blocks are spelled out field by field; invalid blocks are built with ``struct``
(not with walbops) and resealed, so each test trips exactly the rule it names.
"""

from __future__ import annotations

import lzma
import struct
from collections.abc import Callable
from typing import Any

import pytest
from helpers import VECTORS
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.errors import BadField, BadMagic, ChecksumMismatch, FormatError, TruncatedRecord, UnsupportedVersion
from walbops.formats import checksum as csum
from walbops.formats.ldev import (
    INVALID_LSID,
    MAX_LSID,
    UINT64_MAX,
    LogpackBuilder,
    LogpackHeader,
    LogRecord,
    SuperSector,
    capacity_pb,
    end_marker,
    lsid_to_offset_pb,
    max_records,
    ring_buffer_offset_pb,
    ring_buffer_size_for,
    super_sector_offset_pb,
)

MASK32 = 0xFFFF_FFFF
EXIST, PADDING, DISCARD = 0x1, 0x2, 0x4
SALT = 0xDEAD_BEEF
LSID = 0x12_3456_789A

# --- golden bytes ---------------------------------------------------------------------------------

SUPER_512 = SuperSector(
    physical_bs=512, log_checksum_salt=0xA1B2_C3D4, uuid=bytes(range(16)), name="wdev0",
    ring_buffer_size=65526, oldest_lsid=0x10, written_lsid=0x20, device_size=32768,
)
SUPER_512_GOLDEN = bytes.fromhex(
    "0100"  # sector_type SUPER
    "0200"  # version 2
    "4637c4c3"  # checksum 0xC3C43746 (whole PB, salt 0)
    "00020000"  # logical_bs 512
    "00020000"  # physical_bs 512
    "00000000"  # metadata_size 0
    "d4c3b2a1"  # log_checksum_salt 0xA1B2C3D4
    "000102030405060708090a0b0c0d0e0f"  # uuid
    "7764657630" + "00" * 27 +  # name "wdev0", NUL-padded to 32
    "f6ff000000000000"  # ring_buffer_size 65526
    "1000000000000000"  # oldest_lsid 0x10
    "2000000000000000"  # written_lsid 0x20
    "0080000000000000"  # device_size 32768 LB
) + bytes(512 - 104)

NORMAL = LogRecord(offset=0x0A_0B0C_0D0E, io_size=1, lsid_local=1, lsid=LSID + 1, flags=EXIST, checksum=0x1122_3344)
DISCARD_REC = LogRecord(offset=0x100, io_size=0x12345, lsid_local=2, lsid=LSID + 2, flags=EXIST | DISCARD)
PADDING_REC = LogRecord(offset=0, io_size=3, lsid_local=2, lsid=LSID + 2, flags=EXIST | PADDING)
LOGPACK = LogpackHeader(LSID, total_io_size=4, records=(NORMAL, DISCARD_REC, PADDING_REC))

NORMAL_GOLDEN = bytes.fromhex(
    "44332211"  # checksum 0x11223344
    "01000000"  # flags EXIST
    "0e0d0c0b0a000000"  # offset 0x0A0B0C0D0E LB
    "01000000"  # io_size 1 LB
    "0100"  # lsid_local 1
    "0000"  # reserved1
    "9b78563412000000"  # lsid LSID + 1
)
LOGPACK_GOLDEN = bytes.fromhex(
    "a3f9c333"  # checksum 0x33C3F9A3 (whole PB, salt 0xDEADBEEF)
    "0300"  # sector_type LOGPACK
    "0400"  # total_io_size 4 PB: 1 (normal) + 3 (padding)
    "9a78563412000000"  # logpack_lsid
    "0300"  # n_records 3
    "0100"  # n_padding 1
    "00000000"  # reserved1
) + NORMAL_GOLDEN + bytes.fromhex(
    "00000000" "05000000" "0001000000000000" "45230100" "0200" "0000" "9c78563412000000"  # discard 0x12345 LB
    "00000000" "03000000" "0000000000000000" "03000000" "0200" "0000" "9c78563412000000"  # padding 3 LB
) + bytes(512 - 24 - 3 * 32)

END_MARKER_512_GOLDEN = bytes.fromhex(
    "10415221"  # checksum 0x21524110 = -(0xDEADBEEF + 3 + 2 * 0xFFFFFFFF) mod 2**32
    "0300" "0000"  # sector_type, total_io_size 0
    "ffffffffffffffff"  # logpack_lsid UINT64_MAX
) + bytes(512 - 16)


# --- raw builders (independent of walbops) --------------------------------------------------------

def reseal(block: bytes | bytearray, at: int, salt: int = 0) -> bytes:
    """Store the self-inclusive checksum of ``block`` at ``at``."""
    raw = bytearray(block)
    struct.pack_into("<I", raw, at, 0)
    struct.pack_into("<I", raw, at, csum.checksum(raw, salt))
    return bytes(raw)


def raw_super(pbs: int = 512, **fields: Any) -> bytes:
    values = dict(sector_type=1, version=2, logical_bs=512, physical_bs=pbs, metadata_size=0, salt=0xA1B2_C3D4,
                  uuid=bytes(range(16)), name=b"wdev0", ring=65526, oldest=0x10, written=0x20, device_size=32768)
    values.update(fields)
    block = bytearray(pbs)
    struct.pack_into("<HHIIIII16s32sQQQQ", block, 0, values["sector_type"], values["version"], 0,
                     values["logical_bs"], values["physical_bs"], values["metadata_size"], values["salt"],
                     values["uuid"], values["name"], values["ring"], values["oldest"], values["written"],
                     values["device_size"])
    return reseal(block, 4)


def raw_record(checksum: int = 0, flags: int = EXIST, offset: int = 0, io_size: int = 1, lsid_local: int = 1,
               lsid: int = LSID + 1) -> tuple[int, int, int, int, int, int]:
    return (checksum, flags, offset, io_size, lsid_local, lsid)


def raw_logpack(records: list[tuple[int, int, int, int, int, int]], total_io_size: int, pbs: int = 512,
                lsid: int = LSID, n_records: int | None = None, n_padding: int | None = None,
                sector_type: int = 3, salt: int = SALT) -> bytes:
    block = bytearray(pbs)
    pads = sum(1 for rec in records if rec[1] & PADDING) if n_padding is None else n_padding
    struct.pack_into("<IHHQHHI", block, 0, 0, sector_type, total_io_size, lsid,
                     len(records) if n_records is None else n_records, pads, 0)
    for index, (checksum, flags, offset, io_size, lsid_local, rec_lsid) in enumerate(records):
        struct.pack_into("<IIQIHHQ", block, 24 + 32 * index, checksum, flags, offset, io_size, lsid_local, 0, rec_lsid)
    return reseal(block, 0, salt)


def parses_or_format_error(parse: Callable[..., Any], *args: Any) -> Any:
    """Call ``parse``; a FormatError is fine, anything else fails the test."""
    try:
        return parse(*args)
    except FormatError:
        return None


# --- golden bytes both ways -----------------------------------------------------------------------

def test_super_sector_serializes_to_golden() -> None:
    assert SUPER_512.serialize() == SUPER_512_GOLDEN


def test_super_sector_parses_golden() -> None:
    assert SuperSector.parse(SUPER_512_GOLDEN) == SUPER_512
    assert SuperSector.parse(SUPER_512_GOLDEN, pbs=512) == SUPER_512


def test_super_sector_golden_verifies_to_zero() -> None:
    assert csum.checksum(SUPER_512_GOLDEN) == 0


def test_log_record_serializes_to_golden() -> None:
    assert NORMAL.serialize() == NORMAL_GOLDEN


def test_log_record_parses_golden() -> None:
    assert LogRecord.parse(NORMAL_GOLDEN) == NORMAL
    assert LogRecord.parse(b"\xee" * 5 + NORMAL_GOLDEN, 5) == NORMAL


def test_logpack_serializes_to_golden() -> None:
    assert LOGPACK.serialize(512, SALT) == LOGPACK_GOLDEN


def test_logpack_parses_golden() -> None:
    assert LogpackHeader.parse(LOGPACK_GOLDEN, 512, SALT) == LOGPACK


def test_logpack_golden_properties() -> None:
    assert (LOGPACK.n_records, LOGPACK.n_padding, LOGPACK.next_lsid, LOGPACK.is_end) == (3, 1, LSID + 5, False)
    assert [rec.data_pb(512) for rec in LOGPACK.records] == [1, 0, 3]
    assert [(rec.is_normal, rec.is_discard, rec.is_padding) for rec in LOGPACK.records] == [
        (True, False, False), (False, True, False), (False, False, True)]


def test_end_marker_is_golden() -> None:
    assert end_marker(512, SALT) == END_MARKER_512_GOLDEN


def test_end_marker_parses_as_end() -> None:
    header = LogpackHeader.parse(END_MARKER_512_GOLDEN, 512, SALT)
    assert header.is_end
    assert header.next_lsid == UINT64_MAX


def test_end_marker_at_4096_has_same_head() -> None:
    block = end_marker(4096, SALT)
    assert len(block) == 4096
    assert block[:16] == END_MARKER_512_GOLDEN[:16]
    assert block[16:] == bytes(4096 - 16)


def test_super_sector_at_4096_pads_to_pb() -> None:
    sector = SuperSector(4096, 1, bytes(16), "", 100, 0, 0, 8)
    block = sector.serialize()
    assert len(block) == 4096
    assert block[104:] == bytes(4096 - 104)
    assert SuperSector.parse(block, pbs=4096) == sector


# --- ring addressing ------------------------------------------------------------------------------

@pytest.mark.parametrize(("pbs", "super_pb", "ring_pb"), [(512, 8, 10), (4096, 1, 3)])
def test_super_and_ring_offsets(pbs: int, super_pb: int, ring_pb: int) -> None:
    assert super_sector_offset_pb(pbs) == super_pb
    assert super_sector_offset_pb(pbs) * pbs == 4096  # the super is always at byte 4096
    assert ring_buffer_offset_pb(pbs) == ring_pb


@pytest.mark.parametrize(("ldev_bytes", "pbs", "size"), [
    (32 << 20, 512, 65526),  # the vector device
    (32 << 20, 4096, 8189),
    (5120 + 512, 512, 1),
    (5120 + 1023, 512, 1),  # a partial PB is not usable
])
def test_ring_buffer_size_for(ldev_bytes: int, pbs: int, size: int) -> None:
    assert ring_buffer_size_for(ldev_bytes, pbs) == size


@pytest.mark.parametrize(("ldev_bytes", "pbs"), [(5120, 512), (0, 4096), (12288, 4096)])
def test_ring_buffer_size_for_too_small_ldev(ldev_bytes: int, pbs: int) -> None:
    with pytest.raises(BadField):
        ring_buffer_size_for(ldev_bytes, pbs)


@pytest.mark.parametrize("function", [super_sector_offset_pb, ring_buffer_offset_pb])
@pytest.mark.parametrize("pbs", [0, 1024, 2048, 513])
def test_offsets_reject_unsupported_pbs(function: Callable[[int], int], pbs: int) -> None:
    with pytest.raises(BadField):
        function(pbs)


def test_ring_buffer_size_for_rejects_unsupported_pbs() -> None:
    with pytest.raises(BadField):
        ring_buffer_size_for(32 << 20, 1024)


@pytest.mark.parametrize(("lsid", "pb"), [(0, 10), (99, 109), (100, 10), (101, 11), (250, 60), (10**12, 10)])
def test_lsid_to_offset_pb_wraps(lsid: int, pb: int) -> None:
    assert lsid_to_offset_pb(lsid, 512, 100) == pb


def test_super_sector_offset_pb_uses_its_ring() -> None:
    assert SUPER_512.ring_buffer_offset == 10
    assert SUPER_512.offset_pb(65526) == 10
    assert SUPER_512.offset_pb(65525) == 65535  # the last PB of a 32 MiB ldev


def test_max_records_per_header() -> None:
    assert (max_records(512), max_records(4096)) == (15, 127)


@pytest.mark.parametrize(("pbs", "io_lb", "pb"), [
    (512, 1, 1), (512, 7, 7), (4096, 1, 1), (4096, 8, 1), (4096, 9, 2), (4096, 65535, 8192), (512, 0, 0),
])
def test_capacity_pb(pbs: int, io_lb: int, pb: int) -> None:
    assert capacity_pb(pbs, io_lb) == pb


def test_format_fills_super_like_wdevc() -> None:
    sector = SuperSector.format(32 << 20, 16 << 20, 512, name="peer0", salt=7, uuid=bytes(range(16)))
    assert sector == SuperSector(512, 7, bytes(range(16)), "peer0", 65526, 0, 0, 32768)


def test_format_draws_random_salt_and_uuid() -> None:
    first = SuperSector.format(1 << 20, 1 << 20, 4096)
    second = SuperSector.format(1 << 20, 1 << 20, 4096)
    assert len(first.uuid) == 16
    assert (first.uuid, first.log_checksum_salt) != (second.uuid, second.log_checksum_salt)
    assert SuperSector.parse(first.serialize()) == first


# --- super sector validity ------------------------------------------------------------------------

def test_super_wrong_sector_type_is_bad_magic() -> None:
    with pytest.raises(BadMagic):
        SuperSector.parse(raw_super(sector_type=3))


def test_super_version_1_is_unsupported() -> None:
    with pytest.raises(UnsupportedVersion):
        SuperSector.parse(raw_super(version=1))


@pytest.mark.parametrize("index", [4, 30, 50, 100, 200, 511])
def test_super_flipped_byte_is_checksum_mismatch(index: int) -> None:
    block = bytearray(SUPER_512_GOLDEN)
    block[index] ^= 0x40
    with pytest.raises(ChecksumMismatch):
        SuperSector.parse(bytes(block))


@pytest.mark.parametrize("size", [0, 1, 103])
def test_super_shorter_than_struct_is_truncated(size: int) -> None:
    with pytest.raises(TruncatedRecord):
        SuperSector.parse(SUPER_512_GOLDEN[:size])


@pytest.mark.parametrize("size", [104, 511])
def test_super_shorter_than_pb_is_truncated(size: int) -> None:
    with pytest.raises(TruncatedRecord):
        SuperSector.parse(SUPER_512_GOLDEN[:size])


def test_super_4096_given_512_bytes_is_truncated() -> None:
    with pytest.raises(TruncatedRecord):
        SuperSector.parse(raw_super(pbs=4096)[:512])


def test_super_longer_input_uses_only_its_pb() -> None:
    assert SuperSector.parse(SUPER_512_GOLDEN + b"\xff" * 512) == SUPER_512


def test_super_oldest_above_written_is_bad_field() -> None:
    with pytest.raises(BadField):
        SuperSector.parse(raw_super(oldest=0x21, written=0x20))


@pytest.mark.parametrize("fields", [dict(oldest=INVALID_LSID, written=INVALID_LSID), dict(written=INVALID_LSID)])
def test_super_invalid_lsid_is_bad_field(fields: dict[str, int]) -> None:
    with pytest.raises(BadField):
        SuperSector.parse(raw_super(**fields))


def test_super_name_without_nul_is_bad_field() -> None:
    with pytest.raises(BadField):
        SuperSector.parse(raw_super(name=b"x" * 32))


def test_super_name_of_31_bytes_is_accepted() -> None:
    assert SuperSector.parse(raw_super(name=b"x" * 31)).name == "x" * 31


def test_super_serialize_rejects_long_name() -> None:
    with pytest.raises(BadField):
        SuperSector(512, 0, bytes(16), "x" * 32, 100, 0, 0, 0).serialize()


def test_super_name_not_utf8_survives_a_round_trip() -> None:
    raw = raw_super(name=b"\xff\xfe")
    sector = SuperSector.parse(raw)
    assert sector.serialize() == raw


@pytest.mark.parametrize("physical_bs", [0, 1024, 2048, 8192])
def test_super_bad_pbs_is_bad_field(physical_bs: int) -> None:
    block = bytearray(raw_super())
    struct.pack_into("<I", block, 12, physical_bs)
    with pytest.raises(BadField):
        SuperSector.parse(reseal(block, 4))


def test_super_pbs_differing_from_device_is_bad_field() -> None:
    with pytest.raises(BadField):
        SuperSector.parse(SUPER_512_GOLDEN, pbs=4096)


@pytest.mark.parametrize("fields", [dict(logical_bs=4096), dict(metadata_size=1), dict(ring=0)])
def test_super_field_out_of_bounds_is_bad_field(fields: dict[str, int]) -> None:
    with pytest.raises(BadField):
        SuperSector.parse(raw_super(**fields))


def test_super_serialize_rejects_short_uuid() -> None:
    with pytest.raises(BadField):
        SuperSector(512, 0, bytes(15), "", 100, 0, 0, 0).serialize()


def test_super_nonzero_tail_is_ignored() -> None:
    # docs/formats.md §1.4: readers ignore unused bytes (the checksum still covers them).
    block = bytearray(SUPER_512_GOLDEN)
    block[300] = 0x55
    assert SuperSector.parse(reseal(block, 4)) == SUPER_512


def test_super_overflowed_device_is_valid() -> None:
    # written - oldest may exceed the ring size (docs/formats.md §3.2).
    assert SuperSector.parse(raw_super(ring=10, oldest=0, written=1000)).written_lsid == 1000


# --- logpack header validity ----------------------------------------------------------------------

def test_logpack_wrong_sector_type_is_bad_magic() -> None:
    with pytest.raises(BadMagic):
        LogpackHeader.parse(raw_logpack([raw_record()], 1, sector_type=4), 512, SALT)


@pytest.mark.parametrize("index", [0, 6, 10, 30, 100, 511])
def test_logpack_flipped_byte_is_checksum_mismatch(index: int) -> None:
    block = bytearray(LOGPACK_GOLDEN)
    block[index] ^= 0x01
    with pytest.raises(ChecksumMismatch):
        LogpackHeader.parse(bytes(block), 512, SALT)


def test_logpack_wrong_salt_is_checksum_mismatch() -> None:
    with pytest.raises(ChecksumMismatch):
        LogpackHeader.parse(LOGPACK_GOLDEN, 512, SALT + 1)


@pytest.mark.parametrize("size", [0, 23, 24, 511])
def test_logpack_truncated(size: int) -> None:
    with pytest.raises(TruncatedRecord):
        LogpackHeader.parse(LOGPACK_GOLDEN[:size], 512, SALT)


def test_logpack_4096_given_512_bytes_is_truncated() -> None:
    with pytest.raises(TruncatedRecord):
        LogpackHeader.parse(raw_logpack([raw_record()], 1, pbs=4096)[:512], 4096, SALT)


def test_logpack_too_many_records_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record()], 1, n_records=16), 512, SALT)


def test_logpack_full_header_is_accepted() -> None:
    records = [raw_record(flags=EXIST | DISCARD, lsid_local=1)] * 15
    assert LogpackHeader.parse(raw_logpack(records, 0), 512, SALT).n_records == 15


def test_logpack_n_padding_2_is_bad_field() -> None:
    records = [raw_record(flags=EXIST | PADDING, offset=0, io_size=1, lsid_local=1, lsid=LSID + 1),
               raw_record(flags=EXIST | PADDING, offset=0, io_size=1, lsid_local=2, lsid=LSID + 2)]
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack(records, 2), 512, SALT)


def test_logpack_n_padding_field_2_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record()], 1, n_padding=2), 512, SALT)


def test_logpack_record_without_exist_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(flags=0)], 1), 512, SALT)


def test_logpack_padding_and_discard_together_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(flags=EXIST | PADDING | DISCARD)], 1), 512, SALT)


@pytest.mark.parametrize("lsid", [LSID, LSID + 2, 0])
def test_logpack_record_lsid_mismatch_is_bad_field(lsid: int) -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(lsid=lsid)], 1), 512, SALT)


def test_logpack_record_lsid_local_0_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(lsid_local=0, lsid=LSID)], 1), 512, SALT)


@pytest.mark.parametrize("flags", [EXIST, EXIST | DISCARD])
def test_logpack_zero_size_io_is_bad_field(flags: int) -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(flags=flags, io_size=0)], 1), 512, SALT)


def test_logpack_zero_size_padding_is_accepted() -> None:
    # walb-tools' wlog-gen writes these (s2.wlog's first record); the driver accepts them.
    records = [raw_record(flags=EXIST | PADDING, io_size=0, lsid_local=1, lsid=LSID + 1),
               raw_record(flags=EXIST, io_size=1, lsid_local=1, lsid=LSID + 1)]
    header = LogpackHeader.parse(raw_logpack(records, 1), 512, SALT)
    assert header.records[0].is_padding
    assert header.records[0].data_pb(512) == 0


def test_logpack_normal_io_above_65535_lb_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(io_size=65536)], 8192, pbs=4096), 4096, SALT)


def test_logpack_largest_normal_io_is_accepted() -> None:
    header = LogpackHeader.parse(raw_logpack([raw_record(io_size=65535)], 8192, pbs=4096), 4096, SALT)
    assert header.records[0].data_pb(4096) == 8192


def test_logpack_largest_discard_is_accepted() -> None:
    records = [raw_record(flags=EXIST | DISCARD, io_size=0xFFFF_FFFF)]
    assert LogpackHeader.parse(raw_logpack(records, 0), 512, SALT).records[0].io_size == 0xFFFF_FFFF


def test_logpack_data_past_total_io_size_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(io_size=2)], 1), 512, SALT)


def test_logpack_without_records_but_data_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([], 1), 512, SALT)


def test_logpack_without_records_skips_checksum() -> None:
    # docs/formats.md §3.3.4: the checksum of an empty header is not checked.
    block = bytearray(raw_logpack([], 0, lsid=77))
    block[0] ^= 0xFF
    assert LogpackHeader.parse(bytes(block), 512, SALT) == LogpackHeader(77)


def test_logpack_lsid_overflow_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(lsid=MAX_LSID)], 1, lsid=MAX_LSID - 1), 512, SALT)


def test_logpack_total_io_size_at_limit_is_accepted() -> None:
    records = [raw_record(io_size=65535)]
    assert LogpackHeader.parse(raw_logpack(records, 65535), 512, SALT).total_io_size == 65535


def test_logpack_header_check_rejects_total_above_u16() -> None:
    with pytest.raises(BadField):
        LogpackHeader(0, 65536, (LogRecord(1, 1, 1, 1),)).check(512)


def test_logpack_serialize_rejects_too_many_records() -> None:
    records = tuple(LogRecord(index, 1, 1, 1, EXIST | DISCARD) for index in range(16))
    with pytest.raises(BadField):
        LogpackHeader(0, 0, records).serialize(512, SALT)


def test_logpack_longer_input_uses_only_its_pb() -> None:
    assert LogpackHeader.parse(LOGPACK_GOLDEN + b"\xff" * 100, 512, SALT) == LOGPACK


def test_logpack_empty_with_n_padding_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([], 0, n_padding=1), 512, SALT)


def test_logpack_unknown_record_flag_is_bad_field() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack([raw_record(flags=EXIST | 0x8)], 1), 512, SALT)


def test_logpack_padding_above_65535_lb_is_bad_field() -> None:
    records = [raw_record(flags=EXIST | PADDING, io_size=65536)]
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack(records, 8192, pbs=4096), 4096, SALT)


def test_logpack_record_lsid_above_max_is_bad_field() -> None:
    base = MAX_LSID - 10
    records = [raw_record(flags=EXIST | DISCARD, lsid_local=11, lsid=base + 11)]
    with pytest.raises(BadField):
        LogpackHeader.parse(raw_logpack(records, 0, lsid=base), 512, SALT)


def test_logpack_parse_rejects_unsupported_pbs() -> None:
    with pytest.raises(BadField):
        LogpackHeader.parse(bytes(8), 8, SALT)


def test_log_record_short_input_is_truncated() -> None:
    with pytest.raises(TruncatedRecord):
        LogRecord.parse(NORMAL_GOLDEN[:31])


# --- LogpackBuilder -------------------------------------------------------------------------------

def lbs(count: int, fill: int = 0xAB) -> bytes:
    """``count`` logical blocks of data."""
    return bytes([fill]) * (512 * count)


def test_builder_inserts_padding_when_io_would_cross_ring_end() -> None:
    builder = LogpackBuilder(512, SALT, lsid=95, ring_buffer_size=100)
    builder.add_normal(0x20, lbs(1))  # data at lsid 96
    builder.add_discard(0x100, 8)  # no data
    builder.add_normal(0x200, lbs(8))  # 3 PB left before the ring end at lsid 100
    header, data = builder.finish()
    assert header.records == (
        LogRecord(0x20, 1, 1, 96, EXIST, csum.checksum(lbs(1), SALT)),
        LogRecord(0x100, 8, 2, 97, EXIST | DISCARD),
        LogRecord(0, 3, 2, 97, EXIST | PADDING),
        LogRecord(0x200, 8, 5, 100, EXIST, csum.checksum(lbs(8), SALT)),
    )
    assert header.total_io_size == 12
    assert header.next_lsid == 108
    assert data == [lbs(1), b"", b"", lbs(8)]
    assert lsid_to_offset_pb(100, 512, 100) == ring_buffer_offset_pb(512)


def test_builder_padding_io_size_is_in_lb_at_4096() -> None:
    builder = LogpackBuilder(4096, SALT, lsid=47, ring_buffer_size=50)
    builder.add_normal(0, lbs(8))  # 1 PB at lsid 48
    builder.add_normal(8, lbs(16))  # 2 PB, but only lsid 49 is left
    header, _ = builder.finish()
    padding = header.records[1]
    assert (padding.io_size, padding.offset, padding.lsid_local, padding.lsid) == (8, 0, 2, 49)
    assert header.records[2].lsid == 50
    assert header.total_io_size == 4


def test_builder_no_padding_when_io_ends_exactly_at_ring_end() -> None:
    builder = LogpackBuilder(512, SALT, lsid=95, ring_buffer_size=100)
    builder.add_normal(0, lbs(4))  # lsids 96..99
    header, _ = builder.finish()
    assert header.n_padding == 0
    assert header.next_lsid == 100


def test_builder_header_may_sit_at_last_pb_of_ring() -> None:
    builder = LogpackBuilder(512, SALT, lsid=99, ring_buffer_size=100)
    builder.add_normal(0, lbs(8))
    header, _ = builder.finish()
    assert header.n_padding == 0
    assert header.records[0].lsid == 100
    assert lsid_to_offset_pb(99, 512, 100) == 109
    assert lsid_to_offset_pb(100, 512, 100) == 10


def test_builder_without_ring_never_pads() -> None:
    builder = LogpackBuilder(512, SALT, lsid=99)
    builder.add_normal(0, lbs(100))
    header, _ = builder.finish()
    assert header.n_padding == 0


def test_builder_discards_take_no_data_pb() -> None:
    builder = LogpackBuilder(512, SALT, lsid=7)
    builder.add_discard(0, 1000)
    builder.add_discard(5000, 0xFFFF_FFFF)
    header, _ = builder.finish()
    assert header.total_io_size == 0
    assert [rec.lsid_local for rec in header.records] == [1, 1]
    assert header.next_lsid == 8


def test_builder_next_lsid_arithmetic() -> None:
    builder = LogpackBuilder(4096, SALT, lsid=1000)
    builder.add_normal(0, lbs(9))  # 2 PB
    builder.add_normal(64, lbs(1))  # 1 PB
    first, _ = builder.finish()
    assert [rec.lsid_local for rec in first.records] == [1, 3]
    assert first.next_lsid == 1000 + 1 + 3
    assert builder.lsid == first.next_lsid
    assert builder.empty


def test_builder_empty_pack_does_not_advance() -> None:
    builder = LogpackBuilder(512, SALT, lsid=5)
    header, data = builder.finish()
    assert (header, data, builder.lsid) == (LogpackHeader(5), [], 5)


def test_builder_checksums_io_data_with_salt() -> None:
    builder = LogpackBuilder(512, SALT, lsid=0)
    data = bytes(range(256)) * 4
    builder.add_normal(0, data)
    header, _ = builder.finish()
    assert header.records[0].checksum == csum.checksum(data, SALT)


def test_builder_fits_false_when_records_are_full() -> None:
    builder = LogpackBuilder(512, SALT, lsid=0)
    for index in range(15):
        assert builder.fits(1, discard=True)
        builder.add_discard(index, 1)
    assert not builder.fits(1, discard=True)
    assert not builder.fits(1)
    with pytest.raises(BadField):
        builder.add_discard(100, 1)


def test_builder_fits_false_when_total_would_overflow() -> None:
    builder = LogpackBuilder(512, SALT, lsid=0)
    builder.add_normal(0, memoryview(bytes(65535 * 512)))  # 65535 PB, the u16 maximum
    assert not builder.fits(1)
    assert builder.fits(1, discard=True)
    with pytest.raises(BadField):
        builder.add_normal(1, lbs(1))


def test_builder_fits_counts_the_padding_record() -> None:
    builder = LogpackBuilder(512, SALT, lsid=0, ring_buffer_size=100)
    for index in range(13):
        builder.add_discard(index, 1)
    builder.add_normal(0, lbs(97))  # data 1..97; 2 PB left
    assert builder.fits(2)  # the 15th record, no padding needed
    assert not builder.fits(3)  # padding + IO would be 16 records


def test_builder_fits_counts_the_padding_pbs() -> None:
    builder = LogpackBuilder(512, SALT, lsid=0, ring_buffer_size=65530)
    builder.add_normal(0, lbs(65500))  # data at lsids 1..65500; 29 PB left before the ring end
    assert builder.fits(29)  # no padding: total 65529
    assert not builder.fits(30)  # 65530 alone would fit, but 29 PB of padding make it 65559


def test_builder_fits_false_for_a_second_padding() -> None:
    builder = LogpackBuilder(512, SALT, lsid=0, ring_buffer_size=10)
    builder.add_normal(0, lbs(8))  # lsids 1..8
    builder.add_normal(8, lbs(2))  # 1 PB left: padding at 9, IO at 10..11
    assert builder.fits(8)  # lsids 12..19 end exactly at the ring end
    assert not builder.fits(9)  # would need a second padding


@pytest.mark.parametrize("size", [0, 1, 511, 513])
def test_builder_rejects_partial_lb(size: int) -> None:
    with pytest.raises(BadField):
        LogpackBuilder(512, SALT, lsid=0).add_normal(0, bytes(size))


def test_builder_rejects_io_above_65535_lb() -> None:
    with pytest.raises(BadField):
        LogpackBuilder(4096, SALT, lsid=0).add_normal(0, memoryview(bytes(65536 * 512)))


@pytest.mark.parametrize("size", [0, 1 << 32])
def test_builder_rejects_discard_size(size: int) -> None:
    with pytest.raises(BadField):
        LogpackBuilder(512, SALT, lsid=0).add_discard(0, size)


def test_builder_rejects_unsupported_pbs() -> None:
    with pytest.raises(BadField):
        LogpackBuilder(1024, SALT, lsid=0)


@st.composite
def io_streams(draw: st.DrawFn) -> tuple[int, int, int, list[tuple[bool, int]]]:
    pbs = draw(st.sampled_from([512, 4096]))
    ring = draw(st.integers(130, 600))  # larger than any IO below (64 LB = 64 PB at pbs 512)
    lsid = draw(st.integers(0, 5000))
    ios = draw(st.lists(st.tuples(st.booleans(), st.integers(1, 64)), min_size=1, max_size=60))
    return pbs, ring, lsid, ios


@settings(max_examples=200, deadline=None)
@given(stream=io_streams())
def test_builder_stream_keeps_ring_invariants(stream: tuple[int, int, int, list[tuple[bool, int]]]) -> None:
    pbs, ring, lsid, ios = stream
    builder = LogpackBuilder(pbs, SALT, lsid, ring)
    packs = []
    for address, (discard, size) in enumerate(ios):
        if not builder.fits(size, discard):
            packs.append(builder.finish()[0])
        if discard:
            builder.add_discard(address, size)
        else:
            builder.add_normal(address, lbs(size))
    packs.append(builder.finish()[0])

    expected_lsid = lsid
    for header in packs:
        assert header.logpack_lsid == expected_lsid
        assert LogpackHeader.parse(header.serialize(pbs, SALT), pbs, SALT) == header
        assert header.total_io_size == sum(rec.data_pb(pbs) for rec in header.records)
        for index, rec in enumerate(header.records):
            position = rec.lsid % ring
            if rec.is_normal:
                assert position + rec.data_pb(pbs) <= ring  # never crosses the ring end
            if rec.is_padding:
                assert position + rec.data_pb(pbs) == ring  # fills up to the ring end exactly
                following = header.records[index + 1]
                assert following.is_normal and following.lsid % ring == 0
                assert ring - position < following.data_pb(pbs)  # and only when needed
        expected_lsid = header.next_lsid

    kept = [(rec.offset, rec.is_discard, rec.io_size) for header in packs for rec in header.records
            if not rec.is_padding]
    assert kept == [(address, discard, size) for address, (discard, size) in enumerate(ios)]


# --- property tests: round trips and fuzzing ------------------------------------------------------

U32 = st.integers(0, MASK32)
U64 = st.integers(0, UINT64_MAX)


@st.composite
def super_sectors(draw: st.DrawFn) -> SuperSector:
    name = draw(st.text(max_size=31).filter(lambda text: "\0" not in text and len(text.encode()) < 32))
    written = draw(st.integers(0, MAX_LSID))
    return SuperSector(
        physical_bs=draw(st.sampled_from([512, 4096])), log_checksum_salt=draw(U32),
        uuid=draw(st.binary(min_size=16, max_size=16)), name=name,
        ring_buffer_size=draw(st.integers(1, UINT64_MAX)), oldest_lsid=draw(st.integers(0, written)),
        written_lsid=written, device_size=draw(U64),
    )


@st.composite
def logpack_headers(draw: st.DrawFn) -> tuple[int, LogpackHeader]:
    pbs = draw(st.sampled_from([512, 4096]))
    lsid = draw(st.one_of(st.integers(0, 1 << 40), st.integers(MAX_LSID - (1 << 20), MAX_LSID - 70_000)))
    kinds = draw(st.lists(st.sampled_from(["normal", "discard", "padding"]), max_size=max_records(pbs)))
    if kinds.count("padding") > 1:
        first = kinds.index("padding")
        kinds = kinds[:first + 1] + [kind for kind in kinds[first + 1:] if kind != "padding"]
    total = 0
    records = []
    for kind in kinds:
        local = total + 1
        if kind == "normal":
            size = draw(st.integers(1, 2048))
            records.append(LogRecord(draw(U64), size, local, lsid + local, EXIST, draw(U32)))
            total += capacity_pb(pbs, size)
        elif kind == "discard":
            records.append(LogRecord(draw(U64), draw(st.integers(1, MASK32)), local, lsid + local, EXIST | DISCARD))
        else:
            padding_pb = draw(st.integers(0, 64))
            records.append(LogRecord(0, padding_pb * pbs // 512, local, lsid + local, EXIST | PADDING))
            total += padding_pb
    return pbs, LogpackHeader(lsid, total, tuple(records))


@settings(max_examples=200, deadline=None)
@given(sector=super_sectors())
def test_super_sector_round_trip(sector: SuperSector) -> None:
    block = sector.serialize()
    assert len(block) == sector.physical_bs
    assert SuperSector.parse(block, sector.physical_bs) == sector


@settings(max_examples=200, deadline=None)
@given(case=logpack_headers(), salt=U32)
def test_logpack_round_trip(case: tuple[int, LogpackHeader], salt: int) -> None:
    pbs, header = case
    block = header.serialize(pbs, salt)
    assert len(block) == pbs
    assert LogpackHeader.parse(block, pbs, salt) == header


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32))
def test_log_record_round_trip_of_any_32_bytes(raw: bytes) -> None:
    raw = raw[:22] + b"\0\0" + raw[24:]  # reserved1 is written as zero
    assert LogRecord.parse(raw).serialize() == raw


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=4200), pbs=st.sampled_from([None, 512, 4096]))
def test_super_parse_random_bytes_raises_only_format_errors(raw: bytes, pbs: int | None) -> None:
    parses_or_format_error(SuperSector.parse, raw, pbs)


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 111), st.integers(0, 255)), min_size=1, max_size=8))
def test_super_parse_mutated_resealed_raises_only_format_errors(edits: list[tuple[int, int]]) -> None:
    block = bytearray(SUPER_512_GOLDEN)
    for index, value in edits:
        block[index] = value
    parses_or_format_error(SuperSector.parse, reseal(block, 4))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=600), pbs=st.sampled_from([512, 4096]), salt=U32)
def test_logpack_parse_random_bytes_raises_only_format_errors(raw: bytes, pbs: int, salt: int) -> None:
    parses_or_format_error(LogpackHeader.parse, raw, pbs, salt)


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 24 + 32 * 4), st.integers(0, 255)), min_size=1, max_size=8))
def test_logpack_parse_mutated_resealed_raises_only_format_errors(edits: list[tuple[int, int]]) -> None:
    block = bytearray(LOGPACK_GOLDEN)
    for index, value in edits:
        block[index] = value
    parses_or_format_error(LogpackHeader.parse, reseal(block, 0, SALT), 512, SALT)


# --- the walb-tools vector device -----------------------------------------------------------------

@pytest.fixture(scope="module")
def ldev_head() -> bytes:
    path = VECTORS / "L512.ldev.img.xz"
    if not path.exists():
        pytest.skip(f"vector {path} not present")
    with lzma.open(path) as stream:
        return stream.read(11 * 512)  # up to and including the first ring PB


def test_vector_ldev_super_sector(ldev_head: bytes) -> None:
    assert ldev_head[:4096] == bytes(4096)
    sector = SuperSector.parse(ldev_head[4096:4608], pbs=512)
    assert sector == SuperSector(
        physical_bs=512, log_checksum_salt=4042102797, uuid=bytes.fromhex("86f73b444f0867fe84a30ab2d3dfdf6c"),
        name="peer0", ring_buffer_size=65526, oldest_lsid=0, written_lsid=0, device_size=32768,
    )
    assert sector.serialize() == ldev_head[4096:4608]  # walbops writes the same bytes


def test_vector_ldev_first_logpack(ldev_head: bytes) -> None:
    sector = SuperSector.parse(ldev_head[4096:4608], pbs=512)
    start = sector.offset_pb(0) * 512
    header = LogpackHeader.parse(ldev_head[start:start + 512], 512, sector.log_checksum_salt)
    assert header.logpack_lsid == 0
    assert header.n_records >= 1
    assert header.serialize(512, sector.log_checksum_salt) == ldev_head[start:start + 512]
