"""Tests for walbops.formats.wlog: the 4 KiB walblog header (docs/formats.md §4).

The vector tests walk walb-tools' own wlog files pack by pack with the ldev codecs.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from helpers import VECTORS
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.errors import BadField, BadMagic, ChecksumMismatch, FormatError, TruncatedRecord, UnsupportedVersion
from walbops.formats import checksum as csum
from walbops.formats.ldev import UINT64_MAX, LogpackHeader
from walbops.formats.wlog import WLOG_HEADER_SIZE, WlogHeader

S2_UUID = bytes.fromhex("9bb39ac6009665dbf643fce5338d7876")

HEADER = WlogHeader(physical_bs=4096, log_checksum_salt=0x88BC_0EA4, uuid=S2_UUID, begin_lsid=0x100,
                    end_lsid=0x2000)
HEADER_GOLDEN = bytes.fromhex(
    "0400"  # sector_type WALBLOG_HEADER
    "0200"  # version 2
    "0010"  # header_size 4096
    "0000"  # reserved1
    "9493cc78"  # checksum 0x78CC9394 (4096 bytes, salt 0)
    "a40ebc88"  # log_checksum_salt 0x88BC0EA4
    "00020000"  # logical_bs 512
    "00100000"  # physical_bs 4096
    "9bb39ac6009665dbf643fce5338d7876"  # uuid
    "0001000000000000"  # begin_lsid 0x100
    "0020000000000000"  # end_lsid 0x2000
) + bytes(4096 - 56)


def reseal(block: bytes | bytearray) -> bytes:
    """Store the header's self-inclusive checksum at offset 8."""
    raw = bytearray(block)
    struct.pack_into("<I", raw, 8, 0)
    struct.pack_into("<I", raw, 8, csum.checksum(raw))
    return bytes(raw)


def raw_header(**fields: Any) -> bytes:
    values = dict(sector_type=4, version=2, header_size=4096, salt=0x88BC_0EA4, logical_bs=512, physical_bs=4096,
                  uuid=S2_UUID, begin=0x100, end=0x2000)
    values.update(fields)
    block = bytearray(WLOG_HEADER_SIZE)
    struct.pack_into("<HHHHIIII16sQQ", block, 0, values["sector_type"], values["version"], values["header_size"], 0,
                     0, values["salt"], values["logical_bs"], values["physical_bs"], values["uuid"], values["begin"],
                     values["end"])
    return reseal(block)


# --- golden bytes both ways -----------------------------------------------------------------------

def test_header_serializes_to_golden() -> None:
    assert HEADER.serialize() == HEADER_GOLDEN


def test_header_parses_golden() -> None:
    assert WlogHeader.parse(HEADER_GOLDEN) == HEADER


def test_raw_builder_matches_golden() -> None:
    assert raw_header() == HEADER_GOLDEN


def test_header_defaults_end_to_unknown() -> None:
    header = WlogHeader(512, 1, bytes(16), 0)
    assert header.end_lsid == UINT64_MAX
    assert header.serialize()[48:56] == b"\xff" * 8


def test_header_at_pbs_512() -> None:
    header = WlogHeader(512, 0xF0ED_980D, bytes(16), 0)
    assert WlogHeader.parse(header.serialize()) == header


def test_longer_input_uses_only_the_header() -> None:
    assert WlogHeader.parse(HEADER_GOLDEN + b"\xff" * 4096) == HEADER


def test_nonzero_reserved_bytes_are_ignored() -> None:
    block = bytearray(HEADER_GOLDEN)
    block[6] = 0x77  # reserved1
    block[1000] = 0x55  # zero tail
    assert WlogHeader.parse(reseal(block)) == HEADER


# --- corruptions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sector_type", [0, 1, 3, 5])
def test_wrong_sector_type_is_bad_magic(sector_type: int) -> None:
    with pytest.raises(BadMagic):
        WlogHeader.parse(raw_header(sector_type=sector_type))


@pytest.mark.parametrize("version", [1, 3])
def test_other_version_is_unsupported(version: int) -> None:
    with pytest.raises(UnsupportedVersion):
        WlogHeader.parse(raw_header(version=version))


@pytest.mark.parametrize("header_size", [0, 512, 4095])
def test_wrong_header_size_is_bad_field(header_size: int) -> None:
    with pytest.raises(BadField):
        WlogHeader.parse(raw_header(header_size=header_size))


@pytest.mark.parametrize("index", [8, 12, 20, 30, 45, 55, 56, 4095])
def test_flipped_byte_is_checksum_mismatch(index: int) -> None:
    block = bytearray(HEADER_GOLDEN)
    block[index] ^= 0x80
    with pytest.raises(ChecksumMismatch):
        WlogHeader.parse(bytes(block))


def test_checksum_mismatch_names_the_checksum_offset() -> None:
    block = bytearray(HEADER_GOLDEN)
    block[100] = 1
    with pytest.raises(ChecksumMismatch) as caught:
        WlogHeader.parse(bytes(block))
    assert caught.value.offset == 8


@pytest.mark.parametrize("size", [0, 55, 56, 4095])
def test_truncated_header(size: int) -> None:
    with pytest.raises(TruncatedRecord):
        WlogHeader.parse(HEADER_GOLDEN[:size])


@pytest.mark.parametrize("physical_bs", [0, 1024, 2048, 8192])
def test_unsupported_pbs_is_bad_field(physical_bs: int) -> None:
    with pytest.raises(BadField):
        WlogHeader.parse(raw_header(physical_bs=physical_bs))


