"""Tests for walbops.formats.checksum: the WalB additive checksum (docs/formats.md §2, walb.md §4.4).

Known values are worked out by hand in each test; a word-by-word transcription of
walb-tools' ``checksum.hpp`` is the oracle for the property tests.
"""

from __future__ import annotations

import array
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.formats import checksum as csum

MASK32 = 0xFFFF_FFFF
# The implementation switches from struct.unpack to numpy above this many bytes.
SMALL_PATH_LIMIT = 256  # [bytes]


def reference_checksum(data: bytes, salt: int = 0) -> int:
    """Sum little-endian u32 words from ``salt``, zero-padding the tail, and negate (walb-tools)."""
    total = salt
    padded = bytes(data) + b"\0" * (-len(data) % 4)
    for index in range(0, len(padded), 4):
        total = (total + int.from_bytes(padded[index:index + 4], "little")) & MASK32
    return (~total + 1) & MASK32


def sealed(body: bytes, salt: int = 0, at: int = 0) -> bytes:
    """Return ``body`` with its self-inclusive checksum stored at ``at``."""
    block = bytearray(body)
    struct.pack_into("<I", block, at, 0)
    struct.pack_into("<I", block, at, reference_checksum(bytes(block), salt))
    return bytes(block)


# --- known values ---------------------------------------------------------------------------------

def test_empty_data_with_zero_salt_is_zero() -> None:
    assert csum.checksum(b"") == 0


def test_single_word_one_gives_all_ones() -> None:
    # sum = 1, two's complement of 1 is 0xFFFFFFFF.
    assert csum.checksum(b"\x01\x00\x00\x00", salt=0) == 0xFFFF_FFFF


def test_words_are_little_endian() -> None:
    # 00 00 00 01 is the word 0x01000000; its negation is 0xFF000000.
    assert csum.checksum(b"\x00\x00\x00\x01") == 0xFF00_0000


def test_sum_wraps_modulo_2_32() -> None:
    # 0xFFFFFFFF + 0xFFFFFFFF = 0x1_FFFFFFFE -> 0xFFFFFFFE; negated: 2.
    assert csum.checksum(b"\xff" * 8) == 2


def test_docs_example_with_trailing_bytes() -> None:
    # docs/formats.md §2.1: 0x00000001 + 0x00000302 = 0x303 -> 0xFFFFFCFD.
    assert csum.checksum(bytes.fromhex("010000000203")) == 0xFFFF_FCFD


def test_docs_example_with_salt() -> None:
    # The same bytes with salt 0x10: 0x313 -> 0xFFFFFCED.
    assert csum.checksum(bytes.fromhex("010000000203"), salt=0x10) == 0xFFFF_FCED


def test_eof_pack_value_from_docs() -> None:
    # A 4096-byte block, all zero except byte 6 = 1: word 1 is 0x00010000.
    block = bytearray(4096)
    block[6] = 1
    assert csum.checksum(bytes(block)) == 0xFFFF_0000


def test_large_all_ones_block() -> None:
    # 1024 words of 0xFFFFFFFF sum to -1024 mod 2**32, so the checksum is 1024.
    assert csum.checksum(b"\xff" * 4096) == 1024


def test_one_mebibyte_of_ones_does_not_overflow() -> None:
    # 262144 words of -1: checksum 262144 (the numpy path sums in u64).
    assert csum.checksum(b"\xff" * (1 << 20)) == 1 << 18


# --- salt -----------------------------------------------------------------------------------------

def test_salt_alone_is_negated() -> None:
    assert csum.checksum(b"", salt=5) == 0xFFFF_FFFB


def test_salt_adds_to_sum() -> None:
    # 1 + 1 = 2 -> 0xFFFFFFFE.
    assert csum.checksum(b"\x01\x00\x00\x00", salt=1) == 0xFFFF_FFFE


def test_salt_wraps_with_data() -> None:
    # 0xFFFFFFFF + 1 = 0 mod 2**32.
    assert csum.checksum(b"\x01\x00\x00\x00", salt=0xFFFF_FFFF) == 0


def test_different_salts_give_different_checksums() -> None:
    data = bytes(range(64))
    assert csum.checksum(data, salt=1) == (csum.checksum(data, salt=0) - 1) & MASK32


# --- trailing bytes -------------------------------------------------------------------------------

@pytest.mark.parametrize(("tail", "word"), [
    (b"\x02", 0x02),
    (b"\x02\x03", 0x0302),
    (b"\x02\x03\x04", 0x040302),
])
def test_trailing_bytes_are_zero_padded(tail: bytes, word: int) -> None:
    data = b"\x01\x00\x00\x00" + tail
    assert csum.checksum(data) == (-(1 + word)) & MASK32
    assert csum.checksum(data) == csum.checksum(data + b"\0" * (4 - len(tail)))


@pytest.mark.parametrize("size", [1, 2, 3])
def test_only_trailing_bytes(size: int) -> None:
    data = b"\xff" * size
    assert csum.checksum(data) == (-int.from_bytes(data, "little")) & MASK32


