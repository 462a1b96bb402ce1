"""Replication from one archive to another (walb.md §6.7; WalB's n7-n10, n14, e6, e7, e14-e16).

Each scenario ends as WalB's do: the image restored on the destination archive has the sha1 of the
device at that snapshot.
"""

from __future__ import annotations

import asyncio
import io
import json
import mmap
import os
import random
import signal
import time

import pytest
from cluster import RandomWriter, fill_random, sha1_of_device, wait_until, write_random
from relay import Relay

from walbops.agents.transfers import send_wdiff
from walbops.diff.io import DiffIo
from walbops.diff.sorted_file import SortedDiffWriter
from walbops.errors import OperationError
from walbops.gid import MetaDiff
from walbops.net.transport import open_connection
from walbops.worker import Worker, WorkerConfig

VOL = "vol0"


def replicated_volume(cluster) -> tuple[str, list[tuple[int, str]]]:
    """A backed-up volume with two more snapshots, and a second archive a1 holding nothing yet:
    (device, [(gid, sha1)])."""
    cluster.add_archive()
    device = cluster.backed_up(VOL)
    taken = []
    for seed in (71, 72):
        write_random(device, random.Random(seed), count=16)
        taken.append(cluster.snapshot_restorable(VOL))
    cluster.ctl.run("a1", "init-vol", vol=VOL)
    return device, taken


def random_filled_volume(cluster, seed: int) -> tuple[str, int, str]:
    """A volume filled with random bytes (lz4 cannot shrink them on the wire, so a cut after a
    byte count lands mid-stream), backed up on a0 with one snapshot, and a second archive a1 with
    the volume initialized: (device, gid, sha1)."""
    cluster.add_archive()
    device = cluster.make_device("wdev0")
    fill_random(device, random.Random(seed), cluster.device_size)
    cluster.start_all()
    cluster.setup_volume(VOL)
    cluster.full_backup(VOL)
    gid, expected = cluster.snapshot_restorable(VOL)
    cluster.ctl.run("a1", "init-vol", vol=VOL)
    return device, gid, expected


def replicate_through_a_cut(cluster, gid: int, after: int) -> dict:
    """Replicate a0 to a1 up to ``gid`` through a relay that cuts the connection once a0 has sent
    ``after`` bytes; the replication fails. Returns replicate's answer."""
    relay = Relay(cluster.ports["archive1"], cut_after=after)
    try:
        accepted = cluster.ctl.run("a0", "replicate", vol=VOL, gid=gid, host="127.0.0.1", port=relay.port)
        with pytest.raises(OperationError, match="replsyncasclient failed"):
            cluster.ctl.wait_for_action("a0", VOL, "ReplSyncAsClient", accepted)
    finally:
        relay.close()
    return accepted


def explicit_restorable(cluster, archive: str) -> list[int]:
    return cluster.ctl.get_restorable(archive, VOL)


def test_n7_n8_full_then_diff_replication_restores_on_the_destination(cluster):
    device, taken = replicated_volume(cluster)
    assert cluster.ctl.get_state("a1", VOL) == "SyncReady"
    gid = cluster.ctl.replicate_once("a0", VOL, "a1")
    assert gid == taken[-1][0]
    assert cluster.ctl.get_state("a1", VOL) == "Archived"
    assert explicit_restorable(cluster, "a1") == explicit_restorable(cluster, "a0")
    assert cluster.ctl.get("a1", "archive-uuid", VOL) == cluster.ctl.get("a0", "archive-uuid", VOL)
    assert cluster.ctl.get("a1", "uuid", VOL) == cluster.ctl.get("a0", "uuid", VOL)
    for snapshot, expected in taken:
        assert cluster.restored_sha1(VOL, snapshot, archive="a1") == expected
    outcome = cluster.ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")
    assert outcome["ok"] and outcome["kind"] == "full" and outcome["diffs"] >= 2

    # More writes: the next replication sends only the diffs since.
    write_random(device, random.Random(73), count=16)
    later, expected = cluster.snapshot_restorable(VOL)
    cluster.ctl.replicate_once("a0", VOL, "a1", gid=later)
    outcome = cluster.ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")
    assert outcome["kind"] == "diff" and outcome["diffs"] >= 1
    assert cluster.restored_sha1(VOL, later, archive="a1") == expected
    (delta,) = cluster.ctl.get("a0", "ts-delta", VOL)
    assert delta["destination"] == f"127.0.0.1:{cluster.ports['archive1']}" and delta["gid_delta"] >= 0
    # Nothing new: replicating again (walbc's words, with ctl) sends nothing and changes nothing.
    before = cluster.ctl.get("a1", "diff", VOL)
    printed = cluster.cli("ctl", "--layout", str(cluster.layout_path), "-s", "a0", "--json", "--wait", "replicate",
                          VOL, "gid", str(later), f"127.0.0.1:{cluster.ports['archive1']}")
    assert json.loads(printed)["result"]["diffs"] == 0
    assert cluster.ctl.get("a1", "diff", VOL) == before


