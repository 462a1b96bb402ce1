"""The storage's per-volume logic: gids for snapshots, what a transfer carries, done and queue."""

from __future__ import annotations

from walbops.agents.storage_volume import StorageVolume
from walbops.gid import MetaSnap


def target(tmp_path) -> StorageVolume:
    volume = StorageVolume(str(tmp_path), "vol0")
    volume.init_vol("dev0")
    volume.machine.force("Target")
    volume.reset(bytes(range(16)), gid=0)
    return volume


def test_explicit_snapshots_skip_gids_per_max_send(tmp_path):
    volume = target(tmp_path)
    assert volume.take_snapshot(100, max_wlog_send_pb=1000, now=10) == 1
    assert volume.take_snapshot(2600, max_wlog_send_pb=1000, now=11) == 4  # 1 + 1 + 2500 // 1000
    reloaded = StorageVolume(str(tmp_path), "vol0")
    assert [(r.lsid, r.gid, r.is_mergeable) for r in reloaded.queue] == [(100, 1, False), (2600, 4, False)]


def test_transfers_walk_the_queue_and_split_long_stretches(tmp_path):
    volume = target(tmp_path)
    volume.take_snapshot(2600, max_wlog_send_pb=1000, now=5)  # gid 3
    rec_e, limit = volume.next_transfer(1000, permanent_lsid=3000)
    assert (rec_e.gid, limit) == (3, 1000)
    diff = volume.transfer_diff(rec_e, 1010)  # packs end a little past the limit
    assert (diff.snap_b, diff.snap_e) == (MetaSnap(0), MetaSnap(1))
    done = volume.finish_transfer(rec_e, 1010)
    assert (done.lsid, done.gid, done.is_mergeable) == (1010, 1, True)
    rec_e, limit = volume.next_transfer(1000, permanent_lsid=3000)
    assert limit == 2010
    volume.finish_transfer(rec_e, 2010)
    rec_e, limit = volume.next_transfer(1000, permanent_lsid=3000)
    assert limit == 2600
    diff = volume.transfer_diff(rec_e, 2600)
    assert (diff.snap_b, diff.snap_e, diff.is_mergeable) == (MetaSnap(2), MetaSnap(3), True)
    volume.finish_transfer(rec_e, 2600)
    assert volume.queue == [] and volume.done.gid == 3
    assert volume.next_transfer(1000, permanent_lsid=3000) is None


def test_nothing_ships_before_it_is_permanent(tmp_path):
    volume = target(tmp_path)
    volume.take_snapshot(500, 1000, now=1)
    assert volume.next_transfer(1000, permanent_lsid=400) is None


def test_implicit_snapshots(tmp_path):
    volume = target(tmp_path)
    assert volume.maybe_implicit_snapshot(0, 1000, interval=10, now=100) is None  # no new log
    gid = volume.maybe_implicit_snapshot(50, 1000, interval=10, now=100)
    assert gid == 1 and volume.queue[-1].is_mergeable
    assert volume.maybe_implicit_snapshot(60, 1000, interval=10, now=105) is None  # too soon
    assert volume.maybe_implicit_snapshot(60, 1000, interval=10, now=111) == 2
