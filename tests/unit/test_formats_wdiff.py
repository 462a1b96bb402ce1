"""Tests for walbops.formats.wdiff and walbops.formats.indexed (docs/formats.md §5, §6).

Golden blocks are spelled out field by field; invalid blocks are built with ``struct``
and resealed so that each test trips the rule it names. The vector tests walk
walb-tools' own wdiff files.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from helpers import VECTORS
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.errors import BadField, BadMagic, ChecksumMismatch, FormatError, TruncatedRecord, UnsupportedVersion
from walbops.formats import checksum as csum
from walbops.formats.compression import Compression, decompress
from walbops.formats.indexed import (
    INDEX_RECORD_STRUCT,
    IndexRecord,
    IndexSuper,
    index_padding,
    split_aligned,
)
from walbops.formats.wdiff import (
    MAX_PACK_DATA,
    MAX_PACK_RECORDS,
    PACK_SIZE,
    DiffFlag,
    DiffRecord,
    DiffType,
    FileHeader,
    PackBuilder,
    PackHeader,
    eof_pack,
)

MASK32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF
ALLZERO, DISCARD = 0x02, 0x04
UUID = bytes(range(0xF0, 0x100))

# --- golden bytes ---------------------------------------------------------------------------------

SORTED_HEADER_GOLDEN = bytes.fromhex(
    "26201c18"  # checksum 0x181C2026 (32 bytes, salt 0)
    "0200"  # version 2
    "00"  # type sorted
    "00"  # reserved1
    "00000000"  # reserved2 (max_io_blocks in old walb-tools)
    "00000000"  # reserved3
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"  # uuid
)
INDEXED_HEADER_GOLDEN = bytes.fromhex(
    "26201b18"  # checksum 0x181B2026: type 1 adds 0x10000 to the sum
    "0200" "01" "00" "00000000" "00000000"
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
)

NORMAL_REC = DiffRecord(0x1000, 8, 0, Compression.LZ4, data_offset=0, data_size=100, checksum=0xCAFE_BABE)
ALLZERO_REC = DiffRecord(0x1008, 16, ALLZERO, Compression.NONE, data_offset=100)
DISCARD_REC = DiffRecord(0x2000, 0x12345, DISCARD, Compression.NONE, data_offset=100)
NORMAL_REC_GOLDEN = bytes.fromhex(
    "0010000000000000"  # io_address 0x1000 LB
    "08000000"  # io_blocks 8
    "00"  # flags: normal
    "04"  # compression lz4
    "0000"  # reserved1
    "00000000"  # data_offset 0
    "64000000"  # data_size 100
    "bebafeca"  # checksum 0xCAFEBABE
    "00000000"  # reserved2
)
ALLZERO_REC_GOLDEN = bytes.fromhex("0810000000000000" "10000000" "02" "00" "0000" "64000000" "00000000" "00000000"
                                   "00000000")
DISCARD_REC_GOLDEN = bytes.fromhex("0020000000000000" "45230100" "04" "00" "0000" "64000000" "00000000" "00000000"
                                   "00000000")
PACK = PackHeader((NORMAL_REC, ALLZERO_REC, DISCARD_REC))
PACK_GOLDEN = bytes.fromhex(
    "44dcff34"  # checksum 0x34FFDC44 (4096 bytes, salt 0)
    "0300"  # n_records 3
    "00"  # flags: not END
    "00"  # reserved0
    "64000000"  # total_size 100
    "00000000"  # reserved1
) + NORMAL_REC_GOLDEN + ALLZERO_REC_GOLDEN + DISCARD_REC_GOLDEN + bytes(4096 - 16 - 3 * 32)
EOF_PACK_GOLDEN = bytes.fromhex(
    "0000ffff"  # checksum 0xFFFF0000
    "0000"  # n_records 0
    "01"  # flags END
) + bytes(4096 - 7)

INDEX_REC = IndexRecord(io_address=0x800, io_blocks=0x200, flags=0, compression=Compression.LZ4, data_offset=0x20,
                        data_size=0x1234, io_offset=0x10, orig_blocks=0x400, io_checksum=0x5566_7788)
INDEX_REC_GOLDEN = bytes.fromhex(
    "0008000000000000"  # io_address 0x800
    "00020000"  # io_blocks 0x200
    "00"  # flags
    "04"  # compression lz4
    "0000"  # reserved1
    "2000000000000000"  # data_offset 32
    "34120000"  # data_size 0x1234
    "10000000"  # io_offset 0x10
    "00040000"  # orig_blocks 0x400
    "00000000"  # reserved2
    "88776655"  # io_checksum
    "146499aa"  # rec_checksum 0xAA996414 (48 bytes, salt 0)
)
INDEX_SUPER = IndexSuper(index_offset=0x1238, n_records=3, n_data=2)
INDEX_SUPER_GOLDEN = bytes.fromhex(
    "3812000000000000"  # index_offset 0x1238
    "03000000"  # n_records
    "02000000"  # n_data
    "00000000"  # reserved1
    "c3edffff"  # checksum 0xFFFFEDC3 = -(0x1238 + 3 + 2)
)
INDEXED_FILE_SIZE = 0x1238 + 3 * 48 + 24  # the index ends where the super starts


# --- raw builders (independent of walbops) --------------------------------------------------------

def reseal(block: bytes | bytearray, at: int) -> bytes:
    raw = bytearray(block)
    struct.pack_into("<I", raw, at, 0)
    struct.pack_into("<I", raw, at, csum.checksum(raw))
    return bytes(raw)


def raw_pack(records: list[tuple[int, ...]], total_size: int | None = None, n_records: int | None = None,
             flags: int = 0) -> bytes:
    """A resealed pack block; records are (address, blocks, flags, compression, data_offset, data_size, checksum)."""
    block = bytearray(PACK_SIZE)
    total = sum(rec[5] for rec in records) if total_size is None else total_size
    struct.pack_into("<IHBBII", block, 0, 0, len(records) if n_records is None else n_records, flags, 0, total, 0)
    for index, (address, blocks, rec_flags, compression, offset, size, checksum) in enumerate(records):
        struct.pack_into("<QIBBHIIII", block, 16 + 32 * index, address, blocks, rec_flags, compression, 0, offset, size,
                         checksum, 0)
    return reseal(block, 0)


def raw_index_record(address: int = 0x800, blocks: int = 0x200, flags: int = 0, compression: int = 4,
                     data_offset: int = 0x20, data_size: int = 0x1234, io_offset: int = 0x10,
                     orig_blocks: int = 0x400) -> bytes:
    raw = struct.pack("<QIBBHQIIIIII", address, blocks, flags, compression, 0, data_offset, data_size, io_offset,
                      orig_blocks, 0, 0x5566_7788, 0)
    return reseal(raw, 44)


def raw_index_super(index_offset: int, n_records: int, n_data: int = 0) -> bytes:
    return reseal(struct.pack("<QIIII", index_offset, n_records, n_data, 0, 0), 20)


def parses_or_format_error(parse: Callable[..., Any], *args: Any) -> Any:
    try:
        return parse(*args)
    except FormatError:
        return None


# --- golden bytes both ways -----------------------------------------------------------------------

@pytest.mark.parametrize(("header", "golden"), [
    (FileHeader(UUID, DiffType.SORTED), SORTED_HEADER_GOLDEN),
    (FileHeader(UUID, DiffType.INDEXED), INDEXED_HEADER_GOLDEN),
], ids=["sorted", "indexed"])
def test_file_header_golden_both_ways(header: FileHeader, golden: bytes) -> None:
    assert header.serialize() == golden
    assert FileHeader.parse(golden) == header


@pytest.mark.parametrize(("record", "golden"), [
    (NORMAL_REC, NORMAL_REC_GOLDEN), (ALLZERO_REC, ALLZERO_REC_GOLDEN), (DISCARD_REC, DISCARD_REC_GOLDEN),
], ids=["normal", "allzero", "discard"])
def test_diff_record_golden_both_ways(record: DiffRecord, golden: bytes) -> None:
    assert record.serialize() == golden
    assert DiffRecord.parse(golden) == record


def test_diff_record_kinds() -> None:
    assert [(rec.is_normal, rec.is_all_zero, rec.is_discard) for rec in PACK.records] == [
        (True, False, False), (False, True, False), (False, False, True)]
    assert NORMAL_REC.end_address == 0x1008


def test_pack_header_golden_both_ways() -> None:
    assert PACK.serialize() == PACK_GOLDEN
    assert PackHeader.parse(PACK_GOLDEN) == PACK
    assert PACK.total_size == 100


def test_eof_pack_golden_both_ways() -> None:
    assert eof_pack() == EOF_PACK_GOLDEN
    assert PackHeader.parse(EOF_PACK_GOLDEN) == PackHeader((), is_end=True)


def test_index_record_golden_both_ways() -> None:
    assert INDEX_REC.serialize() == INDEX_REC_GOLDEN
    assert IndexRecord.parse(INDEX_REC_GOLDEN) == INDEX_REC


def test_index_record_parses_at_offset() -> None:
    assert IndexRecord.parse(b"\xee" * 8 + INDEX_REC_GOLDEN, 8) == INDEX_REC


def test_index_super_golden_both_ways() -> None:
    assert INDEX_SUPER.serialize() == INDEX_SUPER_GOLDEN
    assert IndexSuper.parse(INDEX_SUPER_GOLDEN, INDEXED_FILE_SIZE) == INDEX_SUPER


def test_struct_sizes() -> None:
    assert (len(SORTED_HEADER_GOLDEN), len(NORMAL_REC_GOLDEN), len(INDEX_REC_GOLDEN), len(INDEX_SUPER_GOLDEN)) == (
        32, 32, 48, 24)
    assert MAX_PACK_RECORDS == 127
    assert MAX_PACK_DATA == 32 << 20


# --- file header validity -------------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 1, 3])
def test_file_header_other_version_is_unsupported(version: int) -> None:
    block = bytearray(SORTED_HEADER_GOLDEN)
    struct.pack_into("<H", block, 4, version)
    with pytest.raises(UnsupportedVersion):
        FileHeader.parse(reseal(block, 0))


@pytest.mark.parametrize("index", [0, 6, 8, 16, 31])
def test_file_header_flipped_byte_is_checksum_mismatch(index: int) -> None:
    block = bytearray(SORTED_HEADER_GOLDEN)
    block[index] ^= 0x20
    with pytest.raises(ChecksumMismatch):
        FileHeader.parse(bytes(block))


@pytest.mark.parametrize("size", [0, 4, 31])
def test_file_header_truncated(size: int) -> None:
    with pytest.raises(TruncatedRecord):
        FileHeader.parse(SORTED_HEADER_GOLDEN[:size])


@pytest.mark.parametrize("diff_type", [2, 255])
def test_file_header_unknown_type_is_bad_magic(diff_type: int) -> None:
    block = bytearray(SORTED_HEADER_GOLDEN)
    block[6] = diff_type
    with pytest.raises(BadMagic):
        FileHeader.parse(reseal(block, 0))


def test_file_header_ignores_reserved_fields() -> None:
    # Older walb-tools stored max_io_blocks at offset 8; readers ignore it.
    block = bytearray(SORTED_HEADER_GOLDEN)
    struct.pack_into("<BII", block, 7, 1, 2048, 5)
    assert FileHeader.parse(reseal(block, 0)) == FileHeader(UUID)


@pytest.mark.parametrize("uuid", [b"", bytes(15), bytes(17)])
def test_file_header_serialize_rejects_uuid_size(uuid: bytes) -> None:
    with pytest.raises(BadField):
        FileHeader(uuid).serialize()


# --- diff records and pack validity ---------------------------------------------------------------

def test_diff_record_exist_flag_is_ignored() -> None:
    raw = bytearray(NORMAL_REC_GOLDEN)
    raw[12] = 0x01  # EXIST, as older walb-tools wrote
    assert DiffRecord.parse(bytes(raw)) == NORMAL_REC


def test_diff_record_exist_with_allzero_is_allzero() -> None:
    raw = bytearray(ALLZERO_REC_GOLDEN)
    raw[12] = 0x03
    assert DiffRecord.parse(bytes(raw)).is_all_zero


def test_pack_check_rejects_non_running_data_offset() -> None:
    records = (DiffRecord(0, 8, 0, 0, 0, 10), DiffRecord(8, 8, 0, 0, 11, 10))
    with pytest.raises(BadField):
        PackHeader(records).check()


def test_pack_check_rejects_data_offset_of_first_record() -> None:
    with pytest.raises(BadField):
        PackHeader((DiffRecord(0, 8, 0, 0, 1, 10),)).check()


def test_pack_check_requires_running_offset_on_non_normal_records() -> None:
    records = (DiffRecord(0, 8, 0, 0, 0, 10), DiffRecord(8, 8, DISCARD, 0, 0))
    with pytest.raises(BadField):
        PackHeader(records).check()


@pytest.mark.parametrize(("first", "second"), [((0, 8), (4, 8)), ((8, 8), (0, 8)), ((0, 16), (4, 2)), ((5, 1), (5, 1))])
def test_pack_check_rejects_overlapping_or_unsorted_records(first: tuple[int, int], second: tuple[int, int]) -> None:
    records = (DiffRecord(*first, DISCARD), DiffRecord(*second, DISCARD))
    with pytest.raises(BadField):
        PackHeader(records).check()


def test_pack_check_accepts_adjacent_records() -> None:
    PackHeader((DiffRecord(0, 8, DISCARD), DiffRecord(8, 8, ALLZERO))).check()


def test_pack_check_rejects_allzero_and_discard() -> None:
    with pytest.raises(BadField):
        PackHeader((DiffRecord(0, 8, ALLZERO | DISCARD),)).check()


def test_pack_check_rejects_normal_record_without_data() -> None:
    with pytest.raises(BadField):
        PackHeader((DiffRecord(0, 8, 0, Compression.NONE, 0, 0),)).check()


@pytest.mark.parametrize("flags", [ALLZERO, DISCARD])
def test_pack_check_rejects_non_normal_record_with_data(flags: int) -> None:
    with pytest.raises(BadField):
        PackHeader((DiffRecord(0, 8, flags, 0, 0, 512),)).check()


def test_pack_check_rejects_zero_blocks() -> None:
    with pytest.raises(BadField):
        PackHeader((DiffRecord(0, 0, DISCARD),)).check()


@pytest.mark.parametrize("compression", [6, 255])
def test_pack_check_rejects_unknown_compression_of_normal_record(compression: int) -> None:
    with pytest.raises(BadField):
        PackHeader((DiffRecord(0, 8, 0, compression, 0, 10),)).check()


def test_pack_check_rejects_eof_pack_with_records() -> None:
    with pytest.raises(BadField):
        PackHeader((DiffRecord(0, 8, DISCARD),), is_end=True).check()


def test_pack_check_rejects_128_records() -> None:
    records = tuple(DiffRecord(index, 1, DISCARD) for index in range(128))
    with pytest.raises(BadField):
        PackHeader(records).check()


def test_pack_check_accepts_127_records() -> None:
    PackHeader(tuple(DiffRecord(index, 1, DISCARD) for index in range(127))).check()


def test_pack_check_rejects_more_than_32_mib_in_two_records() -> None:
    records = (DiffRecord(0, 8, 0, 0, 0, MAX_PACK_DATA), DiffRecord(8, 8, 0, 0, MAX_PACK_DATA, 1))
    with pytest.raises(BadField):
        PackHeader(records).check()


def test_pack_check_accepts_one_record_above_32_mib() -> None:
    PackHeader((DiffRecord(0, 1 << 17, 0, 0, 0, MAX_PACK_DATA + 1),)).check()


def test_pack_serialize_refuses_invalid_pack() -> None:
    with pytest.raises(BadField):
        PackHeader((DiffRecord(0, 8, ALLZERO | DISCARD),)).serialize()


@pytest.mark.parametrize("index", [0, 4, 8, 16, 100, 4095])
def test_pack_flipped_byte_is_checksum_mismatch(index: int) -> None:
    block = bytearray(PACK_GOLDEN)
    block[index] ^= 0x04
    with pytest.raises(ChecksumMismatch):
        PackHeader.parse(bytes(block))


@pytest.mark.parametrize("size", [0, 16, 4095])
def test_pack_truncated(size: int) -> None:
    with pytest.raises(TruncatedRecord):
        PackHeader.parse(PACK_GOLDEN[:size])


def test_pack_n_records_above_127_is_bad_field() -> None:
    with pytest.raises(BadField):
        PackHeader.parse(raw_pack([], n_records=128))


def test_pack_total_size_mismatch_is_bad_field() -> None:
    with pytest.raises(BadField):
        PackHeader.parse(raw_pack([(0, 8, 0, 0, 0, 100, 0)], total_size=99))


def test_eof_pack_with_total_size_is_bad_field() -> None:
    with pytest.raises(BadField):
        PackHeader.parse(raw_pack([], total_size=1, flags=1))


def test_pack_parse_rejects_invalid_record() -> None:
    with pytest.raises(BadField):
        PackHeader.parse(raw_pack([(0, 8, ALLZERO | DISCARD, 0, 0, 0, 0)]))


def test_pack_longer_input_uses_only_its_block() -> None:
    assert PackHeader.parse(PACK_GOLDEN + b"\xff" * 100) == PACK


def test_diff_record_short_input_is_truncated() -> None:
    with pytest.raises(TruncatedRecord):
        DiffRecord.parse(NORMAL_REC_GOLDEN[:31])


# --- PackBuilder ----------------------------------------------------------------------------------

def test_pack_builder_takes_127_records() -> None:
    builder = PackBuilder()
    for index in range(127):
        assert builder.add(index, 1, DISCARD, 0, 0, 0)
    assert not builder.add(127, 1, DISCARD, 0, 0, 0)
    pack = builder.finish()
    assert len(pack.records) == 127
    assert builder.empty


def test_pack_builder_runs_data_offsets() -> None:
    builder = PackBuilder()
    builder.add(0, 8, 0, Compression.LZ4, 100, 1)
    builder.add(8, 8, ALLZERO, 0, 0, 0)
    builder.add(16, 8, 0, Compression.NONE, 4096, 2)
    pack = builder.finish()
    assert [rec.data_offset for rec in pack.records] == [0, 100, 100]
    assert pack.total_size == 4196
    assert PackHeader.parse(pack.serialize()) == pack


def test_pack_builder_fills_to_exactly_32_mib() -> None:
    builder = PackBuilder()
    assert builder.add(0, 8, 0, 0, MAX_PACK_DATA - 10, 0)
    assert builder.add(8, 8, 0, 0, 10, 0)
    assert not builder.add(16, 8, 0, 0, 1, 0)
    assert builder.add(16, 8, DISCARD, 0, 0, 0)  # a record without data still fits at exactly 32 MiB


def test_pack_builder_takes_a_single_oversized_record() -> None:
    builder = PackBuilder()
    assert builder.add(0, 1 << 17, 0, 0, MAX_PACK_DATA + 1, 0)
    assert not builder.add(1 << 17, 8, 0, 0, 1, 0)
    builder.finish().check()


def test_pack_builder_starts_over_after_finish() -> None:
    builder = PackBuilder()
    builder.add(0, 8, 0, 0, 10, 0)
    builder.finish()
    assert builder.empty
    assert builder.add(8, 8, 0, 0, 20, 0)
    assert builder.finish().records[0].data_offset == 0


def test_pack_builder_finish_of_empty_builder() -> None:
    assert PackBuilder().finish() == PackHeader()


# --- index records --------------------------------------------------------------------------------

@pytest.mark.parametrize("blocks", [0, 3, 6, 0x201, 0xFFFF_FFFF])
def test_index_record_rejects_non_power_of_two(blocks: int) -> None:
    with pytest.raises(BadField):
        IndexRecord(0, blocks, DISCARD).check()


@pytest.mark.parametrize(("address", "blocks"), [(4, 8), (1, 2), (0x900, 0x200), (2048 + 1024, 2048)])
def test_index_record_rejects_misaligned_address(address: int, blocks: int) -> None:
    with pytest.raises(BadField):
        IndexRecord(address, blocks, DISCARD).check()


@pytest.mark.parametrize(("io_offset", "orig_blocks"), [(0x201, 0x400), (0, 0x1FF), (0x10, 0x20F), (0, 0)])
def test_index_record_rejects_piece_outside_its_image(io_offset: int, orig_blocks: int) -> None:
    record = IndexRecord(0x800, 0x200, 0, Compression.NONE, 32, 100, io_offset, orig_blocks)
    with pytest.raises(BadField):
        record.check()


def test_index_record_piece_may_end_at_image_end() -> None:
    IndexRecord(0x800, 0x200, 0, Compression.NONE, 32, 100, 0x200, 0x400).check()


def test_index_record_rejects_normal_without_data() -> None:
    with pytest.raises(BadField):
        IndexRecord(0, 8, 0, Compression.NONE, 32, 0, 0, 8).check()


def test_index_record_rejects_image_inside_file_header() -> None:
    with pytest.raises(BadField):
        IndexRecord(0, 8, 0, Compression.NONE, 31, 100, 0, 8).check()


def test_index_record_rejects_allzero_and_discard() -> None:
    with pytest.raises(BadField):
        IndexRecord(0, 8, ALLZERO | DISCARD).check()


def test_index_record_rejects_unknown_compression() -> None:
    with pytest.raises(BadField):
        IndexRecord(0, 8, 0, 6, 32, 100, 0, 8).check()


def test_index_record_rejects_piece_above_max() -> None:
    with pytest.raises(BadField):
        IndexRecord(0, 4096, DISCARD).check(max_io_blocks=2048)
    IndexRecord(0, 2048, DISCARD).check(max_io_blocks=2048)


@pytest.mark.parametrize("flags", [ALLZERO, DISCARD])
def test_index_record_non_normal_ignores_image_fields(flags: int) -> None:
    # WalB writes non-zero data_offset and io_offset on these; readers ignore them (docs §6.2).
    IndexRecord(0x10, 0x10, flags, 0, data_offset=5, data_size=0, io_offset=77, orig_blocks=0).check()


@pytest.mark.parametrize("index", [0, 12, 20, 44, 47])
def test_index_record_flipped_byte_is_checksum_mismatch(index: int) -> None:
    raw = bytearray(INDEX_REC_GOLDEN)
    raw[index] ^= 0x02
    with pytest.raises(ChecksumMismatch):
        IndexRecord.parse(bytes(raw))


@pytest.mark.parametrize(("size", "offset"), [(0, 0), (47, 0), (48, 1), (96, 49)])
def test_index_record_truncated(size: int, offset: int) -> None:
    with pytest.raises(TruncatedRecord):
        IndexRecord.parse((INDEX_REC_GOLDEN * 2)[:size], offset)


def test_index_record_parse_rejects_misaligned_and_names_offset() -> None:
    with pytest.raises(BadField) as caught:
        IndexRecord.parse(b"\0" * 48 + raw_index_record(address=0x900), 48)
    assert caught.value.offset == 48


def test_index_record_parse_rejects_piece_outside_image() -> None:
    with pytest.raises(BadField):
        IndexRecord.parse(raw_index_record(io_offset=0x300))


def test_index_record_parse_strips_exist_flag() -> None:
    assert IndexRecord.parse(raw_index_record(flags=0x01)) == INDEX_REC


# --- index super ----------------------------------------------------------------------------------

@pytest.mark.parametrize("index_offset", [0x1239, 0x123C, 33])
def test_index_super_rejects_misaligned_offset(index_offset: int) -> None:
    raw = raw_index_super(index_offset, 0)
    with pytest.raises(BadField):
        IndexSuper.parse(raw, index_offset + 24)


@pytest.mark.parametrize("index_offset", [0, 8, 24])
def test_index_super_rejects_offset_inside_file_header(index_offset: int) -> None:
    with pytest.raises(BadField):
        IndexSuper.parse(raw_index_super(index_offset, 0), index_offset + 24)


@pytest.mark.parametrize("file_size", [INDEXED_FILE_SIZE - 1, INDEXED_FILE_SIZE + 1, INDEXED_FILE_SIZE + 48, 0])
def test_index_super_rejects_index_not_ending_at_super(file_size: int) -> None:
    with pytest.raises(BadField):
        IndexSuper.parse(INDEX_SUPER_GOLDEN, file_size)


def test_index_super_accepts_empty_index() -> None:
    assert IndexSuper.parse(raw_index_super(32, 0, 0), 56) == IndexSuper(32, 0, 0)


@pytest.mark.parametrize("index", [0, 8, 12, 16, 23])
def test_index_super_flipped_byte_is_checksum_mismatch(index: int) -> None:
    raw = bytearray(INDEX_SUPER_GOLDEN)
    raw[index] ^= 0x08
    with pytest.raises(ChecksumMismatch):
        IndexSuper.parse(bytes(raw), INDEXED_FILE_SIZE)


@pytest.mark.parametrize("size", [0, 23])
def test_index_super_truncated(size: int) -> None:
    with pytest.raises(TruncatedRecord):
        IndexSuper.parse(INDEX_SUPER_GOLDEN[:size], size)


@pytest.mark.parametrize(("end", "padding"), [(32, 0), (33, 7), (175421, 3), (3644448, 0), (39, 1)])
def test_index_padding(end: int, padding: int) -> None:
    assert index_padding(end) == padding
    assert (end + index_padding(end)) % 8 == 0


# --- split_aligned --------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "blocks", "max_blocks", "pieces"), [
    (0, 5, 2048, [(0, 4), (4, 1)]),
    (3, 13, 2048, [(3, 1), (4, 4), (8, 8)]),
    (6, 11, 2048, [(6, 2), (8, 8), (16, 1)]),  # docs/formats.md §6.4
    (0, 4096, 2048, [(0, 2048), (2048, 2048)]),
    (2048, 2048, 2048, [(2048, 2048)]),
    (1, 1, 2048, [(1, 1)]),
    (5, 0, 2048, []),
    (0, 8, 3, [(0, 2), (2, 2), (4, 2), (6, 2)]),  # max 3 rounds down to 2
    (0, 10, 2047, [(0, 8), (8, 2)]),  # max 2047 rounds down to 1024
    (1024, 3072, 3000, [(1024, 1024), (2048, 2048)]),  # max 3000 rounds down to 2048
])
def test_split_aligned_examples(address: int, blocks: int, max_blocks: int, pieces: list[tuple[int, int]]) -> None:
    assert split_aligned(address, blocks, max_blocks) == pieces


def test_split_aligned_default_max_is_2048() -> None:
    assert split_aligned(0, 4097) == [(0, 2048), (2048, 2048), (4096, 1)]


def test_split_aligned_rejects_negative_max() -> None:
    with pytest.raises(BadField):
        split_aligned(0, 8, -1)


def test_split_aligned_zero_max_means_no_limit() -> None:
    assert split_aligned(8, 24, 0) == [(8, 8), (16, 16)]


def test_split_aligned_caps_pieces_at_2_31() -> None:
    assert split_aligned(0, 1 << 32, 1 << 40) == [(0, 1 << 31), (1 << 31, 1 << 31)]


def spec_split(address: int, blocks: int, max_blocks: int) -> list[tuple[int, int]]:
    """docs/formats.md §6.4, transcribed."""
    limit = 1 << (max_blocks.bit_length() - 1)
    pieces = []
    while blocks > 0:
        size = 1 << 31 if address == 0 or address % (1 << 32) == 0 else address & -address
        if size > blocks:
            size = 1 << (blocks.bit_length() - 1)
        size = min(size, limit)
        pieces.append((address, size))
        address += size
        blocks -= size
    return pieces


@settings(max_examples=200, deadline=None)
@given(address=st.integers(0, 1 << 40), blocks=st.integers(0, 100_000), max_blocks=st.integers(1, 1 << 20))
def test_split_aligned_pieces_are_aligned_contiguous_and_exact(address: int, blocks: int, max_blocks: int) -> None:
    pieces = split_aligned(address, blocks, max_blocks)
    limit = 1 << (max_blocks.bit_length() - 1)
    position = address
    for piece_address, size in pieces:
        assert piece_address == position
        assert size > 0 and size & (size - 1) == 0
        assert size <= limit
        assert piece_address % size == 0
        position += size
    assert position == address + blocks
    assert pieces == spec_split(address, blocks, max_blocks)


@settings(max_examples=200, deadline=None)
@given(address=st.integers(0, 1 << 30), blocks=st.integers(1, 5000), max_blocks=st.integers(1, 4096))
def test_split_aligned_pieces_pass_index_record_check(address: int, blocks: int, max_blocks: int) -> None:
    for piece_address, size in split_aligned(address, blocks, max_blocks):
        IndexRecord(piece_address, size, DISCARD).check(max_io_blocks=max_blocks)


# --- property tests: round trips ------------------------------------------------------------------

U32 = st.integers(0, MASK32)
KINDS = st.sampled_from([0, ALLZERO, DISCARD])


@settings(max_examples=200, deadline=None)
@given(uuid=st.binary(min_size=16, max_size=16), diff_type=st.sampled_from(list(DiffType)))
def test_file_header_round_trip(uuid: bytes, diff_type: DiffType) -> None:
    assert FileHeader.parse(FileHeader(uuid, diff_type).serialize()) == FileHeader(uuid, diff_type)


@settings(max_examples=200, deadline=None)
@given(address=st.integers(0, U64), blocks=U32, flags=KINDS, compression=st.integers(0, 255), offset=U32,
       size=U32, checksum=U32)
def test_diff_record_round_trip(address: int, blocks: int, flags: int, compression: int, offset: int, size: int,
                                checksum: int) -> None:
    record = DiffRecord(address, blocks, flags, compression, offset, size, checksum)
    assert DiffRecord.parse(record.serialize()) == record


@st.composite
def packs(draw: st.DrawFn) -> PackHeader:
    builder = PackBuilder()
    address = draw(st.integers(0, 1 << 40))
    for _ in range(draw(st.integers(0, MAX_PACK_RECORDS))):
        address += draw(st.integers(0, 100))
        blocks = draw(st.integers(1, 4096))
        flags = draw(KINDS)
        if flags:
            added = builder.add(address, blocks, flags, 0, 0, 0)
        else:
            added = builder.add(address, blocks, flags, draw(st.integers(0, 5)), draw(st.integers(1, blocks * 512)),
                                draw(U32))
        assert added
        address += blocks
    return builder.finish()


@settings(max_examples=200, deadline=None)
@given(pack=packs())
def test_pack_round_trip(pack: PackHeader) -> None:
    block = pack.serialize()
    assert len(block) == PACK_SIZE
    assert PackHeader.parse(block) == pack


@st.composite
def index_records(draw: st.DrawFn) -> IndexRecord:
    blocks = 1 << draw(st.integers(0, 31))
    address = blocks * draw(st.integers(0, U64 // blocks - 1))
    flags = draw(KINDS)
    if flags:
        return IndexRecord(address, blocks, flags, 0, draw(st.integers(0, U64)), 0, draw(U32), 0)
    io_offset = draw(st.integers(0, MASK32 - blocks))
    return IndexRecord(address, blocks, 0, draw(st.integers(0, 5)), draw(st.integers(32, U64)),
                       draw(st.integers(1, MASK32)), io_offset, draw(st.integers(io_offset + blocks, MASK32)),
                       draw(U32))


@settings(max_examples=200, deadline=None)
@given(record=index_records())
def test_index_record_round_trip(record: IndexRecord) -> None:
    raw = record.serialize()
    assert len(raw) == INDEX_RECORD_STRUCT.size
    assert IndexRecord.parse(raw) == record


@settings(max_examples=200, deadline=None)
@given(index_offset=st.integers(4, 1 << 40).map(lambda value: value * 8), n_records=U32, n_data=U32)
def test_index_super_round_trip(index_offset: int, n_records: int, n_data: int) -> None:
    record = IndexSuper(index_offset, n_records, n_data)
    assert IndexSuper.parse(record.serialize(), index_offset + 48 * n_records + 24) == record


# --- property tests: fuzzing ----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=40))
def test_file_header_random_bytes_raise_only_format_errors(raw: bytes) -> None:
    parses_or_format_error(FileHeader.parse, raw)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32))
def test_file_header_random_resealed_raise_only_format_errors(raw: bytes) -> None:
    parses_or_format_error(FileHeader.parse, reseal(raw[:4] + b"\x02\x00" + raw[6:], 0))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=32, max_size=64))
def test_diff_record_parse_accepts_any_32_bytes(raw: bytes) -> None:
    DiffRecord.parse(raw)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=4200))
def test_pack_random_bytes_raise_only_format_errors(raw: bytes) -> None:
    parses_or_format_error(PackHeader.parse, raw)


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(4, 16 + 32 * 4), st.integers(0, 255)), min_size=1, max_size=8))
def test_pack_mutated_resealed_raises_only_format_errors(edits: list[tuple[int, int]]) -> None:
    block = bytearray(PACK_GOLDEN)
    for index, value in edits:
        block[index] = value
    parsed = parses_or_format_error(PackHeader.parse, reseal(block, 0))
    if parsed is not None:
        assert PackHeader.parse(parsed.serialize()) == parsed


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=100), offset=st.integers(0, 60))
def test_index_record_random_bytes_raise_only_format_errors(raw: bytes, offset: int) -> None:
    parses_or_format_error(IndexRecord.parse, raw, offset)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=48, max_size=48))
def test_index_record_random_resealed_raise_only_format_errors(raw: bytes) -> None:
    parsed = parses_or_format_error(IndexRecord.parse, reseal(raw, 44))
    if parsed is not None:
        assert IndexRecord.parse(parsed.serialize()) == parsed


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=30), file_size=st.integers(0, 1 << 40))
def test_index_super_random_bytes_raise_only_format_errors(raw: bytes, file_size: int) -> None:
    parses_or_format_error(IndexSuper.parse, raw, file_size)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=24, max_size=24), file_size=st.integers(0, 1 << 40))
def test_index_super_random_resealed_raise_only_format_errors(raw: bytes, file_size: int) -> None:
    parses_or_format_error(IndexSuper.parse, reseal(raw, 20), file_size)


# --- walb-tools vectors ---------------------------------------------------------------------------

def read_vector(name: str) -> bytes:
    path = VECTORS / name
    if not path.exists():
        pytest.skip(f"vector {path} not present")
    return path.read_bytes()


def test_vector_s2_sorted_head() -> None:
    raw = read_vector("s2.sorted.wdiff")[:32 + 4096]
    header = FileHeader.parse(raw[:32])
    assert struct.unpack_from("<I", raw, 0)[0] == 0x018A_E53A
    assert header == FileHeader(bytes.fromhex("9bb39ac6009665dbf643fce5338d7876"), DiffType.SORTED)
    assert header.serialize() == raw[:32]
    pack = PackHeader.parse(raw[32:])
    assert pack.serialize() == raw[32:]
    first = [(rec.io_address, rec.io_blocks, rec.compression, rec.data_size, rec.checksum, rec.flags)
             for rec in pack.records[:3]]
    assert first == [
        (144, 327, Compression.NONE, 0, 0, DiffFlag.DISCARD),
        (516, 6, Compression.NONE, 0, 0, DiffFlag.DISCARD),
        (809, 7, Compression.SNAPPY, 174, 0x70F7_E38C, 0),
    ]
    assert [rec.data_offset for rec in pack.records[:3]] == [0, 0, 0]


def walk_sorted(raw: bytes) -> tuple[FileHeader, list[PackHeader], list[DiffRecord]]:
    """Parse a whole sorted wdiff, checking order and every data checksum and size."""
    header = FileHeader.parse(raw)
    position = 32
    packs: list[PackHeader] = []
    records: list[DiffRecord] = []
    previous_end = 0
    while True:
        pack = PackHeader.parse(raw[position:position + PACK_SIZE])
        position += PACK_SIZE
        if pack.is_end:
            break
        for rec in pack.records:
            assert rec.io_address >= previous_end
            previous_end = rec.end_address
            if rec.is_normal:
                data = raw[position + rec.data_offset:position + rec.data_offset + rec.data_size]
                assert csum.checksum(data) == rec.checksum
                assert len(decompress(rec.compression, data, rec.io_blocks * 512)) == rec.io_blocks * 512
        position += pack.total_size
        packs.append(pack)
        records.extend(pack.records)
    assert raw[position - PACK_SIZE:position] == EOF_PACK_GOLDEN
    assert position == len(raw)
    return header, packs, records


def test_vector_s1_sorted() -> None:
    header, packs, records = walk_sorted(read_vector("s1.sorted.wdiff"))
    assert header.type == DiffType.SORTED
    assert [len(pack.records) for pack in packs] == [127, 127, 37]
    assert sum(rec.is_normal for rec in records) == 196
    assert all(rec.compression == Compression.NONE for rec in records if rec.is_normal)
    assert sum(rec.io_blocks for rec in records if rec.is_normal) == 5646
    assert (sum(rec.is_all_zero for rec in records), sum(rec.io_blocks for rec in records if rec.is_all_zero)) == (
        17, 524)
    assert (sum(rec.is_discard for rec in records), sum(rec.io_blocks for rec in records if rec.is_discard)) == (
        78, 6559)
    assert sum(pack.total_size for pack in packs) == 2890752


def test_vector_m123_lz4_sorted() -> None:
    header, _, records = walk_sorted(read_vector("m123.lz4.wdiff"))
    assert header.uuid == bytes(16)
    normal = [rec for rec in records if rec.is_normal]
    assert sum(rec.compression == Compression.LZ4 for rec in normal) == 108
    assert sum(rec.compression == Compression.NONE for rec in normal) == 72
    assert sum(rec.is_all_zero for rec in records) == 18
    assert sum(rec.is_discard for rec in records) == 119


@pytest.mark.parametrize(("name", "index_offset", "n_records", "n_data"), [
    ("s1.indexed.wdiff", 3644448, 1408, 303),
    ("s2.indexed.wdiff", 175424, 1468, 306),
])
def test_vector_indexed(name: str, index_offset: int, n_records: int, n_data: int) -> None:
    raw = read_vector(name)
    assert FileHeader.parse(raw).type == DiffType.INDEXED
    index_super = IndexSuper.parse(raw[-24:], len(raw))
    assert index_super == IndexSuper(index_offset, n_records, n_data)
    previous_end = 0
    for number in range(n_records):
        offset = index_offset + 48 * number
        record = IndexRecord.parse(raw, offset)
        assert record.serialize() == raw[offset:offset + 48]
        assert record.io_address >= previous_end
        previous_end = record.end_address
        if record.is_normal:
            assert record.data_offset + record.data_size <= index_offset
            image = raw[record.data_offset:record.data_offset + record.data_size]
            assert csum.checksum(image) == record.io_checksum