def test_logical_bs_other_than_512_is_bad_field() -> None:
    with pytest.raises(BadField):
        WlogHeader.parse(raw_header(logical_bs=4096))


def test_begin_after_end_is_bad_field() -> None:
    with pytest.raises(BadField):
        WlogHeader.parse(raw_header(begin=0x2001, end=0x2000))


def test_begin_equal_to_end_is_bad_field() -> None:
    with pytest.raises(BadField):
        WlogHeader.parse(raw_header(begin=0x2000, end=0x2000))


def test_serialize_rejects_begin_after_end() -> None:
    with pytest.raises(BadField):
        WlogHeader(512, 0, bytes(16), 10, 9).serialize()


@pytest.mark.parametrize("uuid", [b"", bytes(15), bytes(17)])
def test_serialize_rejects_uuid_size(uuid: bytes) -> None:
    with pytest.raises(BadField):
        WlogHeader(512, 0, uuid, 0).serialize()


def test_serialize_rejects_unsupported_pbs() -> None:
    with pytest.raises(BadField):
        WlogHeader(1024, 0, bytes(16), 0).serialize()


# --- property tests -------------------------------------------------------------------------------

@st.composite
def wlog_headers(draw: st.DrawFn) -> WlogHeader:
    end = draw(st.integers(1, UINT64_MAX))
    return WlogHeader(
        physical_bs=draw(st.sampled_from([512, 4096])), log_checksum_salt=draw(st.integers(0, 0xFFFF_FFFF)),
        uuid=draw(st.binary(min_size=16, max_size=16)), begin_lsid=draw(st.integers(0, end - 1)), end_lsid=end,
    )


@settings(max_examples=200, deadline=None)
@given(header=wlog_headers())
def test_header_round_trip(header: WlogHeader) -> None:
    block = header.serialize()
    assert len(block) == WLOG_HEADER_SIZE
    assert WlogHeader.parse(block) == header


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=4200))
def test_parse_random_bytes_raises_only_format_errors(raw: bytes) -> None:
    try:
        WlogHeader.parse(raw)
    except FormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=56, max_size=56))
def test_parse_random_resealed_fields_raise_only_format_errors(raw: bytes) -> None:
    try:
        WlogHeader.parse(reseal(raw + bytes(4096 - 56)))
    except FormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=6))
def test_parse_mutated_resealed_raises_only_format_errors(edits: list[tuple[int, int]]) -> None:
    block = bytearray(HEADER_GOLDEN)
    for index, value in edits:
        block[index] = value
    try:
        header = WlogHeader.parse(reseal(block))
    except FormatError:
        return
    assert WlogHeader.parse(header.serialize()) == header  # whatever is accepted re-serializes


# --- walb-tools vectors ---------------------------------------------------------------------------

def walk_wlog(raw: bytes) -> tuple[WlogHeader, list[LogpackHeader]]:
    """Parse a whole wlog, checking pack continuity and every IO checksum."""
    header = WlogHeader.parse(raw)
    pbs, salt = header.physical_bs, header.log_checksum_salt
    position, lsid, packs = WLOG_HEADER_SIZE, header.begin_lsid, []
    while True:
        pack = LogpackHeader.parse(raw[position:position + pbs], pbs, salt)
        position += pbs
        if pack.is_end:
            break
        assert pack.logpack_lsid == lsid
        for rec in pack.records:
            if rec.is_normal:
                start = position + (rec.lsid_local - 1) * pbs
                assert csum.checksum(raw[start:start + rec.io_size * 512], salt) == rec.checksum
        position += pack.total_io_size * pbs
        lsid = pack.next_lsid
        packs.append(pack)
    assert position == len(raw)
    return header, packs


def read_vector(name: str) -> bytes:
    path = VECTORS / name
    if not path.exists():
        pytest.skip(f"vector {path} not present")
    return path.read_bytes()


def test_vector_s1_wlog() -> None:
    header, packs = walk_wlog(read_vector("s1.wlog"))
    assert header == WlogHeader(512, 0xF0ED_980D, bytes.fromhex("86f73b444f0867fe84a30ab2d3dfdf6c"), 0, UINT64_MAX)
    records = [rec for pack in packs for rec in pack.records]
    assert len(packs) == 48
    assert packs[-1].next_lsid == 8301
    assert sum(rec.is_normal for rec in records) == 242
    assert sum(rec.is_discard for rec in records) == 61
    assert sum(rec.is_padding for rec in records) == 20
    assert max(pack.n_records for pack in packs) <= 15


def test_vector_s2_wlog() -> None:
    header, packs = walk_wlog(read_vector("s2.wlog"))
    assert header == WlogHeader(4096, 0x88BC_0EA4, S2_UUID, 0, UINT64_MAX)
    records = [rec for pack in packs for rec in pack.records]
    assert len(packs) == 17
    assert packs[-1].next_lsid == 1113
    assert sum(rec.io_size for rec in records if rec.is_normal) == 7708
    assert sum(rec.io_size for rec in records if rec.is_discard) == 19644
    assert sum(rec.data_pb(4096) for rec in records if rec.is_padding) == 36
    first = packs[0].records[0]
    assert first.is_padding and first.io_size == 0


def test_vector_headers_reserialize_byte_for_byte() -> None:
    raw = read_vector("s2.wlog")
    assert WlogHeader.parse(raw).serialize() == raw[:WLOG_HEADER_SIZE]
