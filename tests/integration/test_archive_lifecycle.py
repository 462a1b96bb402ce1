"""The archive's lifecycle on a real agent: apply, merge, snapshot flags, gc, bhash, virt-full-scan.

Every check ends as WalB's scenarios do: a restore of each gid that should be restorable has
the sha1 the volume had at that gid (ArchiveHistory's model, which shares no code with the
archive), and the gids that should be gone are.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import mmh3
import pytest
from archive_history import BASE_TIME, LB, UUID, ArchiveHistory, MiB

from walbops.agents.transfers import send_wdiff
from walbops.controller import call
from walbops.diff.engine import convert_to_sorted
from walbops.errors import RemoteError
from walbops.gid import MetaDiff
from walbops.net.transport import open_connection

HOUR = 3600


@pytest.fixture
def history(tmp_path):
    archive = ArchiveHistory(tmp_path / "history")
    archive.start()
    try:
        yield archive
    finally:
        archive.close()


def with_snapshots(archive: ArchiveHistory, kinds: str) -> list[int]:
    """A full backup, then one snapshot per letter: E explicit, i implicit."""
    archive.full_backup()
    return [archive.add_snapshot(BASE_TIME + (n + 1) * HOUR, explicit=kind == "E") for n, kind in enumerate(kinds)]


def assert_restores(archive: ArchiveHistory, gids: list[int]) -> None:
    for gid in gids:
        assert archive.restored_sha1(gid) == archive.expected[gid], f"gid {gid} restores wrong"


def diff_files(archive: ArchiveHistory) -> list[str]:
    return sorted(name for name in os.listdir(archive.base_dir / archive.vol) if name.endswith(".wdiff"))


def wait_for_no_action(archive: ArchiveHistory, action: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while archive.ctl.get_num_action("a0", archive.vol, action):
        assert time.monotonic() < deadline, f"{action} still running after {timeout} s:\n{archive.log()}"
        time.sleep(0.1)


def walbops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_apply_moves_the_base_and_drops_older_snapshots(history):
    """WalB's n5 on the archive: apply at a gid, the same gid and every later one restore as before,
    and the earlier gids are no longer restorable."""
    gids = with_snapshots(history, "EEEEEE")
    before = history.ctl.get_total_diff_size("a0", history.vol)
    base = history.ctl.apply("a0", history.vol, gids[2], timeout=120)
    assert base.to_str(False) == f"<|{gids[2]}|>"
    assert history.restorable() == gids[2:]
    assert history.ctl.get_num_diff("a0", history.vol) == 3
    assert history.ctl.get_total_diff_size("a0", history.vol) < before
    assert_restores(history, gids[2:])
    with pytest.raises(RemoteError, match="not restorable"):
        history.ctl.run("a0", "restore", vol=history.vol, gid=gids[1])
    outcome = history.ctl.get("a0", "action-result", history.vol, "Apply")
    assert outcome["ok"] and outcome["diffs"] == 3 and outcome["bytes_freed"] > 0
    # Applying where the base is already changes nothing; a gid that is not a snapshot is refused.
    assert history.ctl.apply("a0", history.vol, gids[2]).to_str(False) == f"<|{gids[2]}|>"
    with pytest.raises(RemoteError, match="not restorable"):
        history.ctl.apply("a0", history.vol, 999)


def test_merge_removes_implicit_snapshots_inside_and_keeps_the_ends(history):
    """WalB's n6 on the archive: merge a range, restore inside (its ends) and at the end."""
    gids = with_snapshots(history, "EiiEiE")  # snapshots 2, 3 and 5 implicit
    assert history.restorable() == [0, *gids]
    assert history.restorable(include_implicit=False) == [0, gids[0], gids[3], gids[5]]
    merged = history.ctl.merge("a0", history.vol, gids[0], gids[3])
    assert merged == f"|{gids[0]}|-->|{gids[3]}|"
    assert history.restorable() == [0, gids[0], gids[3], gids[4], gids[5]]
    assert len(diff_files(history)) == 4
    assert_restores(history, [gids[0], gids[3], gids[5]])
    # The next snapshot after gids[3] is implicit: one more merge makes gids[4] vanish as well.
    history.ctl.merge("a0", history.vol, gids[3])
    assert history.restorable() == [0, gids[0], gids[3], gids[5]]
    assert_restores(history, [gids[3], gids[5]])
    with pytest.raises(RemoteError, match="nothing to merge"):
        history.ctl.merge("a0", history.vol, gids[3])


