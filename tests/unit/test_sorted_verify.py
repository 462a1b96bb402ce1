"""verify_sorted, the pack-wise check of a sorted wdiff, held against reading it with
SortedDiffReader and loading every image: the same files pass, and a damaged file fails with the
reader's own error."""

from __future__ import annotations

import io
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.diff.indexed_file import IndexedDiffWriter
from walbops.diff.io import DiffIo, IoKind
from walbops.diff.sorted_file import SortedDiffReader, SortedDiffWriter, verify_sorted
from walbops.errors import BadField, FormatError
from walbops.formats.compression import Compression

LB = 512

# (gap before it [LB], blocks, kind, how its data looks): compressible, random, odd-sized.
ios = st.lists(st.tuples(st.integers(0, 9), st.integers(1, 24), st.sampled_from(list(IoKind)),
                         st.sampled_from(["fill", "random"])), max_size=40)


def written(spec, seed: int, compression: Compression) -> bytes:
    rng = random.Random(seed)
    out = io.BytesIO()
    writer = SortedDiffWriter(out, bytes(range(16)), compression, max_io_blocks=16)
    address = 0
    for gap, blocks, kind, look in spec:
        address += gap
        if kind == IoKind.NORMAL:
            data = bytes([rng.randrange(256)]) * blocks * LB if look == "fill" else rng.randbytes(blocks * LB)
            writer.write(DiffIo.normal(address, data))
        else:
            writer.write(DiffIo(address, blocks, kind))
        address += blocks
    writer.close()
    return out.getvalue()


def read_plainly(path: str) -> int:
    """What verify_wdiff did before: iterate with the reader and load every image."""
    count = 0
    with open(path, "rb") as stream:
        for diff_io in SortedDiffReader(stream, path):
            if diff_io.kind == IoKind.NORMAL:
                diff_io.data()
            count += 1
    return count


def outcome(check, path: str):
    try:
        return "ok", check(path)
    except FormatError as exc:
        return type(exc).__name__, str(exc)


def verify_path(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return verify_sorted(fd, path)
    finally:
        os.close(fd)


@given(ios, st.integers(0, 2**32), st.sampled_from([Compression.LZ4, Compression.NONE, Compression.GZIP]),
       st.one_of(st.none(), st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255))),
       st.integers(0, 2))
@settings(max_examples=300, deadline=None)
def test_verify_sorted_agrees_with_the_reader(tmp_path_factory, spec, seed, compression, damage, cut):
    raw = bytearray(written(spec, seed, compression))
    if damage is not None:
        where, flip = damage
        raw[int(where * len(raw))] ^= flip
    if cut:
        del raw[len(raw) - cut * 100:]
    path = str(tmp_path_factory.mktemp("wdiff") / "d.wdiff")
    with open(path, "wb") as stream:
        stream.write(raw)
    plain = outcome(read_plainly, path)
    fast = outcome(verify_path, path)
    assert fast == plain


def test_an_indexed_wdiff_is_refused(tmp_path):
    path = tmp_path / "d.wdiff"
    with open(path, "wb") as stream:
        writer = IndexedDiffWriter(stream, bytes(16))
        writer.add(DiffIo.normal(0, bytes(range(256)) * 16))
        writer.close()
    with pytest.raises(BadField, match="not a sorted wdiff"):
        verify_path(str(path))
