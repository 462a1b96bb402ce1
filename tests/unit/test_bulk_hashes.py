"""The hash sync's batch hashing and the sparse-aware image read, each held against the plain way."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.diff.bhash import bulk_hash, bulk_hashes
from walbops.diff.engine import full_image

LB = 512


def plain_hashes(window: bytes, bulk: int, seed: int) -> bytes:
    """One bulk_hash per bulk, the last one short: what docs/protocol.md §8.4 says a batch carries."""
    return b"".join(bulk_hash(window[at:at + bulk], seed) for at in range(0, len(window), bulk))


# A window as runs of LBs, each all zeros or random: zero bulks, mixed ones and a short last one.
runs = st.lists(st.tuples(st.integers(1, 20), st.booleans()), min_size=0, max_size=12)


@given(runs, st.sampled_from([1, 2, 8]), st.integers(0, 2**32 - 1), st.randoms())
@settings(max_examples=200, deadline=None)
def test_bulk_hashes_are_the_plain_per_bulk_hashes(spec, bulk_lb, seed, rng):
    window = b"".join(bytes(count * LB) if zero else rng.randbytes(count * LB) for count, zero in spec)
    assert bulk_hashes(window, bulk_lb * LB, seed) == plain_hashes(window, bulk_lb * LB, seed)


def test_an_all_zero_window_hashes_without_reading_each_bulk():
    window = bytes(64 * LB)
    assert bulk_hashes(memoryview(window), 8 * LB, 7) == bulk_hash(bytes(8 * LB), 7) * 8


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 16)), max_size=6), st.integers(1, 24),
       st.integers(0, 8), st.randoms())
@settings(max_examples=60, deadline=None)
def test_a_sparse_base_reads_as_its_plain_bytes(tmp_path_factory, writes, bulk_lb, shorter, rng):
    """full_image reads only the base's data extents; the image is still the file's bytes, zeros
    past a base shorter than the image."""
    size_lb = 64
    path = tmp_path_factory.mktemp("base") / "base.img"
    with open(path, "wb") as stream:
        stream.truncate((size_lb - shorter) * LB)
        for at_lb, count_lb in writes:
            at_lb = min(at_lb, size_lb - shorter - 1)
            stream.seek(at_lb * LB)
            stream.write(rng.randbytes(min(count_lb, size_lb - shorter - at_lb) * LB))
    expected = path.read_bytes() + bytes(shorter * LB)
    fd = os.open(path, os.O_RDONLY)
    try:
        image = b"".join(bytes(window) for window in full_image(iter(()), size_lb, fd, bulk_lb))
    finally:
        os.close(fd)
    assert image == expected


@pytest.mark.root
def test_a_block_device_base_reads_whole(tmp_path: Path) -> None:
    """A base that is a block device (an LV on the lvm store; here a loop device) has no hole
    reporting: its SEEK_DATA fails with EINVAL. It reads as all data (the test guest found the hash
    replication from an lvm archive failing on it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a loop device")
    path = tmp_path / "base.img"
    with open(path, "wb") as stream:
        stream.truncate(64 * LB)
        stream.seek(40 * LB)
        stream.write(b"\x5a" * 8 * LB)
    device = subprocess.run(["losetup", "--find", "--show", "--read-only", str(path)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        fd = os.open(device, os.O_RDONLY)
        try:
            image = b"".join(bytes(window) for window in full_image(iter(()), 64, fd, 16))
        finally:
            os.close(fd)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    assert image == path.read_bytes()
