"""The fast log paths: batched checksums, the windowed ring reader, the wlog stream parser,
the raw wlog of a ring extent, and the vectorized check of an indexed wdiff. Each is held
against the simple, record-by-record reader it replaces, on intact and corrupted data."""

from __future__ import annotations

import io
import os
import random

import pytest

from walbops.device.core import DeviceConfig, WalbDevice, format_ldev
from walbops.device.wlogs import RingLogs
from walbops.diff import indexed_file, logs
from walbops.diff.engine import convert_to_indexed, log_ios
from walbops.diff.gen import GenConfig, generate_wlog
from walbops.diff.indexed_file import IndexedDiffReader
from walbops.diff.logs import LdevLogReader, LogPack, WlogReader, WlogStream, bad_checksums, read_super
from walbops.errors import FormatError, OperationError
from walbops.formats import checksum as csum
from walbops.formats.compression import Compression
from walbops.formats.ldev import LogpackBuilder, LogpackHeader

MiB = 1 << 20


def test_bad_checksums_agrees_with_the_plain_checksum():
    rng = random.Random(1)
    buffer = memoryview(rng.randbytes(1 << 16))
    for trial in range(200):
        cuts = sorted(rng.sample(range(0, len(buffer) // 4), rng.randrange(2, 12)))
        spans = [(4 * start, 4 * end) for start, end in zip(cuts[::2], cuts[1::2], strict=False) if end > start]
        if trial % 3 == 0:
            rng.shuffle(spans)  # out of order: summed one by one
        salt = rng.randrange(1 << 32)
        stored = [csum.checksum(buffer[start:end], salt) ^ (rng.random() < 0.3) for start, end in spans]
        expected = [index for index, (span, value) in enumerate(zip(spans, stored, strict=True))
                    if csum.checksum(buffer[span[0]:span[1]], salt) != value]
        assert bad_checksums(buffer, [(s, e, v) for (s, e), v in zip(spans, stored, strict=True)], salt) == expected


def reference_packs(reader: LdevLogReader, begin: int, end: int | None):
    """The ring reader before windows: one header, one data read and one check per pack."""
    lsid = begin
    while end is None or lsid < end:
        try:
            header = LogpackHeader.parse(reader._read_pb(lsid, 1), reader.pbs, reader.salt)
        except FormatError:
            return
        if header.logpack_lsid != lsid or not header.records:
            return
        pack = LogPack(header, memoryview(reader._read_pb(lsid + 1, header.total_io_size)), reader.pbs)
        bad = pack.first_bad_record(reader.salt)
        if bad is not None:
            if bad:
                yield pack.shrink(bad)
            return
        yield pack
        lsid = header.next_lsid


def summary(packs) -> list[tuple[LogpackHeader, bytes]]:
    return [(pack.header, bytes(pack.data)) for pack in packs]


@pytest.fixture(params=[512, 4096])
def ring(tmp_path, request):
    """An ldev whose ring wrapped, with the lsids of its valid logs, which cross the ring's end."""
    pbs = request.param
    ldev, ddev = tmp_path / "ldev", tmp_path / "ddev"
    for path, size in ((ldev, 3 * MiB if pbs == 512 else 20 * MiB), (ddev, 4 * MiB)):
        path.write_bytes(b"")
        os.truncate(path, size)
    format_ldev(str(ldev), str(ddev), "unit", pbs)
    device = WalbDevice(DeviceConfig("unit", str(ldev), str(ddev), flush_interval_ms=3_600_000,
                                     checkpoint_interval_ms=3_600_000))
    rng = random.Random(pbs)
    try:
        for index in range(400):
            size = rng.choice([512, 4096, 8192, 65536] if pbs == 512 else [4096, 8192, 65536])
            device.write(rng.randrange(0, 4 * MiB // 512 - 200) * 512, rng.randbytes(size))
            if index % 50 == 0:
                device.flush()
                device.force_checkpoint()
                device.set_oldest_lsid(device.lsids().prev_written)
        # Let the valid logs cross the ring's end: release them up to half a ring before it,
        # then write past it (packs with padding records, and data at the ring's start).
        ring_size = device.log_capacity()
        while True:
            device.flush()
            device.force_checkpoint()
            device.set_oldest_lsid(device.lsids().prev_written)
            if device.lsids().latest % ring_size > ring_size // 2:
                break
            device.write(rng.randrange(0, 4 * MiB // 4096 - 16) * 4096, rng.randbytes(65536))
        boundary = -(-device.lsids().latest // ring_size) * ring_size
        while device.lsids().latest < boundary + 64 * 1024 // pbs:
            size = rng.choice([4096, 8192, 65536])
            device.write(rng.randrange(0, (4 * MiB - size) // 4096) * 4096, rng.randbytes(size))
        device.flush()
        lsids = device.lsids()
    finally:
        device.close()
    return ldev, lsids.oldest, lsids.latest


def test_windowed_ring_reader_equals_the_pack_by_pack_one(ring, tmp_path, monkeypatch):
    ldev, begin, latest = ring
    monkeypatch.setattr(logs, "WINDOW_BYTES", 64 << 10)  # many windows, and packs larger than one
    raw = ldev.read_bytes()
    rng = random.Random(7)
    for trial in range(25):
        data = bytearray(raw)
        if trial:
            fd = os.open(ldev, os.O_RDONLY)
            sup = read_super(fd)
            os.close(fd)
            lsid = rng.randrange(begin, latest)
            data[sup.offset_pb(lsid) * sup.physical_bs + rng.randrange(sup.physical_bs)] ^= 0x20
        corrupt = tmp_path / "corrupt"
        corrupt.write_bytes(data)
        fd = os.open(corrupt, os.O_RDONLY)
        try:
            reader = LdevLogReader(fd, read_super(fd))
            for end in (None, latest, (begin + latest) // 2):
                assert summary(reader.packs(begin, end)) == summary(reference_packs(reader, begin, end))
        finally:
            os.close(fd)


def pack_lsids(reader: LdevLogReader, begin: int, end: int) -> list[tuple[int, int]]:
    """(lsid, next lsid) of every pack in [begin, end)."""
    return [(pack.header.logpack_lsid, pack.header.next_lsid) for pack in reference_packs(reader, begin, end)]


def meets_ring_end(lsid: int, next_lsid: int, ring_size: int) -> bool:
    """Whether a pack's PBs continue at the ring's start, or end where it ends."""
    return lsid // ring_size != (next_lsid - 1) // ring_size or next_lsid % ring_size == 0


def torn_cuts(spans: list[tuple[int, int]], ring_size: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """Where a crash may leave a pack cut: (first lsid not written, pack lsid, next lsid).

    Every PB of the packs that wrap or end at the ring's end and of the last pack, and a
    sample of the PBs of the others."""
    cuts = []
    for lsid, next_lsid in spans:
        every = meets_ring_end(lsid, next_lsid, ring_size) or next_lsid == spans[-1][1]
        points = range(lsid + 1, next_lsid) if every else rng.sample(range(lsid + 1, next_lsid),
                                                                       min(2, next_lsid - lsid - 1))
        cuts += [(cut, lsid, next_lsid) for cut in points]
    return cuts


def test_windowed_ring_reader_equals_the_pack_by_pack_one_on_torn_tails(ring, tmp_path, monkeypatch):
    """A crash mid-write leaves the last pack's header and a prefix of its data: whatever the
    window size and wherever windows end, the windowed reader yields what the pack-by-pack one
    does (the pack cut at its first torn IO, or nothing of it), and nothing after."""
    ldev, begin, latest = ring
    corrupt = tmp_path / "torn"
    corrupt.write_bytes(ldev.read_bytes())
    fd = os.open(corrupt, os.O_RDWR)
    try:
        sup = read_super(fd)
        pbs, ring_size = sup.physical_bs, sup.ring_buffer_size
        reader = LdevLogReader(fd, sup)
        rng = random.Random(pbs)
        spans = pack_lsids(reader, begin, latest)
        assert any(meets_ring_end(lsid, nxt, ring_size) for lsid, nxt in spans)
        cuts = torn_cuts(spans, ring_size, rng)
        cuts = [cut for cut in cuts if cut[2] == spans[-1][1] or rng.random() < 0.3]
        windows = [pbs, 3 * pbs, 64 << 10, 4 << 20]
        for cut, lsid, next_lsid in cuts:
            saved = reader._read_pb(cut, next_lsid - cut)
            stale = rng.choice([bytes(len(saved)), rng.randbytes(len(saved))])
            for at in range(cut, next_lsid):  # PB by PB: the torn part may wrap the ring's end
                os.pwrite(fd, stale[(at - cut) * pbs:(at - cut + 1) * pbs], sup.offset_pb(at) * pbs)
            expected = summary(reference_packs(reader, begin, None))
            assert not expected or expected[-1][0].logpack_lsid <= lsid, "nothing after the torn pack"
            for window in windows:
                monkeypatch.setattr(logs, "WINDOW_BYTES", window)
                got = summary(reader.packs(begin))
                assert got == expected, (window, cut, lsid)
            for at in range(cut, next_lsid):
                os.pwrite(fd, saved[(at - cut) * pbs:(at - cut + 1) * pbs], sup.offset_pb(at) * pbs)
    finally:
        os.close(fd)


def test_a_ring_extent_ships_as_the_wlog_of_its_packs(ring):
    ldev, begin, latest = ring
    with RingLogs(str(ldev)) as logs_:
        extent = logs_.extent(begin, latest)
        assert extent.end == latest and extent.shrunk is None
        shipped = b"".join(logs_.wlog(extent))
        packs = summary(WlogReader(io.BytesIO(shipped)))
        assert packs == summary(logs_.reader.packs(begin, latest))


@pytest.mark.parametrize("pbs", [512, 4096])
def test_a_shrunk_last_pack_ships_cut(tmp_path, pbs):
    """A pack whose second IO is corrupt is cut after its first one, and valid logs end there."""
    ldev, ddev = tmp_path / "ldev", tmp_path / "ddev"
    for path, size in ((ldev, 20 * MiB), (ddev, 4 * MiB)):
        path.write_bytes(b"")
        os.truncate(path, size)
    format_ldev(str(ldev), str(ddev), "unit", pbs)
    fd = os.open(ldev, os.O_RDWR)
    try:
        sup = read_super(fd)
        rng = random.Random(pbs)
        builder = LogpackBuilder(pbs, sup.log_checksum_salt, 0, sup.ring_buffer_size)
        lsid = 0
        for index in range(12):
            for _ in range(3):
                builder.add_normal(rng.randrange(4096) * 8, rng.randbytes(4096))
            header, data = builder.finish()
            block = bytearray(header.total_io_size * pbs)
            for rec, piece in zip(header.records, data, strict=True):
                start = (rec.lsid_local - 1) * pbs
                block[start:start + len(piece)] = piece
            if index == 7:
                second = header.records[1]
                block[(second.lsid_local - 1) * pbs] ^= 0xFF
                cut = header.logpack_lsid
            os.pwrite(fd, header.serialize(pbs, sup.log_checksum_salt) + bytes(block), sup.offset_pb(lsid) * pbs)
            lsid = header.next_lsid
    finally:
        os.close(fd)
    with RingLogs(str(ldev)) as logs_:
        extent = logs_.extent(0, lsid)
        assert extent.shrunk is not None and extent.shrunk.header.logpack_lsid == cut
        assert len(extent.shrunk.header.records) == 1 and extent.end < lsid
        shipped = summary(WlogReader(io.BytesIO(b"".join(logs_.wlog(extent)))))
        assert shipped == summary(reference_packs(logs_.reader, 0, lsid)) and len(shipped) == 8
        with pytest.raises(OperationError, match="valid logs end"):
            b"".join(logs_.stream(0, lsid))
        streamed = b"".join(logs_.stream(0, extent.end))
        assert summary(WlogReader(io.BytesIO(streamed))) == shipped


def test_a_ring_range_streams_as_its_wlog(ring):
    ldev, begin, latest = ring
    with RingLogs(str(ldev)) as logs_:
        assert b"".join(logs_.stream(begin, latest)) == b"".join(logs_.wlog(logs_.extent(begin, latest)))


def wlog_bytes(seed: int, pbs: int) -> bytes:
    out = io.BytesIO()
    generate_wlog(out, GenConfig(device_lb=8192, log_pb=3000 if pbs == 512 else 600, seed=seed, pbs=pbs))
    return out.getvalue()


def read_whole(raw: bytes):
    packs = []
    try:
        for pack in WlogReader(io.BytesIO(raw)):
            packs.append((pack.header, bytes(pack.data)))
    except FormatError:
        return packs, False
    return packs, True


def read_in_pieces(raw: bytes, rng: random.Random):
    stream = WlogStream()
    packs = []
    try:
        at = 0
        while at < len(raw):
            size = rng.choice([1, 7, 512, 4096, 5000, 65536, MiB])
            packs += [(pack.header, bytes(pack.data)) for pack in stream.feed(raw[at:at + size])]
            at += size
        stream.finish()
    except FormatError:
        return packs, False
    return packs, True


@pytest.mark.parametrize("pbs", [512, 4096])
def test_wlog_stream_reads_what_the_file_reader_reads_and_refuses_what_it_refuses(pbs):
    rng = random.Random(pbs)
    for seed in range(4):
        raw = wlog_bytes(seed, pbs)
        assert read_in_pieces(raw, rng) == read_whole(raw) and read_whole(raw)[1]
        for trial in range(20):
            corrupt = bytearray(raw)
            corrupt[rng.randrange(len(corrupt))] ^= 1 << rng.randrange(8)
            if trial % 5 == 0:
                corrupt = corrupt[:rng.randrange(len(corrupt))]
            whole, pieces = read_whole(bytes(corrupt)), read_in_pieces(bytes(corrupt), rng)
            assert whole[1] == pieces[1]
            if whole[1]:
                assert whole == pieces


def test_wlog_stream_refuses_data_after_the_end_marker():
    stream = WlogStream()
    stream.feed(wlog_bytes(0, 512))
    stream.finish()
    with pytest.raises(FormatError, match="after the wlog's end marker"):
        stream.feed(b"\0" * 512)


def loads_every_image(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        for io_ in IndexedDiffReader(fd, path):
            if io_.kind == 0:
                io_.data()
    except FormatError:
        return False
    finally:
        os.close(fd)
    return True


def verifies(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        IndexedDiffReader(fd, path).verify()
    except FormatError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.mark.parametrize("window", [8 << 20, 10_000])
@pytest.mark.parametrize("compression", [Compression.LZ4, Compression.NONE, Compression.GZIP])
def test_indexed_verify_refuses_what_reading_every_image_refuses(tmp_path, monkeypatch, compression, window):
    monkeypatch.setattr(indexed_file, "_VERIFY_WINDOW", window)  # the images are read a window at a time
    rng = random.Random(int(compression))
    path = str(tmp_path / "diff.wdiff")
    for seed in range(3):
        out = io.BytesIO()
        generate_wlog(out, GenConfig(device_lb=8192, log_pb=3000, seed=seed, compressible=seed % 2 == 0))
        out.seek(0)
        with open(path, "wb") as diff:
            convert_to_indexed(log_ios(WlogReader(out)), diff, bytes(16), compression)
        assert verifies(path) and loads_every_image(path)
        with open(path, "rb") as diff:
            raw = diff.read()
        for _ in range(40):
            corrupt = bytearray(raw)
            corrupt[rng.randrange(32, len(corrupt))] ^= 1 << rng.randrange(8)
            with open(path, "wb") as diff:
                diff.write(corrupt)
            assert verifies(path) == loads_every_image(path)