@pytest.mark.parametrize("size", [1025, 1026, 1027])
def test_trailing_bytes_on_numpy_path(size: int) -> None:
    data = bytes(index % 251 for index in range(size))
    assert csum.checksum(data) == reference_checksum(data)


# --- self-inclusive verification ------------------------------------------------------------------

def test_stored_checksum_makes_block_sum_to_zero() -> None:
    block = sealed(bytes(range(256)) * 2, at=4)
    assert csum.checksum(block) == 0
    assert csum.verifies(block)


def test_salted_self_inclusive_block_verifies_only_with_its_salt() -> None:
    block = sealed(bytes(range(128)), salt=0xDEAD_BEEF)
    assert csum.verifies(block, salt=0xDEAD_BEEF)
    assert not csum.verifies(block, salt=0)


def test_flipped_byte_fails_verification() -> None:
    block = bytearray(sealed(bytes(range(128))))
    block[77] ^= 0x10
    assert not csum.verifies(bytes(block))


# --- partial / finish -----------------------------------------------------------------------------

def test_partial_is_salted_sum_before_negation() -> None:
    assert csum.partial(b"\x01\x00\x00\x00\x02\x00\x00\x00", salt=3) == 6


def test_finish_negates() -> None:
    assert csum.finish(0) == 0
    assert csum.finish(1) == 0xFFFF_FFFF
    assert csum.finish(6) == 0xFFFF_FFFA


def test_running_sum_chains_across_small_and_large_paths() -> None:
    data = bytes(index * 7 % 256 for index in range(1000))
    head = csum.partial(data[:200])  # struct path
    assert csum.finish(csum.partial(data[200:], salt=head)) == csum.checksum(data)  # numpy path


# --- small vs large path --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [
    SMALL_PATH_LIMIT - 4, SMALL_PATH_LIMIT, SMALL_PATH_LIMIT + 1, SMALL_PATH_LIMIT + 4, 4096, 4099,
])
def test_paths_agree_with_reference_around_the_switch(size: int) -> None:
    data = bytes((index * 131 + 17) % 256 for index in range(size))
    assert csum.checksum(data, salt=0x1234_5678) == reference_checksum(data, salt=0x1234_5678)


def test_small_and_large_paths_agree_on_equal_sums() -> None:
    # The same words, once below and once above the switch (zero words change nothing).
    small = bytes(range(200))
    large = small + bytes(4096)
    assert csum.checksum(small) == csum.checksum(large)


def test_chunked_numpy_sum_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Real chunks are 2**24 words (64 MiB); shrink them to exercise the loop.
    monkeypatch.setattr(csum, "_CHUNK_WORDS", 3)
    data = bytes((index * 37) % 256 for index in range(1001))
    assert csum.checksum(data, salt=9) == reference_checksum(data, salt=9)


# --- input types ----------------------------------------------------------------------------------

def test_accepts_bytearray_and_memoryview() -> None:
    data = bytes(range(40))
    expected = csum.checksum(data)
    assert csum.checksum(bytearray(data)) == expected
    assert csum.checksum(memoryview(data)) == expected
    assert csum.checksum(memoryview(data)[4:]) == reference_checksum(data[4:])


def test_accepts_memoryview_of_u32_array() -> None:
    words = array.array("I", [1, 2, 3] * 100)
    assert csum.checksum(memoryview(words)) == reference_checksum(words.tobytes())


# --- properties -----------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2048), salt=st.integers(0, MASK32))
def test_matches_reference(data: bytes, salt: int) -> None:
    assert csum.checksum(data, salt) == reference_checksum(data, salt)


@settings(max_examples=200, deadline=None)
@given(words=st.binary(min_size=4, max_size=1024).map(lambda raw: raw[:len(raw) // 4 * 4]),
       salt=st.integers(0, MASK32))
def test_sealed_block_always_verifies(words: bytes, salt: int) -> None:
    block = bytearray(words)
    struct.pack_into("<I", block, 0, 0)
    struct.pack_into("<I", block, 0, csum.checksum(block, salt))
    assert csum.verifies(block, salt)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1024), cut=st.integers(0, 1024), salt=st.integers(0, MASK32))
def test_partial_sums_compose_at_word_boundaries(data: bytes, cut: int, salt: int) -> None:
    cut = min(cut, len(data)) // 4 * 4
    running = csum.partial(data[cut:], salt=csum.partial(data[:cut], salt))
    assert csum.finish(running) == csum.checksum(data, salt)


@settings(max_examples=60)
@given(st.lists(st.one_of(st.sampled_from([512, 4096]), st.integers(1, 5000)), min_size=1, max_size=40),
       st.randoms(use_true_random=False))
def test_checksums_end_to_end_agree_with_one_by_one(sizes: list[int], rng) -> None:
    """Pieces laid end to end, aligned or not (compressed images of any size): one numpy call for
    the aligned ones, the same checksums as piece by piece."""
    pieces = [rng.randbytes(size) for size in sizes]
    assert csum.checksums_end_to_end(b"".join(pieces), sizes) == [csum.checksum(piece) for piece in pieces]
