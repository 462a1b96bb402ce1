"""WalB's resize scenarios (stest/scenario0.py n11a, n11b, m3): a volume grown across its hosts.

The walb device's data device is a file here: it is grown by 4 MiB, then the volume is
resized on the archive and on the storage (the device grows online), data is written into the
new range, and a snapshot (n11a) or a hash backup (n11b) must restore to the device's sha1.
"""

from __future__ import annotations

import random

from cluster import MiB, block_size, fill_random_at, sha1_of_device, write_random
from test_failures import wait_until

VOL = "vol0"
GROWTH = 4 * MiB


def grow_ddev(cluster) -> int:
    """The data device's file grown by GROWTH; returns the new size [bytes]."""
    ddev = cluster.root / "ddev.img"
    size = ddev.stat().st_size + GROWTH
    with open(ddev, "r+b") as stream:
        stream.truncate(size)
    return size


def write_into_the_new_range(cluster, size: int, seed: int) -> None:
    fill_random_at(cluster.device_path, random.Random(seed), size - GROWTH + MiB, MiB)


def test_n11a_resize_then_snapshot(cluster):
    device = cluster.backed_up(VOL)
    taken = cluster.snapshot_restorable(VOL)
    size = grow_ddev(cluster)
    cluster.ctl.resize(VOL, size, zeroclear=True)
    assert cluster.ctl.get("a0", "vol-size", VOL) * 512 == size
    assert cluster.ctl.get("s0", "vol-size", VOL) * 512 == size
    wait_until(lambda: block_size(device) == size, 30, "the loop device showing the new size")
    write_into_the_new_range(cluster, size, seed=11)
    write_random(device, random.Random(12), count=16)
    cluster.snapshot_and_verify(VOL)
    # The gid from before still restores: its image, then zeros where the volume grew since.
    assert cluster.restored_sha1(VOL, taken[0], size - GROWTH) == taken[1]


def test_n11b_resize_then_hash_backup(cluster):
    device = cluster.backed_up(VOL)
    size = grow_ddev(cluster)
    cluster.ctl.resize(VOL, size)
    wait_until(lambda: block_size(device) == size, 30, "the loop device showing the new size")
    cluster.ctl.go_standby("s0", VOL)
    write_into_the_new_range(cluster, size, seed=21)
    expected = sha1_of_device(cluster.device_path)
    gid = cluster.ctl.hash_backup("s0", VOL, timeout=120)
    assert cluster.restored_sha1(VOL, gid) == expected


def test_m3_storage_grown_before_its_archive(cluster):
    """m3: only the storage is resized; the archive refuses the larger volume's diffs
    (smaller-lv-size, is-wdiff-send-error); once the archive is resized, shipping resumes by
    itself (no kick) and the snapshot restores right."""
    device = cluster.backed_up(VOL)
    size = grow_ddev(cluster)
    cluster.ctl.resize_storage("s0", VOL, 0)
    wait_until(lambda: block_size(device) == size, 30, "the loop device showing the new size")
    write_into_the_new_range(cluster, size, seed=31)
    expected = sha1_of_device(cluster.device_path)
    gid = int(cluster.ctl.run("s0", "snapshot", vol=VOL)["gid"])
    wait_until(lambda: cluster.ctl.get("p0", "is-wdiff-send-error", VOL, "a0") == 1, 60,
               "the proxy flagging the archive's refusal")
    assert not cluster.is_restorable(VOL, gid)
    cluster.ctl.resize_archive("a0", VOL, size)
    wait_until(lambda: cluster.is_restorable(VOL, gid), 60, "the snapshot becoming restorable without a kick")
    assert cluster.ctl.get("p0", "is-wdiff-send-error", VOL, "a0") == 0
    assert cluster.restored_sha1(VOL, gid) == expected
