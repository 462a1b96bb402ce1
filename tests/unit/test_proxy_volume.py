"""The proxy's per-volume logic: archive-info, storing received logs for every archive, batches."""

from __future__ import annotations

import io
import os

import pytest

from walbops.agents.proxy_volume import ArchiveInfo, ProxyVolume
from walbops.diff.gen import GenConfig, generate_wlog
from walbops.diff.logs import WlogReader
from walbops.errors import BadField, ChecksumMismatch, OperationError, TruncatedRecord, UsageError
from walbops.gid import MetaDiff


def started(tmp_path) -> ProxyVolume:
    volume = ProxyVolume(str(tmp_path), "vol0")
    volume.add_archive(ArchiveInfo("a0", "127.0.0.1", 10200))
    volume.add_archive(ArchiveInfo("a1", "127.0.0.1", 10201))
    volume.start()
    return volume


DEVICE_UUID = bytes(range(16))


def wlog(path, seed: int = 0, uuid: bytes = DEVICE_UUID) -> str:
    """A random wlog of the same device (uuid) unless told otherwise."""
    with open(path, "wb") as out:
        generate_wlog(out, GenConfig(device_lb=4096, log_pb=2000, seed=seed, uuid=uuid))
    return str(path)


def test_archive_info_lifecycle(tmp_path):
    volume = ProxyVolume(str(tmp_path), "vol0")
    assert volume.state == "Clear"
    volume.add_archive(ArchiveInfo("a0", "h", 1))
    with pytest.raises(OperationError, match="already"):
        volume.add_archive(ArchiveInfo("a0", "h", 1))
    volume.add_archive(ArchiveInfo("a0", "h2", 2, "zstd:3:1", 5.0), update=True)
    assert ProxyVolume(str(tmp_path), "vol0").archives["a0"].host == "h2"
    volume.delete_archive("a0")
    assert volume.state == "Clear" and not os.path.exists(volume.directory)
    with pytest.raises(UsageError):
        ArchiveInfo.from_dict({"name": "bad name", "host": "h", "port": 1})


def test_received_logs_are_queued_for_every_archive(tmp_path):
    volume = started(tmp_path)
    for gid in range(3):
        volume.store_wlog(wlog(tmp_path / f"{gid}.wlog", gid), MetaDiff(gid, gid + 1, is_mergeable=gid > 0,
                                                                        timestamp=100 + gid), 4096)
    for archive in ("a0", "a1"):
        assert [str(d.snap_e) for d in volume.pending(archive)] == ["|1|", "|2|", "|3|"]
    batch = volume.next_batch("a0", max_bytes=1 << 30, max_count=10)
    assert len(batch) == 3, "the second and third diffs merge into the first"
    assert len(volume.next_batch("a0", max_bytes=1 << 30, max_count=2)) == 2
    volume.sent("a0", batch)
    assert volume.pending("a0") == [] and len(volume.pending("a1")) == 3
    assert os.stat(volume.paths("a1", volume.pending("a1"))[0]).st_nlink == 1


def test_a_batch_never_merges_diffs_of_two_device_uuids(tmp_path):
    """After a reset-wal (full or hash backup) the logs are another lineage: WalB merges only diffs
    of one uuid, or an old diff's blocks would ride into the archive under the new uuid."""
    volume = started(tmp_path)
    for gid, uuid in ((0, DEVICE_UUID), (1, DEVICE_UUID), (2, bytes(16))):
        volume.store_wlog(wlog(tmp_path / f"{gid}.wlog", gid, uuid), MetaDiff(gid, gid + 1, is_mergeable=gid > 0,
                                                                              timestamp=100 + gid), 4096)
    batch = volume.next_batch("a0", max_bytes=1 << 30, max_count=10)
    assert [str(d.snap_e) for d in batch] == ["|1|", "|2|"]
    volume.sent("a0", batch)
    assert [str(d.snap_e) for d in volume.next_batch("a0", max_bytes=1 << 30, max_count=10)] == ["|3|"]


def test_corrupt_wlog_is_not_stored(tmp_path):
    volume = started(tmp_path)
    path = wlog(tmp_path / "bad.wlog")
    with open(path, "r+b") as stream:
        stream.seek(4096 + 512 + 7)
        stream.write(b"\xff")
    with pytest.raises(ChecksumMismatch):
        volume.store_wlog(path, MetaDiff(0, 1), 4096)
    assert volume.pending("a0") == []


def test_a_send_cut_short_leaves_nothing_after_a_restart(tmp_path):
    volume = started(tmp_path)
    leftover = os.path.join(volume.sendto_dir("a0"), ".sending-12345")
    with open(leftover, "wb") as stream:
        stream.write(b"half a merged diff")
    ProxyVolume(str(tmp_path), "vol0")
    assert not os.path.exists(leftover)


def read(path) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def test_a_wlog_received_in_pieces_is_stored_as_the_file_would_be(tmp_path):
    volume = started(tmp_path)
    path = wlog(tmp_path / "0.wlog")
    raw = read(path)
    stored = volume.store_wlog(path, MetaDiff(0, 1, timestamp=100), 4096)
    whole = read(volume.paths("a0", [stored])[0])
    volume.sent("a0", [stored])
    volume.sent("a1", [stored])
    header = WlogReader(io.BytesIO(raw)).header
    receiver = volume.wlog_receiver((header.uuid, header.physical_bs, header.log_checksum_salt))
    for at in range(0, len(raw), 3000):
        receiver.feed(raw[at:at + 3000])
    again = receiver.commit(MetaDiff(0, 1, timestamp=100), 4096)
    receiver.discard()
    assert read(volume.paths("a0", [again])[0]) == whole
    assert os.listdir(volume.received_dir) == []


def test_a_wlog_whose_header_disagrees_with_the_request_is_refused(tmp_path):
    volume = started(tmp_path)
    raw = read(wlog(tmp_path / "0.wlog"))
    header = WlogReader(io.BytesIO(raw)).header
    receiver = volume.wlog_receiver((header.uuid, header.physical_bs, header.log_checksum_salt ^ 1))
    with pytest.raises(BadField, match="disagrees"):
        receiver.feed(raw)
    receiver.discard()
    assert os.listdir(volume.received_dir) == [] and volume.pending("a0") == []


def test_a_wlog_cut_short_is_not_stored(tmp_path):
    volume = started(tmp_path)
    raw = read(wlog(tmp_path / "0.wlog"))
    receiver = volume.wlog_receiver()
    receiver.feed(raw[:-512])
    with pytest.raises(TruncatedRecord):
        receiver.commit(MetaDiff(0, 1), 4096)
    receiver.discard()
    assert os.listdir(volume.received_dir) == [] and volume.pending("a0") == []