def test_disable_and_enable_snapshots(history):
    """WalB's n13 on the archive: five snapshots, four disabled leave the base and the last
    restorable once merged; enabled again, each is explicit again."""
    gids = with_snapshots(history, "EEEEE")
    history.ctl.disable_snapshot("a0", history.vol, gids[:4])
    assert history.restorable(include_implicit=False) == [0, gids[4]]
    assert history.restorable() == [0, *gids]  # implicit snapshots stay restorable until merged
    history.ctl.enable_snapshot("a0", history.vol, gids[:4])
    assert history.restorable(include_implicit=False) == [0, *gids]
    history.ctl.disable_snapshot("a0", history.vol, gids[1:4])
    history.ctl.merge("a0", history.vol, gids[0])
    assert history.restorable() == [0, gids[0], gids[4]]
    assert_restores(history, [gids[0], gids[4]])
    with pytest.raises(RemoteError, match="latest snapshot"):
        history.ctl.disable_snapshot("a0", history.vol, [gids[4]])


def test_get_targets_of_the_lifecycle(history):
    gids = with_snapshots(history, "EiE")
    ctl, vol = history.ctl, history.vol
    assert [str(d.range_str()) for d in ctl.get_diff_list("a0", vol, gids[0])] == \
        [f"|{gids[0]}|-->|{gids[1]}|", f"|{gids[1]}|-->|{gids[2]}|"]
    assert ctl.get_num_diff("a0", vol, 0, gids[1]) == 2
    assert ctl.get_total_diff_size("a0", vol) == sum(d.data_size for d in ctl.get_diff_list("a0", vol))
    assert [d.snap_e.gid_b for d in ctl.get_applicable_diff_list("a0", vol, gids[1])] == gids[:2]
    assert ctl.exists_diff("a0", vol, gids[0], gids[1]) and not ctl.exists_diff("a0", vol, gids[0], gids[2])
    assert str(ctl.get_meta_snap("a0", vol, gids[1])) == f"|{gids[1]}|"
    assert str(ctl.get_meta_state("a0", vol, True, gids[1])) .startswith(f"<|0|-->|{gids[1]}|>")
    assert str(ctl.get_meta_state("a0", vol, False)).startswith(f"<|{gids[2]}|>")
    assert ctl.get("a0", "base-all") == [{"name": vol, "metastate": str(ctl.get_base("a0", vol))}]
    assert ctl.get_all_actions("a0")[vol]["Apply"] == {"running": 0, "last": "---"}
    assert ctl.get("a0", "action-result", vol, "Merge") is None
    for target, args in [("diff", ["x"]), ("diff", [5, 2]), ("exists-diff", [1, 2]), ("meta-state", [2]),
                         ("num-action", "Nap"), ("applicable-diff", [1, 2])]:
        with pytest.raises(RemoteError) as refused:
            ctl.get("a0", target, vol, args)
        assert refused.value.reason == "bad-args", (target, args)


def reference_bhash(image: bytes, bulk: int) -> str:
    """WalB's stream hash, written out here: XOR of MurmurHash3_x64_128(bulk i, seed i)."""
    value = 0
    for index, at in enumerate(range(0, len(image), bulk)):
        value ^= int.from_bytes(mmh3.mmh3_x64_128_digest(image[at:at + bulk], index), "little")
    return value.to_bytes(16, "little").hex()


def test_bhash_and_virt_full_scan_read_the_image_at_a_gid(history, tmp_path):
    gids = with_snapshots(history, "EEE")
    image = bytes(history.image)
    assert history.ctl.get_block_hash("a0", history.vol, gids[2]) == reference_bhash(image, 256 << 10)
    assert history.ctl.get_block_hash("a0", history.vol, gids[2], bulk_size=64 << 10, scan_size=MiB) == \
        reference_bhash(image[:MiB], 64 << 10)
    out = tmp_path / "gid1.img"
    key = str(history.key_file)
    where = ["ctl", "-a", "127.0.0.1", "-p", str(history.port), "--key", key, "--json"]
    result = walbops(*where, "virt-full-scan", str(out), history.vol, str(gids[1]))
    assert result.returncode == 0, result.stderr
    assert hashlib.sha1(out.read_bytes()).hexdigest() == history.expected[gids[1]]
    # The order (VOL DEVICE GID) works too, and stdout takes the image as it is.
    result = subprocess.run([sys.executable, "-m", "walbops.cli.main", *where[:-1], "virt-full-scan", history.vol,
                             "stdout", str(gids[2])], capture_output=True, timeout=120)
    assert result.returncode == 0 and hashlib.sha1(result.stdout).hexdigest() == history.expected[gids[2]]
    # The device side of bhash: the same value from the image file.
    result = walbops("wdev", "bhash", str(out), "--json")
    assert result.returncode == 0 and f'"hash": "{reference_bhash(out.read_bytes(), 256 << 10)}"' in result.stdout
    # One changed block changes the hash.
    with open(out, "r+b") as stream:
        stream.seek(4096)
        stream.write(b"\x01")
    assert reference_bhash(out.read_bytes(), 256 << 10) != history.ctl.get_block_hash("a0", history.vol, gids[1])


