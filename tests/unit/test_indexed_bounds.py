"""Indexed wdiffs built to make a reader work hard: the work and memory stay bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from walbops.diff import indexed_file
from walbops.diff.indexed_file import DECOMPRESSION_FACTOR, IndexedDiffReader, _index_records
from walbops.errors import BadField, FormatError
from walbops.formats import checksum as csum
from walbops.formats.compression import Compression, compress_exact
from walbops.formats.indexed import INDEX_RECORD_STRUCT, IndexSuper, index_padding
from walbops.formats.wdiff import FILE_HEADER_STRUCT, DiffType, FileHeader

IMAGE_LB = 1 << 17  # 64 MiB decompressed: the largest image an IO may have


def hostile_diff(path: Path, n_images: int, n_records: int) -> None:
    """``n_images`` images of 64 MiB of zeros (zstd: a few KiB each), and one-block records at
    LB 0, 1, 2 … that take them in turn: image 0, 1, …, n-1, 0, 1 …"""
    image = compress_exact(Compression.ZSTD, bytes(IMAGE_LB * 512), 3)
    out = bytearray(FileHeader(bytes(16), DiffType.INDEXED).serialize())
    offsets = []
    for _ in range(n_images):
        offsets.append(len(out))
        out += image
    out += bytes(index_padding(len(out)))
    index_offset = len(out)
    rows = [(lb, 1, 0, Compression.ZSTD, offsets[lb % n_images], len(image), lb, IMAGE_LB, csum.checksum(image))
            for lb in range(n_records)]
    out += _index_records(rows)
    out += IndexSuper(index_offset, n_records, n_images).serialize()
    path.write_bytes(bytes(out))


def read_all(path: Path) -> IndexedDiffReader:
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = IndexedDiffReader(fd, str(path))
        for io in reader:
            io.data()
        return reader
    finally:
        os.close(fd)


def test_records_alternating_between_two_large_images_decompress_each_once(tmp_path):
    path = tmp_path / "two.wdiff"
    hostile_diff(path, 2, 400)
    assert path.stat().st_size < 64 << 10
    reader = read_all(path)
    assert reader._decompressed == 2 * IMAGE_LB * 512


def test_records_cycling_through_more_images_than_the_cache_holds_are_refused_early(tmp_path):
    path = tmp_path / "three.wdiff"
    hostile_diff(path, 3, 3000)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = IndexedDiffReader(fd, str(path))
        with pytest.raises(BadField, match="jumps between images"):
            for io in reader:
                io.data()
        # The work done before the refusal: the budget, not 3000 images' worth.
        assert reader._decompressed <= (DECOMPRESSION_FACTOR * 3 + 4 * 2) * IMAGE_LB * 512 + IMAGE_LB * 512
        assert reader.distinct_image_bytes == 3 * IMAGE_LB * 512
    finally:
        os.close(fd)


def test_verify_decompresses_each_distinct_image_once(tmp_path, monkeypatch):
    path = tmp_path / "three.wdiff"
    hostile_diff(path, 3, 3000)
    calls = []
    real = indexed_file.decompress
    monkeypatch.setattr(indexed_file, "decompress", lambda *args: calls.append(args[0]) or real(*args))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert IndexedDiffReader(fd, str(path)).verify() == 3000
    finally:
        os.close(fd)
    assert len(calls) == 3


def test_a_sparse_file_claiming_a_huge_index_is_refused_in_little_memory(tmp_path):
    """Issue 13's probe: a 1 GiB index of holes took 2 GiB of memory to refuse."""
    path = tmp_path / "sparse.wdiff"
    n_records = (1 << 30) // INDEX_RECORD_STRUCT.size
    index_offset = FILE_HEADER_STRUCT.size + index_padding(FILE_HEADER_STRUCT.size)
    with open(path, "wb") as out:
        out.write(FileHeader(bytes(16), DiffType.INDEXED).serialize())
        out.seek(index_offset + n_records * INDEX_RECORD_STRUCT.size)
        out.write(IndexSuper(index_offset, n_records, 0).serialize())
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec.
    probe = ("import sys\nfrom walbops.diff.files import verify_wdiff\nfrom walbops.errors import FormatError\n"
             "try:\n    verify_wdiff(sys.argv[1])\nexcept FormatError as error:\n    print(error)\n"
             "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0])\n")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    refusal, max_rss_kib = result.stdout.splitlines()
    assert str(path) in refusal
    assert int(max_rss_kib) < 256 << 10, f"{int(max_rss_kib) >> 10} MiB to refuse it"


def test_the_streaming_verify_still_finds_an_order_error_across_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(indexed_file, "_INDEX_SCAN_BATCH", 2)
    path = tmp_path / "overlap.wdiff"
    image = compress_exact(Compression.ZSTD, bytes(512), 3)
    out = bytearray(FileHeader(bytes(16), DiffType.INDEXED).serialize())
    offset = len(out)
    out += image
    out += bytes(index_padding(len(out)))
    index_offset = len(out)
    # Records 1 and 2 fall in different batches; record 2 overlaps record 1.
    rows = [(lb, 1, 0, Compression.ZSTD, offset, len(image), 0, 1, csum.checksum(image)) for lb in (0, 4, 4)]
    out += _index_records(rows)
    out += IndexSuper(index_offset, 3, 1).serialize()
    path.write_bytes(bytes(out))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(FormatError, match="overlaps or precedes"):
            IndexedDiffReader(fd, str(path)).verify()
    finally:
        os.close(fd)
