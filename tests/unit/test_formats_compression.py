"""Tests for walbops.formats.compression: WalB's compression ids 0-5 (docs/formats.md §7)."""

from __future__ import annotations

import lzma
import random
import zlib

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.errors import BadField, CompressionError, FormatError
from walbops.formats.compression import (
    Compression,
    CompressOpt,
    compress,
    compress_exact,
    decompress,
)

ALL_KINDS = list(Compression)
CODECS = [kind for kind in Compression if kind != Compression.NONE]
# Compressible, not trivially so: 16 copies of 0..255 then zeros.
SAMPLE = bytes(range(256)) * 16 + bytes(4096)
# Random bytes never shrink under any codec.
RANDOM_4K = random.Random(20240501).randbytes(4096)

XZ_MAGIC = b"\xfd7zXZ\x00"
XZ_CHECK_CRC64 = b"\x00\x04"  # stream flags after the magic: no flags, check id 4
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
ZSTD_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"
SNAPPY_FRAMED_MAGIC = b"\xff\x06\x00\x00sNaPpY"


def test_ids_are_the_on_disk_values() -> None:
    assert [(kind.name, int(kind)) for kind in Compression] == [
        ("NONE", 0), ("GZIP", 1), ("SNAPPY", 2), ("LZMA", 3), ("LZ4", 4), ("ZSTD", 5),
    ]


# --- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096))
def test_compress_exact_round_trips(kind: Compression, data: bytes) -> None:
    assert decompress(kind, compress_exact(kind, data), len(data)) == data


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096))
def test_compress_with_fallback_round_trips(kind: Compression, data: bytes) -> None:
    used, stored = compress(kind, data)
    assert used in (kind, Compression.NONE)
    assert decompress(used, stored, len(data)) == data


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_round_trips_memoryview_input(kind: Compression) -> None:
    assert decompress(kind, memoryview(compress_exact(kind, memoryview(SAMPLE))), len(SAMPLE)) == SAMPLE


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_empty_data_round_trips(kind: Compression) -> None:
    assert decompress(kind, compress_exact(kind, b""), 0) == b""


# --- fallback -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CODECS, ids=lambda kind: kind.name)
def test_compressible_data_keeps_its_kind(kind: Compression) -> None:
    used, stored = compress(kind, SAMPLE)
    assert used == kind
    assert len(stored) < len(SAMPLE)


@pytest.mark.parametrize("kind", CODECS, ids=lambda kind: kind.name)
def test_random_data_falls_back_to_none(kind: Compression) -> None:
    assert compress(kind, RANDOM_4K) == (Compression.NONE, RANDOM_4K)


@pytest.mark.parametrize("kind", CODECS, ids=lambda kind: kind.name)
@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=512))
def test_fallback_happens_exactly_when_not_smaller(kind: Compression, data: bytes) -> None:
    exact = compress_exact(kind, data)
    used, stored = compress(kind, data)
    if len(exact) < len(data):
        assert (used, stored) == (kind, exact)
    else:
        assert (used, stored) == (Compression.NONE, data)


def test_none_stores_data_as_is() -> None:
    assert compress(Compression.NONE, bytes(4096)) == (Compression.NONE, bytes(4096))
    assert compress_exact(Compression.NONE, SAMPLE) == SAMPLE


# --- codec formats as WalB writes them ------------------------------------------------------------

def test_gzip_is_a_zlib_stream_at_level_6_for_level_0() -> None:
    stored = compress_exact(Compression.GZIP, SAMPLE, level=0)
    assert stored == zlib.compress(SAMPLE, 6)
    assert stored[0] == 0x78  # zlib CMF byte (deflate, 32 KiB window), not gzip's 1f 8b


def test_gzip_level_is_passed_through() -> None:
    assert compress_exact(Compression.GZIP, SAMPLE, level=9) == zlib.compress(SAMPLE, 9)
    assert compress_exact(Compression.GZIP, SAMPLE, level=1) == zlib.compress(SAMPLE, 1)


def test_lzma_is_an_xz_container_with_crc64() -> None:
    stored = compress_exact(Compression.LZMA, SAMPLE)
    assert stored.startswith(XZ_MAGIC)
    assert stored[6:8] == XZ_CHECK_CRC64
    assert stored.endswith(b"YZ")  # xz stream footer magic


