"""The archive's per-volume logic: states, full-backup bookkeeping, WalB's diff checks, reload."""

from __future__ import annotations

import os

import pytest

from walbops.agents.archive_volume import ArchiveVolume
from walbops.agents.state import Refused
from walbops.diff.files import iter_diff, merged_ios, read_header
from walbops.diff.indexed_file import IndexedDiffWriter
from walbops.diff.io import DiffIo
from walbops.diff.sorted_file import SortedDiffWriter
from walbops.errors import FormatError, OperationError, UsageError
from walbops.gid import MetaDiff

UUID = bytes(range(16))


def no_images(vol: str) -> None:
    """This volume has no block images yet (the store is not under test here)."""


def archived(tmp_path, gid_e: int = 3) -> ArchiveVolume:
    volume = ArchiveVolume(str(tmp_path), "vol0")
    volume.init_vol()
    tx = volume.begin_full_sync()
    with tx:
        volume.finish_full_sync(tx, UUID, 2048, gid_e, 1_700_000_000)
    return volume


def diff_file(path, uuid: bytes = UUID, fill: int = 1) -> str:
    with open(path, "wb") as out:
        writer = SortedDiffWriter(out, uuid)
        writer.write(DiffIo.normal(8, bytes([fill]) * 4096))
        writer.close()
    return str(path)


def test_init_full_sync_and_reload(tmp_path):
    volume = archived(tmp_path)
    assert volume.state == "Archived" and str(volume.base).startswith("<|0,3|>")
    assert volume.archive_uuid != bytes(16)
    again = ArchiveVolume(str(tmp_path), "vol0")
    assert (again.state, str(again.base), again.uuid, again.size_lb) == ("Archived", str(volume.base), UUID, 2048)


def test_failed_full_sync_rolls_back_to_sync_ready(tmp_path):
    volume = ArchiveVolume(str(tmp_path), "vol0")
    volume.init_vol()
    with pytest.raises(ConnectionError):
        with volume.begin_full_sync():
            raise ConnectionError("cut")
    assert volume.state == "SyncReady"
    assert ArchiveVolume(str(tmp_path), "vol0").state == "SyncReady"


def test_full_sync_on_an_archived_volume_is_refused(tmp_path):
    volume = archived(tmp_path)
    with pytest.raises(Refused, match="SyncReady"):
        volume.begin_full_sync()


def test_wdiff_checks_give_walb_reasons(tmp_path):
    volume = archived(tmp_path, gid_e=3)
    volume.check_diff(MetaDiff(0, 4), UUID, 2048)  # applicable to |0,3|
    cases = [
        (MetaDiff(0, 4), bytes(16), 2048, "different-uuid"),
        (MetaDiff(0, 4), UUID, 4096, "smaller-lv-size"),
        (MetaDiff(5, 6), UUID, 2048, "too-new-diff"),
    ]
    for diff, uuid, size, reason in cases:
        with pytest.raises(Refused) as caught:
            volume.check_diff(diff, uuid, size)
        assert caught.value.reason == reason
    tmp = volume.receiving_path()
    diff_file(tmp)
    volume.add_received_diff(tmp, MetaDiff(0, 4, timestamp=1_700_000_100))
    with pytest.raises(Refused) as caught:
        volume.check_diff(MetaDiff(0, 4), UUID, 2048)
    assert caught.value.reason == "too-old-diff"
    volume.stop()
    with pytest.raises(Refused) as caught:
        volume.check_diff(MetaDiff(4, 5), UUID, 2048)
    assert caught.value.reason == "stopped"


def test_received_diffs_get_walb_names_and_make_snapshots_restorable(tmp_path):
    volume = archived(tmp_path, gid_e=0)
    for gid in range(3):
        tmp = volume.receiving_path()
        diff_file(tmp, fill=gid + 1)
        volume.add_received_diff(tmp, MetaDiff(gid, gid + 1, is_mergeable=gid == 1,
                                               timestamp=1_700_000_000 + gid))
    names = sorted(name for name in os.listdir(volume.directory) if name.endswith(".wdiff"))
    assert names[0] == "20231114221320----0-1.wdiff"
    assert [r.gid for r in volume.restorable()] == [0, 2, 3]
    assert [r.gid for r in volume.restorable(include_implicit=True)] == [0, 1, 2, 3]
    assert len(volume.restore_paths(3)) == 3
    with pytest.raises(OperationError, match="not restorable"):
        volume.restore_paths(7)
    reloaded = ArchiveVolume(str(tmp_path), "vol0")
    assert [r.gid for r in reloaded.restorable()] == [0, 2, 3]