def new_lineage_on_a0(cluster, clear: bool = False, by_controller: bool = False) -> None:
    """a0 begins another lineage of the volume: reset (or, with ``clear``, its data lost: clear-vol
    and init-vol), then a new full backup from s0 (``by_controller``: Controller.full_backup,
    which also brings the synchronizing archives along)."""
    ctl = cluster.ctl
    ctl.run("s0", "stop", vol=VOL)
    ctl.wait_for_state("s0", VOL, {"Stopped"}, timeout=60)
    ctl.run("a0", "stop", vol=VOL)
    ctl.wait_for_state("a0", VOL, {"Stopped"}, timeout=60)
    if clear:
        ctl.run("a0", "clear-vol", vol=VOL)
        ctl.run("a0", "init-vol", vol=VOL)
    else:
        ctl.run("a0", "reset-vol", vol=VOL)
    ctl.run("s0", "reset-vol", vol=VOL)
    if by_controller:
        ctl.full_backup("s0", VOL, timeout=120)
    else:
        cluster.full_backup(VOL)


def test_n14_another_lineage_needs_a_resync(cluster):
    """After a0 begins a new lineage (a new full backup), replicating to a1 without doResync fails;
    with it, a1's base is brought to a0's by hash and a1 follows a0's lineage."""
    device, taken = replicated_volume(cluster)
    cluster.ctl.replicate_once("a0", VOL, "a1")
    ctl = cluster.ctl
    new_lineage_on_a0(cluster)
    assert ctl.get("a0", "archive-uuid", VOL) != ctl.get("a1", "archive-uuid", VOL)
    with pytest.raises(OperationError, match="resync-needed|lineage .* is not the source's"):
        ctl.replicate_once("a0", VOL, "a1")
    # a1 still serves what it had.
    assert cluster.restored_sha1(VOL, taken[-1][0], archive="a1") == taken[-1][1]

    write_random(device, random.Random(75), count=16)
    gid, expected = cluster.snapshot_restorable(VOL)
    assert ctl.replicate_once("a0", VOL, "a1", do_resync=True) == gid
    outcome = ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")
    assert outcome["kind"] == "resync" and outcome["diffs"] >= 1
    assert ctl.get("a1", "archive-uuid", VOL) == ctl.get("a0", "archive-uuid", VOL)
    assert explicit_restorable(cluster, "a1") == explicit_restorable(cluster, "a0")
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected == sha1_of_device(device)
    # The same lineage again: a plain replication sends the next diff.
    write_random(device, random.Random(76), count=16)
    later, expected = cluster.snapshot_restorable(VOL)
    ctl.replicate_once("a0", VOL, "a1")
    assert ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")["kind"] == "diff"
    assert cluster.restored_sha1(VOL, later, archive="a1") == expected


def test_e6_primary_data_lost_then_a_resync_cut_and_retried(cluster):
    """e6: a0 loses the volume (clear-vol, init-vol, full backup anew); a1, of the old lineage and
    behind by writes over about 40 of the 128 bulks, is resynced. The first resync is cut: a1 is
    left SyncReady with nothing restorable; the retry with doResync resyncs again and a1 restores
    what the device holds."""
    device, _, _ = random_filled_volume(cluster, 79)
    cluster.ctl.replicate_once("a0", VOL, "a1")
    write_random(device, random.Random(77), count=64)
    new_lineage_on_a0(cluster, clear=True)
    assert cluster.ctl.get("a0", "archive-uuid", VOL) != cluster.ctl.get("a1", "archive-uuid", VOL)
    gid, expected = cluster.snapshot_restorable(VOL)
    relay = Relay(cluster.ports["archive1"], cut_after=4 << 20)
    try:
        accepted = cluster.ctl.run("a0", "replicate", vol=VOL, gid=gid, host="127.0.0.1", port=relay.port,
                                   do_resync=True)
        with pytest.raises(OperationError, match="replsyncasclient failed"):
            cluster.ctl.wait_for_action("a0", VOL, "ReplSyncAsClient", accepted)
    finally:
        relay.close()
    cluster.ctl.wait_for_state("a1", VOL, {"SyncReady"}, timeout=60)
    assert explicit_restorable(cluster, "a1") == []
    assert cluster.ctl.replicate_once("a0", VOL, "a1", do_resync=True) == gid
    assert cluster.ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")["kind"] == "resync"
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected


def test_n9_a_destination_behind_the_sources_applied_base_gets_a_hash_replication(cluster):
    """n9: a0 applies until one restorable snapshot remains; a1, older than a0's base, receives
    a0's image at its base as one compared diff, then the diffs after it."""
    device, taken = replicated_volume(cluster)
    cluster.ctl.replicate_once("a0", VOL, "a1", gid=taken[0][0])
    cluster.ctl.apply("a0", VOL, taken[-1][0])
    assert cluster.ctl.get_restorable("a0", VOL) == [taken[-1][0]]
    write_random(device, random.Random(78), count=16)
    gid, expected = cluster.snapshot_restorable(VOL)
    assert cluster.ctl.replicate_once("a0", VOL, "a1") == gid
    outcome = cluster.ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")
    assert outcome["kind"] == "hash" and outcome["diffs"] >= 2  # the compared diff, then the new ones
    compared = [d for d in cluster.ctl.get("a1", "diff", VOL) if d["comp"]]
    assert [d["range"] for d in compared] == [f"|{taken[0][0]}|-->|{taken[-1][0]}|"]
    assert cluster.ctl.get("a1", "uuid", VOL) == cluster.ctl.get("a0", "uuid", VOL)
    assert cluster.restored_sha1(VOL, taken[-1][0], archive="a1") == taken[-1][1]
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected
    assert cluster.restored_sha1(VOL, taken[0][0], archive="a1") == taken[0][1]  # a1 keeps its history


def zero_head(path: str, size: int) -> None:
    """Write zeros over the first ``size`` bytes of a device (past the page cache)."""
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        with mmap.mmap(-1, size) as zeros:
            os.pwrite(fd, zeros, 0)
    finally:
        os.close(fd)


def test_e14_a_cut_full_replication_keeps_what_it_synced_and_the_retry_resumes(cluster):
    """e14: the network between the archives is cut during a full replication; the destination is
    back to SyncReady with nothing restorable, keeping the part it synced. a0 then applies a new
    base (zeros where a1 kept data): the next replication cannot resume that part, starts over (and
    is cut again); the one after resumes where it was cut, and a1 restores the device's sha1."""
    cluster.device_size = 64 << 20  # a base of 64 MiB: the stream takes a while
    device, gid, expected = random_filled_volume(cluster, 74)
    accepted = replicate_through_a_cut(cluster, gid, 8 << 20)
    assert accepted["accepted"]
    cluster.ctl.wait_for_state("a1", VOL, {"SyncReady"}, timeout=60)
    assert cluster.ctl.get("a1", "exists-base-image", VOL) == 1
    assert explicit_restorable(cluster, "a1") == []

    zero_head(device, 1 << 20)  # a0's next base reads zeros where a1 kept the old data
    later, expected = cluster.snapshot_restorable(VOL)
    cluster.ctl.apply("a0", VOL, later)
    replicate_through_a_cut(cluster, later, 8 << 20)
    assert explicit_restorable(cluster, "a1") == []
    assert cluster.ctl.replicate_once("a0", VOL, "a1", gid=later) == later
    resumed = cluster.ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")
    assert resumed["kind"] == "full" and 0 < resumed["resumed_at_lb"] < cluster.device_size // 512
    assert cluster.restored_sha1(VOL, later, archive="a1") == expected == sha1_of_device(device)


