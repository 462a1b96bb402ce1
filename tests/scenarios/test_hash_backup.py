"""WalB's hash backup scenarios (stest/scenario0.py n3, m2, e4, e5, e8, e10, e13) on one machine.

Each ends as WalB's do, sha1(device at the snapshot) == sha1(restored image), and the snapshots
that were restorable before the hash backup are still restorable and still restore right: a
hash backup keeps the history.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time

import pytest
from cluster import MiB, fill_random, sha1_of_device, write_random
from test_failures import wait_until

from walbops.errors import OperationError

# A canary: these scenarios' agents run asyncio in debug mode (wrong-thread calls raise, slow
# callbacks are logged), as every agent did before it cost the suite minutes (tests/helpers.py).
pytestmark = pytest.mark.agents_asyncio_debug

VOL = "vol0"


def history(cluster, device: str, count: int, seed: int) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    taken = []
    for _ in range(count):
        write_random(device, rng, count=12)
        taken.append(cluster.snapshot_restorable(VOL))
    return taken


def assert_history_kept(cluster, taken: list[tuple[int, str]]) -> None:
    restorable = cluster.ctl.get_restorable("a0", VOL, include_implicit=True)
    for gid, sha in taken:
        assert gid in restorable, f"gid {gid} is no longer restorable"
        assert cluster.restored_sha1(VOL, gid) == sha, f"gid {gid} restores wrong"


def hash_backup_and_verify(cluster) -> int:
    """hash_backup, then the new gid restores to the device (no writes run)."""
    expected = sha1_of_device(cluster.device_path)
    gid = cluster.ctl.hash_backup("s0", VOL, timeout=120)
    assert cluster.ctl.get_state("s0", VOL) == "Target"
    assert cluster.restored_sha1(VOL, gid) == expected
    return gid


def test_n3_standby_then_hash_backup(cluster):
    """n3: go standby (writes are not shipped), write, hash backup; the new gid restores to the
    device, the earlier gids too, and shipping goes on after it."""
    device = cluster.backed_up(VOL)
    taken = history(cluster, device, 2, seed=3)
    cluster.ctl.go_standby("s0", VOL)
    assert cluster.ctl.get_state("s0", VOL) == "Standby"
    write_random(device, random.Random(31), count=48)
    hash_backup_and_verify(cluster)
    assert_history_kept(cluster, taken)
    write_random(device, random.Random(32), count=16)
    cluster.snapshot_and_verify(VOL)


def test_m2_hash_backup_to_an_archive_without_the_volume_fails(cluster):
    """m2: a hash backup to an archive reset to SyncReady is refused; a full backup then works."""
    cluster.backed_up(VOL)
    cluster.ctl.run("a0", "stop", vol=VOL)
    cluster.ctl.run("a0", "reset-vol", vol=VOL)
    with pytest.raises(OperationError, match="needs the volume archived"):
        cluster.ctl.hash_backup("s0", VOL, timeout=60)
    # Straight to the storage too: the archive's refusal comes back as the command's.
    cluster.ctl.go_standby("s0", VOL)
    cluster.ctl.run("s0", "stop", vol=VOL)
    with pytest.raises(OperationError, match="not-archived"):
        cluster.ctl.run("s0", "hash-bkp", vol=VOL)
    assert cluster.ctl.get_state("s0", VOL) == "SyncReady"
    cluster.ctl.full_backup("s0", VOL, timeout=120)
    cluster.snapshot_and_verify(VOL)


def overflow(cluster, device: str, seed: int) -> None:
    """Write three times the device over while nothing ships: more than the 64 MiB log ring holds."""
    rng = random.Random(seed)
    for _ in range(3):
        fill_random(device, rng, cluster.device_size)


def test_e4_storage_down_until_overflow_then_hash_backup(cluster):
    """e4: the storage agent is down while the log overflows; started again it stops the volume
    (is-overflow); a hash backup brings it back to Target with every earlier gid still restorable."""
    device = cluster.backed_up(VOL)
    taken = history(cluster, device, 2, seed=4)
    cluster.stop("storage")
    overflow(cluster, device, seed=41)
    cluster.start("storage")
    wait_until(lambda: cluster.ctl.get_state("s0", VOL) == "Stopped", 60, "the overflowed volume stopping")
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 1
    expected = sha1_of_device(cluster.device_path)
    gid = cluster.ctl.recover("s0", VOL, timeout=120)  # the controller finds the overflow: a hash backup
    assert gid is not None and cluster.restored_sha1(VOL, gid) == expected
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 0
    assert cluster.ctl.recover("s0", VOL) is None  # healthy again: nothing to do
    assert_history_kept(cluster, taken)
    write_random(device, random.Random(42), count=16)
    cluster.snapshot_and_verify(VOL)


def test_e5_proxy_data_lost_then_hash_backup(cluster):
    """e5: the proxy loses diffs it had not forwarded; later snapshots never become restorable
    (the archive would need the lost ones); a hash backup recovers without losing history."""
    device = cluster.backed_up(VOL)
    taken = history(cluster, device, 1, seed=5)
    cluster.stop("archive")
    write_random(device, random.Random(51), count=16)
    lost = int(cluster.ctl.run("s0", "snapshot", vol=VOL)["gid"])
    wait_until(lambda: cluster.ctl.get("s0", "latest-snap", VOL)["gid"] >= lost
               and not cluster.ctl.run("s0", "status", vol=VOL)["queue"], 60, "the diffs reaching the proxy")
    cluster.stop("proxy")
    shutil.rmtree(cluster.root / "proxy")
    cluster.start("proxy")
    cluster.start("archive")
    cluster.ctl.start_synchronizing("a0", VOL)
    write_random(device, random.Random(52), count=16)
    later = int(cluster.ctl.run("s0", "snapshot", vol=VOL)["gid"])
    time.sleep(3)
    cluster.ctl.kick_proxies(VOL)
    assert not cluster.is_restorable(VOL, later) and not cluster.is_restorable(VOL, lost)
    hash_backup_and_verify(cluster)
    assert_history_kept(cluster, taken)


def test_e8_storage_metadata_lost_then_hash_backup(cluster):
    """e8: the storage agent loses its volume's metadata: init-vol again and a hash backup."""
    device = cluster.backed_up(VOL)
    taken = history(cluster, device, 1, seed=8)
    cluster.stop("storage", signal.SIGKILL)
    shutil.rmtree(cluster.root / "storage" / VOL)
    cluster.start("storage")
    write_random(device, random.Random(81), count=16)
    cluster.ctl.run("s0", "init-vol", vol=VOL, wdev=cluster.device_name)
    assert cluster.ctl.get_state("s0", VOL) == "SyncReady"
    hash_backup_and_verify(cluster)
    assert_history_kept(cluster, taken)