def test_corrupt_received_diff_is_refused_and_removed(tmp_path):
    volume = archived(tmp_path)
    tmp = volume.receiving_path()
    diff_file(tmp)
    with open(tmp, "r+b") as stream:
        stream.seek(40)
        byte = stream.read(1)
        stream.seek(40)
        stream.write(bytes([byte[0] ^ 1]))
    with pytest.raises(FormatError):
        volume.add_received_diff(tmp, MetaDiff(0, 4))
    assert not os.path.exists(tmp) and len(volume.diffs.chain) == 0


def test_leftover_partial_transfer_is_removed_at_load(tmp_path):
    volume = archived(tmp_path)
    with open(volume.receiving_path(), "wb") as stream:
        stream.write(b"partial")
    ArchiveVolume(str(tmp_path), "vol0")
    assert not os.path.exists(volume.receiving_path())


def test_clear_and_reset(tmp_path):
    volume = archived(tmp_path)
    with pytest.raises(OperationError, match="bad state Archived"):
        volume.clear_vol(no_images)
    volume.stop()
    volume.reset_vol(no_images)
    assert volume.state == "SyncReady" and volume.uuid == bytes(16)
    volume.clear_vol(no_images)
    assert volume.state == "Clear" and not os.path.exists(volume.directory)


def test_volume_ids_follow_walb(tmp_path):
    with pytest.raises(UsageError):
        ArchiveVolume(str(tmp_path), "bad/vol")


def indexed_diff_file(path, uuid: bytes = UUID) -> str:
    with open(path, "wb") as out:
        writer = IndexedDiffWriter(out, uuid)
        writer.add(DiffIo.normal(8, os.urandom(4096)))
        writer.add(DiffIo.normal(64, bytes(4096)))
        writer.close()
    return str(path)


def test_an_indexed_diff_is_kept_as_it_came_and_a_corrupt_one_refused(tmp_path):
    volume = archived(tmp_path)
    tmp = volume.receiving_path()
    with open(indexed_diff_file(tmp), "rb") as stream:
        raw = stream.read()
    stored = volume.add_received_diff(tmp, MetaDiff(0, 4, timestamp=1_700_000_100))
    with open(volume.diffs.path_of(stored), "rb") as stream:
        assert stream.read() == raw
    assert [r.gid for r in volume.restorable()] == [4]
    corrupt = bytearray(raw)
    corrupt[40] ^= 1  # inside the image
    with open(tmp, "wb") as stream:
        stream.write(corrupt)
    with pytest.raises(FormatError):
        volume.add_received_diff(tmp, MetaDiff(4, 5))
    assert not os.path.exists(tmp) and len(volume.diffs.chain) == 1


def with_diffs(tmp_path, mergeable: tuple[bool, ...] = (False, False, False)) -> ArchiveVolume:
    """An archived volume with base |0| and diffs |0|-->|1|-->|2|... (flags as given, per diff)."""
    volume = archived(tmp_path, gid_e=0)
    for gid, flag in enumerate(mergeable):
        tmp = volume.receiving_path()
        diff_file(tmp, fill=gid + 1)
        volume.add_received_diff(tmp, MetaDiff(gid, gid + 1, is_mergeable=flag, timestamp=1_700_000_000 + gid))
    return volume


def test_restore_apply_and_merge_exclude_each_other_and_name_the_action(tmp_path):
    volume = with_diffs(tmp_path, (False, True, True))
    refusals = [
        ("Apply", lambda: volume.plan_merge(0)),
        ("Apply", lambda: volume.restore_paths(1)),
        ("Apply", lambda: volume.scan_paths(1)),
        ("Merge", lambda: volume.plan_apply(1)),
        ("Merge", lambda: volume.plan_snapshot_flags([1], enabled=False)),
        ("Restore", lambda: volume.plan_apply(1)),
        ("Restore", lambda: volume.plan_merge(0)),
        ("VirtualScan", lambda: volume.plan_merge(0)),
        ("SnapshotFlags", lambda: volume.plan_apply(1)),
    ]
    for running, attempt in refusals:
        with volume.actions.begin(running):
            with pytest.raises(Refused) as caught:
                attempt()
        assert caught.value.reason == "busy" and f"{running} running" in str(caught.value)
        assert "vol0" in str(caught.value)
    # Two restores (of any gids) at once are refused too, as in WalB; a scan goes beside a restore.
    with volume.actions.begin("Restore"):
        with pytest.raises(Refused, match="Restore running"):
            volume.restore_paths(2)
        assert volume.scan_paths(2)