@pytest.mark.parametrize("action", ["apply", "restore"])
def test_ctl_wait_reports_a_failed_action_with_the_archives_reason(history, action):
    """A corrupt diff is refused before anything is written; --wait exits non-zero with the reason
    (issue 13's probe: `ctl restore --wait` used to wait forever)."""
    gids = with_snapshots(history, "EE")
    first = history.base_dir / history.vol / diff_files(history)[0]
    data = bytearray(first.read_bytes())
    data[-100] ^= 0xFF  # inside the last record's data
    first.write_bytes(bytes(data))
    result = walbops("ctl", "-a", "127.0.0.1", "-p", str(history.port), "--key", str(history.key_file), "--wait",
                     action, history.vol, str(gids[1]))
    assert result.returncode != 0 and f"{action} failed on the archive" in result.stderr, result.stderr
    assert "checksum" in result.stderr
    assert str(history.ctl.get_base("a0", history.vol)) .startswith("<|0|>")  # never marked applying
    assert history.restorable() == [0, *gids]
    assert history.ctl.get("a0", "restored", history.vol) == []  # nothing half restored is left


# Where an apply may die: each crash point, and IOs early, in the middle and late in the base write.
APPLY_CRASHES = ["apply:verified", "apply:state-saved", "apply:io#1", "apply:io#7", "apply:io#40", "apply:io#80",
                 "apply:written", "apply:base-saved", "diff:removed#1", "diff:removed#3"]


def test_an_apply_killed_anywhere_finishes_after_a_restart(tmp_path):
    """SIGKILL inside an apply at ten points, base write included: after a restart the agent
    finishes the apply by itself and every restorable gid restores to its sha1."""
    archive = ArchiveHistory(tmp_path / "crashes", seed=5)
    archive.start()
    try:
        archive.full_backup()
        gids = [archive.add_snapshot(BASE_TIME + n * HOUR, writes=24) for n in range(1, 9)]
        archive.stop()
        pristine = tmp_path / "pristine"
        subprocess.run(["cp", "-a", str(archive.base_dir), str(pristine)], check=True)
        for point in APPLY_CRASHES:
            subprocess.run(["rm", "-rf", str(archive.base_dir)], check=True)
            subprocess.run(["cp", "-a", str(pristine), str(archive.base_dir)], check=True)
            archive.start(env={"WALBOPS_CRASH_AT": point})
            target = gids[4]
            archive.ctl.run("a0", "apply", vol=archive.vol, gid=target)
            assert archive.wait_exit() == -signal.SIGKILL, f"{point}: the agent did not die there"
            archive.start()
            wait_for_no_action(archive, "Apply")
            base = archive.ctl.get_base("a0", archive.vol)
            assert not base.is_applying, f"{point}: base still {base}"
            restorable = archive.restorable()
            assert restorable[-1] == gids[-1] and set(gids[4:]) <= set(restorable), f"{point}: {restorable}"
            # Diffs the base holds are gone (gc at start), the rest restore right.
            assert archive.ctl.get_num_diff("a0", archive.vol) == len(restorable) - 1, point
            assert_restores(archive, [restorable[0], target, gids[-1]])
            archive.stop()
    finally:
        archive.close()


def test_a_merge_killed_anywhere_leaves_the_volume_whole(tmp_path):
    archive = ArchiveHistory(tmp_path / "merges", seed=6)
    archive.start()
    try:
        archive.full_backup()
        gids = [archive.add_snapshot(BASE_TIME + n * HOUR, explicit=n % 3 == 0) for n in range(1, 8)]
        archive.stop()
        pristine = tmp_path / "pristine"
        subprocess.run(["cp", "-a", str(archive.base_dir), str(pristine)], check=True)
        for point in ["merge:written", "merge:renamed", "diff:removed#1", "diff:removed#2"]:
            subprocess.run(["rm", "-rf", str(archive.base_dir)], check=True)
            subprocess.run(["cp", "-a", str(pristine), str(archive.base_dir)], check=True)
            archive.start(env={"WALBOPS_CRASH_AT": point})
            before = archive.restorable()
            archive.ctl.run("a0", "merge", vol=archive.vol, gid_b=gids[2])
            assert archive.wait_exit() == -signal.SIGKILL, point
            archive.start()
            after = archive.restorable()
            # Either the merge happened (its implicit snapshot gone) or it did not; nothing else.
            assert after in (before, [gid for gid in before if gid != gids[3] and gid != gids[4]]), (point, after)
            assert_restores(archive, [gids[2], gids[5], gids[-1]])
            archive.stop()
    finally:
        archive.close()