def test_n10_synchronizing_under_writes_then_stop_synchronizing(cluster):
    """synchronize: the proxies send each new diff to both archives; snapshots taken under writes
    restore on a1 with the device's sha1; after stop_synchronizing a1 no longer advances."""
    device, taken = replicated_volume(cluster)
    ctl = cluster.ctl
    with RandomWriter(device, seed=10) as writer:
        writer.wait_for_writes(20)
        ctl.synchronize("a0", VOL, "a1")
        writer.wait_for_writes(40)
        writer.stop()
    assert ctl.is_synchronizing("a1", VOL)
    gid = ctl.snapshot("s0", VOL, archives=["a0", "a1"], timeout=120)
    expected = sha1_of_device(device)
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected
    assert cluster.restored_sha1(VOL, taken[0][0], archive="a1") == taken[0][1]

    ctl.stop_synchronizing("a1", VOL)
    assert not ctl.is_synchronizing("a1", VOL)
    write_random(device, random.Random(75), count=16)
    later = ctl.snapshot("s0", VOL, timeout=120)
    time.sleep(2)  # what a synchronizing a1 would have had time to receive
    assert later in ctl.get_restorable("a0", VOL) and later not in ctl.get_restorable("a1", VOL, include_implicit=True)
    assert ctl.get_state("a1", VOL) == "Archived"


def test_e16_a_cut_diff_replication_leaves_an_older_gid_and_a_retry_reaches_the_source(cluster):
    device, taken = replicated_volume(cluster)
    cluster.ctl.replicate_once("a0", VOL, "a1", gid=taken[0][0])
    for seed in range(80, 84):  # four more diffs of about 1 MiB each
        write_random(device, random.Random(seed), count=256)
        taken.append(cluster.snapshot_restorable(VOL))
    gid, expected = taken[-1]
    replicate_through_a_cut(cluster, gid, 2 << 20)  # in the third diff
    cluster.ctl.wait_for_state("a1", VOL, {"Archived"}, timeout=60)
    reached = max(cluster.ctl.get_restorable("a1", VOL, include_implicit=True))
    assert taken[0][0] <= reached < gid
    cluster.ctl.replicate_once("a0", VOL, "a1", gid=gid)
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected
    assert cluster.ctl.get_restorable("a1", VOL) == cluster.ctl.get_restorable("a0", VOL)


def test_the_worker_replicates_to_its_repl_servers_until_they_are_at_the_latest_snapshot(cluster, tmp_path):
    device, taken = replicated_volume(cluster)
    config = tmp_path / "worker.yml"
    config.write_text(f"general: {{layout: {cluster.layout_path}, server: a0}}\nrepl: {{servers: {{a1: {{}}}}}}\n")
    worker = Worker(WorkerConfig.load(str(config)))
    assert worker.run_once() == 0
    assert cluster.ctl.get_restorable("a1", VOL) == cluster.ctl.get_restorable("a0", VOL)
    assert cluster.restored_sha1(VOL, taken[-1][0], archive="a1") == taken[-1][1]
    first = cluster.ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")["started"]
    assert worker.run_once() == 0  # a1 is at a0's latest snapshot: nothing to do
    assert cluster.ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")["started"] == first
    write_random(device, random.Random(90), count=16)
    gid, expected = cluster.snapshot_restorable(VOL)
    assert worker.run_once() == 0
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected


def test_e15_a_cut_hash_replication_leaves_the_destination_as_it_was_and_a_retry_works(cluster):
    """e15: the link between the archives is cut during a hash replication; a1 is back to Archived
    with its snapshots as they were and no partial diff, and the retry reaches the same gid."""
    device, first, first_sha1 = random_filled_volume(cluster, 81)
    cluster.ctl.replicate_once("a0", VOL, "a1", gid=first)
    write_random(device, random.Random(82), count=64)  # about 40 of the 128 bulks of 256 KiB
    second, expected = cluster.snapshot_restorable(VOL)
    cluster.ctl.apply("a0", VOL, second)
    before = cluster.ctl.get("a1", "diff", VOL), cluster.ctl.get_restorable("a1", VOL, include_implicit=True)
    replicate_through_a_cut(cluster, second, 4 << 20)
    cluster.ctl.wait_for_state("a1", VOL, {"Archived"}, timeout=60)
    assert (cluster.ctl.get("a1", "diff", VOL), cluster.ctl.get_restorable("a1", VOL, include_implicit=True)) == before
    assert cluster.ctl.replicate_once("a0", VOL, "a1") == second
    assert cluster.ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")["kind"] == "hash"
    assert cluster.restored_sha1(VOL, second, archive="a1") == expected
    assert cluster.restored_sha1(VOL, first, archive="a1") == first_sha1