def test_apply_plan_records_applying_then_applied_and_resumes(tmp_path):
    volume = with_diffs(tmp_path)
    plan = volume.plan_apply(2)
    assert [d.range_str() for d in plan.diffs] == ["|0|-->|1|", "|1|-->|2|"]
    assert plan.applying.to_str(False) == "<|0|-->|2|>" and plan.applied.to_str(False) == "<|2|>"
    volume.record_base(plan.applying)  # what a crash after the first write leaves
    reloaded = ArchiveVolume(str(tmp_path), "vol0")
    resume = reloaded.plan_resume_apply()
    assert resume is not None and resume.diffs == plan.diffs and resume.applied == plan.applied
    assert [r.gid for r in reloaded.restorable(include_implicit=True)] == [2, 3]  # 0 and 1 are gone already
    reloaded.record_base(resume.applied)
    assert [d.range_str() for d in reloaded.applied_diffs()] == ["|0|-->|1|", "|1|-->|2|"]
    assert [d.range_str() for d in reloaded.garbage()] == ["|0|-->|1|", "|1|-->|2|"]
    assert reloaded.plan_apply(2) is None  # nothing left to do
    with pytest.raises(OperationError, match="not restorable"):
        reloaded.plan_apply(1)


def test_merge_plan_follows_walb(tmp_path):
    volume = with_diffs(tmp_path, (False, True, False))  # snapshot 1 implicit, 2 explicit
    plan = volume.plan_merge(0)
    assert [d.range_str() for d in plan.inputs] == ["|0|-->|1|", "|1|-->|2|"]
    assert plan.merged.range_str() == "|0|-->|2|" and not plan.merged.is_mergeable
    assert plan.merged.timestamp == 1_700_000_001
    stored, path = volume.write_merged(plan)
    assert os.path.basename(path) == "20231114221321----0-2.wdiff" and stored.data_size == os.path.getsize(path)
    volume.register_diff(stored, path)
    assert [d.range_str() for d in volume.garbage()] == ["|0|-->|1|", "|1|-->|2|"]
    with pytest.raises(OperationError, match="nothing to merge"):
        volume.plan_merge(2)  # the last diff alone
    with pytest.raises(OperationError, match="no diff of the chain starts at snapshot 7"):
        volume.plan_merge(7)
    with pytest.raises(UsageError, match="GIDE"):
        volume.plan_merge(2, gid_e=1)


@pytest.mark.parametrize("old", [(0,), (0, 1)])
def test_merge_across_a_uuid_change_takes_the_newest_inputs_uuid(tmp_path, old):
    """Diffs from before a hash backup carry the device's old uuid (found by scripts/chaos: merging
    them failed for good). WalB's DiffMerger merges them and gives the output the newest input's
    uuid; the merged data is the inputs' laid over each other."""
    volume = with_diffs(tmp_path, (False, True))
    plan = volume.plan_merge(0)
    previous = bytes(range(16))
    for index in old:
        diff_file(plan.paths[index], uuid=previous)
    expected = {(io.address, io.blocks, bytes(io.data())) for io in merged_ios(list(plan.paths))}
    stored, path = volume.write_merged(plan)
    newest = previous if len(old) == 2 else volume.uuid
    assert read_header(path).uuid == newest
    assert {(io.address, io.blocks, bytes(io.data())) for io in iter_diff(path)} == expected


def test_merge_of_a_corrupt_input_leaves_nothing(tmp_path):
    volume = with_diffs(tmp_path, (False, True))
    plan = volume.plan_merge(0)
    with open(plan.paths[1], "r+b") as stream:
        stream.seek(-600, os.SEEK_END)
        stream.write(b"\xff" * 64)
    with pytest.raises(FormatError):
        volume.write_merged(plan)
    assert not [name for name in os.listdir(volume.directory) if name.endswith(".merging")]


def test_snapshot_flags_plan_renames_and_refuses_what_cannot_change(tmp_path):
    volume = with_diffs(tmp_path)
    changes = volume.plan_snapshot_flags([1, 2, 1], enabled=False)
    assert [(old.range_str(), new.is_mergeable) for old, new in changes] == [("|1|-->|2|", True), ("|2|-->|3|", True)]
    volume.rename_diff_files(changes)
    volume.commit_snapshot_flags(changes)
    assert [r.gid for r in volume.restorable()] == [0, 3]
    assert [r.gid for r in ArchiveVolume(str(tmp_path), "vol0").restorable()] == [0, 3]
    assert volume.plan_snapshot_flags([1], enabled=False) == []  # already implicit
    with pytest.raises(OperationError, match="latest snapshot"):
        volume.plan_snapshot_flags([3], enabled=False)
    with pytest.raises(OperationError, match="no diff of the chain starts there"):
        volume.plan_snapshot_flags([9], enabled=True)