def test_e10_network_to_the_proxy_cut_until_overflow(cluster):
    """e10: the network between storage and proxy is down until the log overflows; once it is
    back a hash backup recovers."""
    relay = cluster.add_relay("storage", "proxy")
    device = cluster.backed_up(VOL)
    taken = history(cluster, device, 1, seed=10)
    relay.cut()
    overflow(cluster, device, seed=101)
    wait_until(lambda: cluster.ctl.get_state("s0", VOL) == "Stopped", 60, "the overflowed volume stopping")
    relay.restore()
    hash_backup_and_verify(cluster)
    assert_history_kept(cluster, taken)


def test_e13_connection_cut_during_a_hash_backup_then_retry(cluster):
    """e13: the connection between storage and archive is cut during a (throttled) hash backup:
    the storage goes back to SyncReady, the archive to Archived with its restorable snapshots as
    they were and no partial diff; a retry works."""
    relay = cluster.add_relay("storage", "archive")
    device = cluster.backed_up(VOL)
    taken = history(cluster, device, 1, seed=13)
    cluster.ctl.go_standby("s0", VOL)
    fill_random(device, random.Random(131), cluster.device_size)  # every bulk differs
    before = cluster.ctl.get_restorable("a0", VOL, include_implicit=True)
    diffs = cluster.ctl.get_num_diff("a0", VOL)
    cluster.ctl.run("s0", "set-full-scan-bps", bps=4 * MiB)  # 32 MiB: about 8 s
    cluster.ctl.run("s0", "stop", vol=VOL)
    cluster.ctl.run("s0", "hash-bkp", vol=VOL)
    wait_until(lambda: cluster.ctl.get("s0", "progress", VOL) > 4 * MiB // 512, 60, "4 MiB compared")
    assert cluster.ctl.get_state("a0", VOL) == "HashSync"
    relay.cut()
    cluster.ctl.wait_for_state("s0", VOL, {"SyncReady"}, timeout=60)
    cluster.ctl.wait_for_state("a0", VOL, {"Archived"}, timeout=60)
    assert cluster.ctl.get_restorable("a0", VOL, include_implicit=True) == before
    assert cluster.ctl.get_num_diff("a0", VOL) == diffs
    # While the link is down another is refused, by an answer: the storage's broken connection to
    # the archive is not the caller's (the storage closed the controller's connection before).
    with pytest.raises(OperationError, match="archive"):
        cluster.ctl.run("s0", "hash-bkp", vol=VOL)
    assert cluster.ctl.get_state("s0", VOL) == "SyncReady"
    relay.restore()
    cluster.ctl.run("s0", "set-full-scan-bps", bps=0)
    hash_backup_and_verify(cluster)
    assert_history_kept(cluster, taken)


def test_the_controller_starts_a_hash_backup_a_cut_ended_again(cluster):
    """Controller.hash_backup runs a hash backup that failed again, up to three times in all: a
    failed one leaves nothing behind, and an apply or merge the archive was running (busy) or a
    cut connection ends one for reasons that pass (found by scripts/chaos, where the operator's
    hash backups failed on both)."""
    relay = cluster.add_relay("storage", "archive")
    device = cluster.backed_up(VOL)
    taken = history(cluster, device, 1, seed=14)
    cluster.ctl.go_standby("s0", VOL)
    fill_random(device, random.Random(141), cluster.device_size)  # every bulk differs
    relay.cut_after = 4 * MiB
    cut = threading.Event()

    def heal() -> None:
        if relay.down.wait(120):
            cut.set()
        relay.cut_after = None
        time.sleep(0.5)
        relay.restore()

    healer = threading.Thread(target=heal, daemon=True)
    healer.start()
    hash_backup_and_verify(cluster)
    healer.join(timeout=10)
    assert cut.is_set(), "the first hash backup was not cut"
    # The cut one failed, and perhaps a retry that came while the link was still down; the next worked.
    assert 1 <= cluster.log("storage").count(f"hash backup {VOL} failed") <= 2
    assert_history_kept(cluster, taken)