def test_lifecycle_refusals_name_what_runs(history):
    """Only state checks here; the exclusion table itself is tested on ArchiveVolume."""
    gids = with_snapshots(history, "EE")
    history.ctl.run("a0", "stop", vol=history.vol)
    for command, args in [("apply", {"gid": gids[1]}), ("merge", {"gid_b": gids[0]}),
                          ("disable-snapshot", {"gids": [gids[0]]}), ("bhash", {"gid": gids[0]})]:
        with pytest.raises(RemoteError, match="bad state Stopped") as refused:
            history.ctl.run("a0", command, vol=history.vol, **args)
        assert refused.value.reason == "bad-state"


def test_stop_waits_for_a_diff_being_received(history):
    """WalB's stop waits for a transfer being received (WdiffRecv, a moment of Archived) to end: it
    refused one before, so a proxy's diff that came just before an operator's stop failed the
    stop (scenarios/test_replication.py e6 under load)."""
    history.full_backup()
    payload = io.BytesIO()
    convert_to_sorted(iter(history._write_random(8)), payload, UUID)
    data = payload.getvalue()
    gid = history.latest + 1
    diff = MetaDiff(history.latest, gid, timestamp=BASE_TIME + 60)
    archive = history.ctl.layout.resolve("a0")

    async def stop_during_a_transfer() -> tuple[bool, object]:
        release = asyncio.Event()

        async def chunks() -> AsyncIterator[bytes]:
            yield data[:len(data) // 2]
            await release.wait()
            yield data[len(data) // 2:]

        async with await open_connection("127.0.0.1", history.port, history.key, "p0", "proxy") as channel:
            sending = asyncio.create_task(send_wdiff(channel, history.vol, UUID, history.size // LB, diff, chunks()))
            while await call(archive, history.ctl.key, "get", {"target": "state", "vol": history.vol}) != "WdiffRecv":
                await asyncio.sleep(0.02)
            stopping = asyncio.create_task(call(archive, history.ctl.key, "stop", {"vol": history.vol}))
            await asyncio.sleep(1.0)
            waited = not stopping.done()
            release.set()
            await sending
            return waited, await stopping

    waited, stopped = asyncio.run(stop_during_a_transfer())
    assert waited, "stop did not wait for the diff being received"
    assert stopped == {"state": "Stopped"}
    history.ctl.run("a0", "start", vol=history.vol)
    assert gid in history.ctl.get_restorable("a0", history.vol, include_implicit=True)


def test_the_hash_is_documented_with_an_example():
    """docs/formats.md states bhash with a worked example that this implementation reproduces."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text()
    assert "### 9.4 bhash" in text
    assert reference_bhash(bytes(1024), 512) in text


def expected_kept(times: dict[int, int], last: int, within: int, daily: int, weekly: int, monthly: int,
                  gids: set[int]) -> set[int]:
    """The policy worked out the plain way: group by period, take the newest of the newest periods."""
    newest_first = sorted(times, key=lambda gid: (times[gid], gid), reverse=True)
    kept = set(newest_first[:max(last, 1)]) | gids
    kept |= {gid for gid in times if times[gid] >= times[newest_first[0]] - within}
    for count, period in ((daily, lambda d: d.date()), (weekly, lambda d: d.isocalendar()[:2]),
                          (monthly, lambda d: (d.year, d.month))):
        groups: dict[object, list[int]] = {}
        for gid in times:
            groups.setdefault(period(datetime.fromtimestamp(times[gid], UTC)), []).append(gid)
        newest_groups = sorted(groups.values(), key=lambda members: max(times[g] for g in members), reverse=True)
        kept |= {max(members, key=lambda g: (times[g], g)) for members in newest_groups[:count]}
    return kept


def test_retention_keeps_exactly_what_the_policy_says_and_frees_the_rest(tmp_path):
    """200 snapshots, explicit and implicit, over three simulated months; a borg-style policy leaves
    exactly its snapshots restorable, each restoring right, and the disk use drops by what it says."""
    archive = ArchiveHistory(tmp_path / "retention", seed=200)
    archive.start()
    try:
        archive.full_backup()
        rng = archive.rng
        when = BASE_TIME
        for _ in range(200):
            when += rng.randint(2 * HOUR, 20 * HOUR)
            archive.add_snapshot(when, explicit=rng.random() < 0.6, writes=4)
        times = {gid: archive.timestamps[gid] for gid in archive.restorable()}
        assert len(times) == 201  # the base and every snapshot, explicit or implicit
        old = sorted(times)[10]
        policy = ["--keep-last", "5", "--keep-within", "3d", "--keep-daily", "14", "--keep-weekly", "6",
                  "--keep-monthly", "4", "--keep-gid", str(old)]
        expected = expected_kept(times, 5, 3 * 86400, 14, 6, 4, {old})
        where = ["--layout", str(archive.layout_path), "--server", "a0"]

        dry = walbops("retention", *where, *policy, "--dry-run", "--json", archive.vol)
        assert dry.returncode == 0, dry.stderr
        planned = json.loads(dry.stdout)["volumes"][0]
        assert {entry["gid"] for entry in planned["kept"]} == expected
        assert set(planned["removed"]) == set(times) - expected
        assert archive.restorable() == sorted(times)  # a dry run changes nothing

        before = archive.disk_use()
        run = walbops("retention", *where, *policy, "--json", archive.vol)
        assert run.returncode == 0, run.stderr
        outcome = json.loads(run.stdout)
        assert outcome["changed"] and outcome["volumes"][0]["removed"] == planned["removed"]
        assert archive.restorable() == sorted(expected)
        freed = outcome["bytes_freed"]
        measured = before - archive.disk_use()
        files = 201 + len(expected)
        assert freed > 0 and abs(measured - freed) <= 4096 * files, (measured, freed)
        assert_restores(archive, sorted(expected))

        again = walbops("retention", *where, *policy, "--json", archive.vol)
        assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
        assert archive.restorable() == sorted(expected)
    finally:
        archive.close()


def test_the_worker_applies_by_age_merges_and_prunes(tmp_path):
    """walbops worker against a real archive: one round applies what is older than keep_period,
    the next merges runs of implicit snapshots, the daemon runs retention and stops on SIGTERM."""
    archive = ArchiveHistory(tmp_path / "worker", seed=7)
    archive.start()
    try:
        archive.full_backup()
        now = int(time.time())
        ages = [(20, "E"), (12, "i"), (10, "E"), (8, "E"), (2, "i"), (1.5, "i"), (1, "E"), (0.5, "i"), (0.1, "E")]
        gids = [archive.add_snapshot(now - int(days * 86400), explicit=kind == "E") for days, kind in ages]
        config = tmp_path / "worker.yml"
        config.write_text(f"general: {{layout: {archive.layout_path}, server: a0, kick_interval: 0.2}}\n"
                          "apply: {keep_period: 9d, interval: 1d}\n"
                          "merge: {interval: 1h, max_nr: 10, threshold_nr: 4}\n")
        first = walbops("worker", "--config", str(config), "--once", "--log-file", "-")
        assert first.returncode == 0, first.stderr
        assert f"vol0: apply {gids[2]} (" in first.stderr  # the newest snapshot older than nine days
        assert archive.ctl.get_base("a0", archive.vol).to_str(False) == f"<|{gids[2]}|>"
        second = walbops("worker", "--config", str(config), "--once", "--log-file", "-")
        assert second.returncode == 0 and "vol0: merge" in second.stderr, second.stderr
        remaining = archive.restorable()
        assert remaining[0] == gids[2] and gids[-1] in remaining and len(remaining) < len(gids) - 2
        assert_restores(archive, [gids[2], gids[-1]])

        config.write_text(f"general: {{layout: {archive.layout_path}, server: a0, kick_interval: 0.2}}\n"
                          "retention: {interval: 1h, keep_last: 2}\n")
        daemon = subprocess.Popen([sys.executable, "-m", "walbops.cli.main", "worker", "--config", str(config),
                                   "--log-file", str(tmp_path / "worker.log")])
        try:
            deadline = time.monotonic() + 60
            while archive.restorable() != gids[-2:] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert archive.restorable() == gids[-2:], (tmp_path / "worker.log").read_text()
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
        log = (tmp_path / "worker.log").read_text()
        assert "start vol0: retention" in log and "worker stopped" in log
        assert_restores(archive, gids[-2:])
    finally:
        archive.close()
