"""The diff engine against naive models: interval map, merge, convert, apply."""

from __future__ import annotations

import io as iolib
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.diff.engine import (
    BlockTarget,
    DiscardPolicy,
    convert_to_indexed,
    convert_to_sorted,
    full_image,
    log_ios,
    merge_ios,
    verify_then_apply,
    write_sorted,
)
from walbops.diff.gen import GenConfig, generate_wlog
from walbops.diff.indexed_file import IndexedDiffReader, IndexedDiffWriter
from walbops.diff.io import DiffIo, IntervalMap, IoKind
from walbops.diff.logs import WlogReader, WlogWriter
from walbops.diff.sorted_file import SortedDiffReader, SortedDiffWriter
from walbops.errors import ChecksumMismatch, OperationError
from walbops.formats.compression import Compression
from walbops.formats.ldev import LogpackBuilder
from walbops.formats.wlog import WlogHeader

LB = 512
UUID = bytes(range(16))

# An IO for the models: (address, blocks, kind, fill byte)
io_strategy = st.tuples(st.integers(0, 60), st.integers(1, 12), st.sampled_from(list(IoKind)), st.integers(1, 255))


def make_io(address: int, blocks: int, kind: IoKind, fill: int) -> DiffIo:
    if kind == IoKind.NORMAL:
        return DiffIo.normal(address, bytes([fill]) * blocks * LB)
    return DiffIo(address, blocks, kind)


def paint(image: bytearray, io: DiffIo) -> None:
    """The naive model: DISCARD and ALLZERO read as zeros."""
    start, end = io.address * LB, io.end * LB
    image[start:end] = io.data() if io.kind == IoKind.NORMAL else bytes(end - start)


def render(ios, size_lb: int = 80) -> bytes:
    image = bytearray(size_lb * LB)
    for io in ios:
        paint(image, io)
    return bytes(image)


def kinds_map(ios, size_lb: int = 80) -> list:
    where = [None] * size_lb
    for io in ios:
        for lb in range(io.address, io.end):
            where[lb] = io.kind
    return where


@given(st.lists(io_strategy, max_size=30))
@settings(max_examples=200, deadline=None)
def test_interval_map_matches_painting_in_order(spec):
    ios = [make_io(*entry) for entry in spec]
    table = IntervalMap()
    for io in ios:
        table.add(io)
    kept = list(table)
    assert all(a.end <= b.address for a, b in zip(kept, kept[1:], strict=False)), "sorted and non-overlapping"
    assert render(kept) == render(ios)
    assert kinds_map(kept) == kinds_map(ios)
    assert table.held_bytes == sum(io.nbytes for io in kept if io.kind == IoKind.NORMAL)


def sorted_stream(spec) -> list[DiffIo]:
    table = IntervalMap()
    for entry in spec:
        table.add(make_io(*entry))
    return list(table)