def test_lzma_level_0_means_preset_6() -> None:
    expected = lzma.compress(SAMPLE, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
    assert compress_exact(Compression.LZMA, SAMPLE, level=0) == expected


def test_lz4_is_a_bare_block() -> None:
    stored = compress_exact(Compression.LZ4, SAMPLE)
    assert not stored.startswith(LZ4_FRAME_MAGIC)
    assert lz4.block.decompress(stored, uncompressed_size=len(SAMPLE)) == SAMPLE


def test_snappy_is_a_raw_block_with_varint_length() -> None:
    stored = compress_exact(Compression.SNAPPY, SAMPLE)
    assert not stored.startswith(SNAPPY_FRAMED_MAGIC)
    assert stored[:2] == b"\x80\x40"  # varint 8192 = 0x80 | 0, then 0x40


def test_zstd_is_one_frame_at_level_1_for_level_0() -> None:
    zstandard = pytest.importorskip("zstandard")
    stored = compress_exact(Compression.ZSTD, SAMPLE, level=0)
    assert stored.startswith(ZSTD_FRAME_MAGIC)
    assert stored == zstandard.ZstdCompressor(level=1).compress(SAMPLE)


# --- corrupt input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_truncated_image_raises_compression_error(kind: Compression) -> None:
    stored = compress_exact(kind, SAMPLE)
    with pytest.raises(CompressionError):
        decompress(kind, stored[:len(stored) // 2], len(SAMPLE))


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_garbage_raises_compression_error(kind: Compression) -> None:
    with pytest.raises(CompressionError):
        decompress(kind, b"\xff" * 64, len(SAMPLE))


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_empty_image_for_nonempty_data_raises_compression_error(kind: Compression) -> None:
    with pytest.raises(CompressionError):
        decompress(kind, b"", len(SAMPLE))


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
@pytest.mark.parametrize("delta", [-1, 1, -len(SAMPLE)])
def test_wrong_expected_size_raises_compression_error(kind: Compression, delta: int) -> None:
    stored = compress_exact(kind, SAMPLE)
    with pytest.raises(CompressionError):
        decompress(kind, stored, len(SAMPLE) + delta)


def test_snappy_length_prefix_is_checked_before_decoding() -> None:
    stored = compress_exact(Compression.SNAPPY, SAMPLE)
    with pytest.raises(CompressionError, match="claims 8192"):
        decompress(Compression.SNAPPY, stored, 4096)


def test_snappy_unterminated_varint_raises_compression_error() -> None:
    with pytest.raises(CompressionError):
        decompress(Compression.SNAPPY, b"\x80" * 5 + b"\x00", 1)


def test_lzma_beyond_walb_memlimit_raises_compression_error() -> None:
    # Preset 9 uses a 64 MiB dictionary; WalB's xz decoder allows 16 MiB.
    stored = lzma.compress(SAMPLE, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9)
    with pytest.raises(CompressionError):
        decompress(Compression.LZMA, stored, len(SAMPLE))


@pytest.mark.parametrize("kind", CODECS, ids=lambda kind: kind.name)
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=256), size=st.integers(0, 8192))
def test_random_images_raise_only_compression_error(kind: Compression, data: bytes, size: int) -> None:
    try:
        out = decompress(kind, data, size)
    except CompressionError:
        return
    assert len(out) == size


@pytest.mark.parametrize("kind", CODECS, ids=lambda kind: kind.name)
@settings(max_examples=60, deadline=None)
@given(cut=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_damaged_images_raise_only_compression_error(kind: Compression, cut: int, flip: int) -> None:
    stored = bytearray(compress_exact(kind, SAMPLE))
    stored[cut % len(stored)] ^= flip
    try:
        out = decompress(kind, bytes(stored), len(SAMPLE))
    except CompressionError:
        return
    assert len(out) == len(SAMPLE)  # some codecs cannot detect every flip; the size still holds


# --- unknown ids ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [6, 7, 255])
def test_decompress_unknown_id_raises_bad_field(kind: int) -> None:
    with pytest.raises(BadField):
        decompress(kind, b"", 0)


def test_compress_unknown_id_raises_bad_field() -> None:
    with pytest.raises(BadField):
        compress_exact(6, SAMPLE)  # type: ignore[arg-type]


def test_compression_errors_are_format_errors() -> None:
    assert issubclass(CompressionError, FormatError)
    assert issubclass(BadField, FormatError)


# --- CompressOpt ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("snappy:0:1", CompressOpt(Compression.SNAPPY, 0, 1)),
    ("lz4", CompressOpt(Compression.LZ4, 0, 1)),
    ("zstd:19:2", CompressOpt(Compression.ZSTD, 19, 2)),
    ("gzip:9", CompressOpt(Compression.GZIP, 9, 1)),
    ("none:0:4", CompressOpt(Compression.NONE, 0, 4)),
    ("lzma:6:1", CompressOpt(Compression.LZMA, 6, 1)),
    ("LZ4:1:8", CompressOpt(Compression.LZ4, 1, 8)),
])
def test_compress_opt_parses(text: str, expected: CompressOpt) -> None:
    assert CompressOpt.parse(text) == expected


@pytest.mark.parametrize(("text", "canonical"), [
    ("snappy:0:1", "snappy:0:1"),
    ("lz4", "lz4:0:1"),
    ("zstd:19:2", "zstd:19:2"),
    ("gzip:3", "gzip:3:1"),
])
def test_compress_opt_str_is_canonical(text: str, canonical: str) -> None:
    assert str(CompressOpt.parse(text)) == canonical


def test_compress_opt_default_is_lz4() -> None:
    assert str(CompressOpt()) == "lz4:0:1"


@pytest.mark.parametrize("text", [
    "foo", "lz4:x", "lz4:20", "lz4:0:0", "a:b:c:d", "", "lz4:-1", "lz4:0:x", "lz4::1", "lz4:0:-2",
    "gzip:10",  # levels are 0..9 except for zstd
    "lzma:7",  # presets 7..9 exceed WalB's 16 MiB xz decoder limit (docs/formats.md App. B.6)
    "zstd:20",
])
def test_compress_opt_rejects(text: str) -> None:
    with pytest.raises(BadField):
        CompressOpt.parse(text)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(ALL_KINDS), level=st.integers(0, 6), num_cpu=st.integers(1, 64))
def test_compress_opt_str_parse_round_trip(kind: Compression, level: int, num_cpu: int) -> None:
    opt = CompressOpt(kind, level, num_cpu)
    assert CompressOpt.parse(str(opt)) == opt