def test_a_synchronizing_secondary_follows_a_hash_backup(cluster):
    """A hash backup's diff and the device's new uuid reach a0 only; Controller.hash_backup brings
    each synchronizing archive up by replication, so a1 goes on receiving the proxies' diffs."""
    device, taken = replicated_volume(cluster)
    ctl = cluster.ctl
    ctl.synchronize("a0", VOL, "a1")
    write_random(device, random.Random(91), count=16)
    ctl.hash_backup("s0", VOL)
    assert ctl.get("a1", "uuid", VOL) == ctl.get("a0", "uuid", VOL) == ctl.get("s0", "uuid", VOL)
    write_random(device, random.Random(92), count=16)
    gid, expected = cluster.snapshot_restorable(VOL)
    ctl.wait_for_replicated("a0", VOL, "a1", gid, timeout=60)
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected


def test_a_synchronizing_secondary_follows_a_new_full_backup_by_resync(cluster):
    """A new full backup on a0 begins another lineage; Controller.full_backup resyncs each
    synchronizing archive, which goes on receiving the proxies' diffs."""
    device, taken = replicated_volume(cluster)
    ctl = cluster.ctl
    ctl.synchronize("a0", VOL, "a1")
    new_lineage_on_a0(cluster, by_controller=True)
    assert ctl.get("a1", "archive-uuid", VOL) == ctl.get("a0", "archive-uuid", VOL)
    assert ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")["kind"] == "resync"
    write_random(device, random.Random(93), count=16)
    gid, expected = cluster.snapshot_restorable(VOL)
    ctl.wait_for_replicated("a0", VOL, "a1", gid, timeout=60)
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected


def test_e7_the_secondary_loses_its_data_and_is_synchronized_again(cluster):
    """e7: a1, synchronizing, loses the volume (clear-vol, init-vol); synchronizing it again fills it
    by a full replication, and the device, a0 and a1 agree (sha1) on a snapshot taken after."""
    device, taken = replicated_volume(cluster)
    ctl = cluster.ctl
    ctl.synchronize("a0", VOL, "a1")
    ctl.stop_synchronizing("a1", VOL)  # the proxies must not send to a volume being cleared
    ctl.run("a1", "stop", vol=VOL)
    ctl.wait_for_state("a1", VOL, {"Stopped"}, timeout=60)
    ctl.run("a1", "clear-vol", vol=VOL)
    ctl.run("a1", "init-vol", vol=VOL)
    write_random(device, random.Random(94), count=16)
    ctl.synchronize("a0", VOL, "a1")
    assert ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")["kind"] == "full"
    write_random(device, random.Random(95), count=16)
    gid, expected = cluster.snapshot_restorable(VOL)
    ctl.wait_for_replicated("a0", VOL, "a1", gid, timeout=60)
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected == sha1_of_device(device)


def slow(data: bytes, _offset: int) -> bytes:
    """A Relay tamper that paces what the source sends (about 64 KiB per 10 ms): a replication of
    a few MiB then takes long enough to kill a peer in the middle of it."""
    time.sleep(0.01)
    return data


def start_replication_through(cluster, relay: Relay, gid: int) -> dict:
    return cluster.ctl.run("a0", "replicate", vol=VOL, gid=gid, host="127.0.0.1", port=relay.port)


def test_a_destination_killed_during_a_full_replication_restarts_sync_ready_and_a_retry_works(cluster):
    """The destination is SIGKILLed in the middle of a full replication: it comes back SyncReady
    with nothing restorable, and the next replication restores the device's sha1."""
    _, gid, expected = random_filled_volume(cluster, 96)
    relay = Relay(cluster.ports["archive1"], tamper=slow)
    try:
        accepted = start_replication_through(cluster, relay, gid)
        wait_until(lambda: int(cluster.ctl.get("a1", "progress", VOL)) > 0, 60, "a1 receiving", poll=0.02)
        cluster.stop("archive1", signal.SIGKILL)
    finally:
        relay.close()
    with pytest.raises(OperationError, match="replsyncasclient failed"):
        cluster.ctl.wait_for_action("a0", VOL, "ReplSyncAsClient", accepted, time.monotonic() + 60)
    cluster.start("archive1")
    assert cluster.ctl.get_state("a1", VOL) == "SyncReady" and explicit_restorable(cluster, "a1") == []
    cluster.ctl.replicate_once("a0", VOL, "a1", gid=gid)
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected


def test_the_source_killed_during_a_hash_replication_leaves_the_destination_as_it_was(cluster):
    """The source is SIGKILLed in the middle of a hash replication: the destination rolls back to
    Archived with its snapshots as they were, and once the source is back a retry works."""
    device, first, first_sha1 = random_filled_volume(cluster, 97)
    cluster.ctl.replicate_once("a0", VOL, "a1", gid=first)
    write_random(device, random.Random(98), count=64)
    second, expected = cluster.snapshot_restorable(VOL)
    cluster.ctl.apply("a0", VOL, second)
    before = cluster.ctl.get_restorable("a1", VOL, include_implicit=True)
    relay = Relay(cluster.ports["archive1"], tamper=slow)
    try:
        start_replication_through(cluster, relay, second)
        wait_until(lambda: cluster.ctl.get_state("a1", VOL) == "ReplSyncAsServer", 60, "a1 in the hash sync",
                   poll=0.02)
        cluster.stop("archive", signal.SIGKILL)
    finally:
        relay.close()
    cluster.ctl.wait_for_state("a1", VOL, {"Archived"}, timeout=60)
    assert cluster.ctl.get_restorable("a1", VOL, include_implicit=True) == before
    cluster.start("archive")
    assert cluster.ctl.replicate_once("a0", VOL, "a1", gid=second) == second
    assert cluster.restored_sha1(VOL, second, archive="a1") == expected
    assert cluster.restored_sha1(VOL, first, archive="a1") == first_sha1


@pytest.mark.parametrize("strays", [1, 2])
def test_a_secondary_that_holds_a_diff_the_primary_skipped_is_brought_back_by_hash(cluster, strays):
    """Found by scripts/chaos: a proxy delivered to a1 diffs of the device's old uuid that a0 never
    got, because a hash backup began the device's new uuid on a0 from the snapshot before them.
    With one such diff a1 stood at a snapshot a0's history does not pass through; with two, at
    one a0 passes through too (|L+2|: a0 reached it by the hash backup |L|-->|L+1,L+2| and the
    scan's writes |L+1|-->|L+2|), but in the other history. Replicating the diffs that follow by
    gid left a1 without the hash backup's bulks: later snapshots restored wrong on a1. The
    replication now sends a1's image to a0's next clean snapshot by hash first."""
    device, taken = replicated_volume(cluster)
    ctl = cluster.ctl
    ctl.replicate_once("a0", VOL, "a1")
    latest = taken[-1][0]
    assert max(ctl.get_restorable("a1", VOL, include_implicit=True)) == latest
    # The diffs only a1 gets: writes of the device's old uuid after a1's (and a0's) latest snapshot.
    old_uuid = bytes.fromhex(ctl.get("a1", "uuid", VOL))
    size_lb = cluster.device_size // 512

    def stray(gid: int) -> bytes:
        diff = io.BytesIO()
        writer = SortedDiffWriter(diff, old_uuid)
        for address in range(0, 8192, 512):
            writer.write(DiffIo.normal(address, random.Random(address + gid).randbytes(64 * 512)))
        writer.close()
        return diff.getvalue()

    async def deliver() -> None:
        async with await open_connection("127.0.0.1", cluster.ports["archive1"], cluster.secret("proxy"), "rogue",
                                         "proxy", timeout=10) as channel:
            for gid in range(latest, latest + strays):
                await send_wdiff(channel, VOL, old_uuid, size_lb, MetaDiff(gid, gid + 1), [stray(gid)])

    asyncio.run(deliver())
    assert max(ctl.get_restorable("a1", VOL, include_implicit=True)) == latest + strays
    ctl.hash_backup("s0", VOL)  # a0: |L|-->|L+1,L+2| with the device's new uuid, then |L+1|-->|L+2|
    ctl.kick_proxies(VOL)
    wait_until(lambda: latest + 2 in ctl.get_restorable("a0", VOL, include_implicit=True), 60,
               f"a0 at |{latest + 2}|")
    write_random(device, random.Random(95), count=16)
    gid, expected = cluster.snapshot_restorable(VOL)
    assert ctl.replicate_once("a0", VOL, "a1", gid) == gid
    assert ctl.get("a0", "action-result", VOL, "ReplSyncAsClient")["diverged"] is True
    assert cluster.restored_sha1(VOL, gid, archive="a1") == expected
    assert cluster.restored_sha1(VOL, latest, archive="a1") == taken[-1][1]