@given(st.lists(st.lists(io_strategy, max_size=12), min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_merge_equals_applying_in_order(specs):
    streams = [sorted_stream(spec) for spec in specs]
    merged = list(merge_ios([iter(stream) for stream in streams]))
    assert all(a.end <= b.address for a, b in zip(merged, merged[1:], strict=False))
    everything = [io for stream in streams for io in stream]
    assert render(merged) == render(everything)
    assert kinds_map(merged) == kinds_map(everything)


def linear_merge(sources):
    """The sweep merge written the plain way (every head looked at each step): the reference that
    merge_ios, which keeps its heads in heaps, must match piece for piece."""
    heads = [next(source, None) for source in sources]
    position = 0
    while True:
        live = []
        for index, source in enumerate(sources):
            head = heads[index]
            while head is not None and head.end <= position:
                head = next(source, None)
            heads[index] = head
            if head is not None:
                live.append((index, head))
        if not live:
            return
        covering = [(index, head) for index, head in live if head.address <= position]
        if not covering:
            position = min(head.address for _, head in live)
            continue
        winner_index, winner = covering[-1]
        end = min([winner.end] + [head.address for index, head in live if index > winner_index])
        yield winner if position == winner.address and end == winner.end else winner.cut(position, end)
        position = end


@given(st.lists(st.lists(io_strategy, max_size=12), min_size=1, max_size=7))
@settings(max_examples=300, deadline=None)
def test_heap_merge_gives_the_pieces_of_the_plain_sweep(specs):
    streams = [sorted_stream(spec) for spec in specs]
    fast = list(merge_ios([iter(stream) for stream in streams]))
    plain = list(linear_merge([iter(stream) for stream in streams]))
    assert [(io.address, io.blocks, io.kind) for io in fast] == [(io.address, io.blocks, io.kind) for io in plain]
    assert [bytes(io.data()) if io.kind == IoKind.NORMAL else b"" for io in fast] == \
        [bytes(io.data()) if io.kind == IoKind.NORMAL else b"" for io in plain]
    whole = {id(io) for stream in streams for io in stream}
    assert [id(io) in whole for io in fast] == [id(io) in whole for io in plain]


def test_merge_passes_whole_ios_through_untouched():
    older = [make_io(0, 4, IoKind.NORMAL, 1)]
    newer = [make_io(10, 4, IoKind.NORMAL, 2)]
    merged = list(merge_ios([iter(older), iter(newer)]))
    assert merged[0] is older[0] and merged[1] is newer[0]


@given(st.lists(io_strategy, max_size=20), st.integers(1, 16))
@settings(max_examples=100, deadline=None)
def test_full_image_matches_model(spec, bulk_lb):
    ios = sorted_stream(spec)
    image = b"".join(bytes(chunk) for chunk in full_image(iter(ios), 80, None, bulk_lb))
    assert image == render(ios)


def test_full_image_refuses_io_beyond_size():
    with pytest.raises(Exception, match="beyond"):
        list(full_image(iter([make_io(70, 20, IoKind.NORMAL, 1)]), 80))


# ---------------------------------------------------------------------------------------------
# Equivalence on random workloads: redo(wlog) == apply(to-wdiff(wlog)) == apply(merge(pieces))

DEVICE_LB = 8192  # 4 MiB


def generated(pbs: int, ring: int | None, seed: int) -> bytes:
    out = iolib.BytesIO()
    generate_wlog(out, GenConfig(device_lb=DEVICE_LB, log_pb=(6 << 20) // pbs, pbs=pbs, seed=seed,
                                 max_io_lb=64, discard_pct=15, max_discard_lb=512, allzero_pct=10,
                                 ring_buffer_size=ring, begin_lsid=(ring - 5) if ring else 0))
    return out.getvalue()


def apply_to(path: Path, make_ios, discard: DiscardPolicy = DiscardPolicy.ZERO) -> bytes:
    with open(path, "wb") as stream:
        stream.truncate(DEVICE_LB * LB)
    fd = os.open(path, os.O_RDWR)
    try:
        verify_then_apply(make_ios, BlockTarget(fd, DEVICE_LB, discard))
    finally:
        os.close(fd)
    return path.read_bytes()


def cut_wlog(raw: bytes, pieces: int) -> list[bytes]:
    """Split a wlog into consecutive wlogs at pack boundaries."""
    reader = WlogReader(iolib.BytesIO(raw))
    packs = list(reader)
    step = max(1, len(packs) // pieces)
    outputs = []
    for start in range(0, len(packs), step):
        chunk = packs[start:start + step]
        out = iolib.BytesIO()
        writer = WlogWriter(out, WlogHeader(reader.pbs, reader.salt, reader.header.uuid, chunk[0].header.logpack_lsid))
        for pack in chunk:
            writer.write_pack(pack.header, pack.data)
        writer.close()
        outputs.append(out.getvalue())
    return outputs


@pytest.mark.parametrize("pbs, ring", [(512, None), (512, 3000), (4096, None), (4096, 400)])
def test_redo_equals_apply_of_sorted_indexed_and_merged(tmp_path, pbs, ring):
    raw = generated(pbs, ring, seed=pbs + (ring or 0))
    reader_stats = WlogReader(iolib.BytesIO(raw))
    packs = list(reader_stats)
    if ring:
        assert any(rec.is_padding for pack in packs for rec in pack.header.records), "the log wraps with padding"
    assert any(rec.is_discard for pack in packs for rec in pack.header.records)

    redone = apply_to(tmp_path / "redo.img", lambda: log_ios(WlogReader(iolib.BytesIO(raw))))
    assert any(redone)

    sorted_out = iolib.BytesIO()
    convert_to_sorted(log_ios(WlogReader(iolib.BytesIO(raw))), sorted_out, UUID)
    assert apply_to(tmp_path / "sorted.img", lambda: iter(SortedDiffReader(iolib.BytesIO(sorted_out.getvalue())))) \
        == redone

    spilled_out = iolib.BytesIO()
    stats = convert_to_sorted(log_ios(WlogReader(iolib.BytesIO(raw))), spilled_out, UUID, memory_budget=64 << 10,
                              tmp_dir=str(tmp_path))
    assert stats.extra["spilled_runs"] > 1
    assert spilled_out.getvalue() == sorted_out.getvalue(), "spilling runs changes nothing"
    assert apply_to(tmp_path / "spilled.img", lambda: iter(SortedDiffReader(iolib.BytesIO(spilled_out.getvalue())))) \
        == redone

    indexed_path = tmp_path / "x.indexed.wdiff"
    with open(indexed_path, "wb") as out:
        convert_to_indexed(log_ios(WlogReader(iolib.BytesIO(raw))), out, UUID, Compression.SNAPPY)
    spilled_index = tmp_path / "spilled.indexed.wdiff"
    with open(spilled_index, "wb") as out:
        stats = convert_to_indexed(log_ios(WlogReader(iolib.BytesIO(raw))), out, UUID, Compression.SNAPPY,
                                   max_entries=40)
    assert stats.extra["spilled_runs"] > 1
    assert spilled_index.read_bytes() == indexed_path.read_bytes(), "spilling the index changes nothing"

    def indexed_ios():
        fd = os.open(indexed_path, os.O_RDONLY)
        try:
            yield from IndexedDiffReader(fd)
        finally:
            os.close(fd)

    assert apply_to(tmp_path / "indexed.img", indexed_ios) == redone

    pieces = []
    for piece in cut_wlog(raw, 5):
        out = iolib.BytesIO()
        convert_to_sorted(log_ios(WlogReader(iolib.BytesIO(piece))), out, UUID, Compression.ZSTD)
        pieces.append(out.getvalue())
    assert len(pieces) >= 3
    merged_out = iolib.BytesIO()
    write_sorted(merge_ios([iter(SortedDiffReader(iolib.BytesIO(p))) for p in pieces]),
                 SortedDiffWriter(merged_out, UUID, Compression.LZ4))
    assert apply_to(tmp_path / "merged.img", lambda: iter(SortedDiffReader(iolib.BytesIO(merged_out.getvalue())))) \
        == redone
    image = b"".join(bytes(c) for c in full_image(iter(SortedDiffReader(iolib.BytesIO(merged_out.getvalue()))),
                                                  DEVICE_LB))
    assert image == redone


def test_discard_ignore_keeps_base_data(tmp_path):
    base = tmp_path / "base.img"
    base.write_bytes(b"\x07" * 16 * LB)
    fd = os.open(base, os.O_RDWR)
    try:
        ios = [DiffIo(2, 4, IoKind.DISCARD), DiffIo(8, 2, IoKind.ALLZERO)]
        verify_then_apply(lambda: iter(ios), BlockTarget(fd, 16, DiscardPolicy.IGNORE))
    finally:
        os.close(fd)
    data = base.read_bytes()
    assert data[2 * LB:6 * LB] == b"\x07" * 4 * LB
    assert data[8 * LB:10 * LB] == bytes(2 * LB)


@pytest.mark.parametrize("policy", [DiscardPolicy.ZERO, DiscardPolicy.PASSDOWN])
def test_discard_zero_and_passdown_read_back_zeros_on_files(tmp_path, policy):
    base = tmp_path / "base.img"
    base.write_bytes(b"\x07" * 64 * LB)
    fd = os.open(base, os.O_RDWR)
    try:
        verify_then_apply(lambda: iter([DiffIo(3, 17, IoKind.DISCARD)]), BlockTarget(fd, 64, policy))
    finally:
        os.close(fd)
    data = base.read_bytes()
    assert data[3 * LB:20 * LB] == bytes(17 * LB)
    assert data[:3 * LB] == b"\x07" * 3 * LB and data[20 * LB:] == b"\x07" * 44 * LB


def test_apply_refuses_corrupt_diff_before_writing_anything(tmp_path):
    out = iolib.BytesIO()
    writer = SortedDiffWriter(out, UUID, Compression.NONE)
    writer.write(make_io(0, 4, IoKind.NORMAL, 5))
    writer.write(make_io(100, 4, IoKind.NORMAL, 6))
    writer.close()
    raw = bytearray(out.getvalue())
    raw[-4096 - 10] ^= 0xFF  # inside the data of the last record
    target = tmp_path / "t.img"
    target.write_bytes(bytes(200 * LB))
    fd = os.open(target, os.O_RDWR)
    try:
        with pytest.raises(ChecksumMismatch):
            verify_then_apply(lambda: iter(SortedDiffReader(iolib.BytesIO(bytes(raw)))), BlockTarget(fd, 200))
    finally:
        os.close(fd)
    assert target.read_bytes() == bytes(200 * LB), "nothing was applied"


def test_apply_refuses_io_past_the_target(tmp_path):
    target = tmp_path / "t.img"
    target.write_bytes(bytes(8 * LB))
    fd = os.open(target, os.O_RDWR)
    try:
        with pytest.raises(OperationError, match="beyond"):
            verify_then_apply(lambda: iter([make_io(6, 4, IoKind.NORMAL, 1)]), BlockTarget(fd, 8))
    finally:
        os.close(fd)
    assert target.read_bytes() == bytes(8 * LB)


def test_sorted_writer_splits_large_ios_and_keeps_zero_writes_normal():
    out = iolib.BytesIO()
    writer = SortedDiffWriter(out, UUID, Compression.LZ4, max_io_blocks=8)
    writer.write(DiffIo.normal(0, bytes(4 * LB)))
    writer.write(DiffIo.normal(10, os.urandom(20 * LB)))
    writer.close()
    ios = list(SortedDiffReader(iolib.BytesIO(out.getvalue())))
    assert [(x.address, x.blocks, x.kind) for x in ios] == [
        (0, 4, IoKind.NORMAL), (10, 8, IoKind.NORMAL), (18, 8, IoKind.NORMAL), (26, 4, IoKind.NORMAL)]


def test_conversion_marks_whole_zero_writes_allzero_but_not_zero_remainders():
    """WalB decides ALLZERO per logged IO: a zero part left after a cut stays normal."""
    out = iolib.BytesIO()
    writer = WlogWriter(out, WlogHeader(512, 7, UUID, 0))
    builder = LogpackBuilder(512, 7, 0)
    builder.add_normal(0, bytes(2 * LB))  # all zeros: ALLZERO
    builder.add_normal(10, bytes(LB) + b"\1" * LB)  # zero first block, cut away below
    builder.add_normal(11, b"\2" * LB)
    writer.write_built(*builder.finish())
    writer.close()
    converted = iolib.BytesIO()
    convert_to_sorted(log_ios(WlogReader(iolib.BytesIO(out.getvalue()))), converted, UUID)
    ios = list(SortedDiffReader(iolib.BytesIO(converted.getvalue())))
    assert [(x.address, x.blocks, x.kind) for x in ios] == [
        (0, 2, IoKind.ALLZERO), (10, 1, IoKind.NORMAL), (11, 1, IoKind.NORMAL)]


def test_indexed_writer_writes_in_batches_what_it_writes_io_by_io():
    """add_all (images summed with one numpy call and written together, batches cut by count and
    by bytes) writes the file that add, one IO at a time, writes: random, compressible, zero and
    discarded IOs, overlapping one another."""
    rng = random.Random(5)
    ios = []
    for index in range(5000):
        address, blocks = rng.randrange(0, 1 << 16), rng.choice([1, 8, 8, 8, 64])
        choice = rng.random()
        if choice < 0.1:
            ios.append(DiffIo(address, blocks, IoKind.DISCARD))
        elif choice < 0.2:
            ios.append(DiffIo.normal(address, bytes(blocks * LB)))
        elif choice < 0.5:
            ios.append(DiffIo.normal(address, bytes([index % 251]) * (blocks * LB - 7) + rng.randbytes(7)))
        else:
            ios.append(DiffIo.normal(address, rng.randbytes(blocks * LB)))
    one_by_one, batched = iolib.BytesIO(), iolib.BytesIO()
    writer = IndexedDiffWriter(one_by_one, UUID, Compression.LZ4)
    for io in ios:
        writer.add(io)
    writer.close()
    writer = IndexedDiffWriter(batched, UUID, Compression.LZ4)
    writer.add_all(ios)
    writer.close()
    assert batched.getvalue() == one_by_one.getvalue()
