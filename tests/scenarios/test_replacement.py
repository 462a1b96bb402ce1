"""Replacing each host of a backup group, WalB's r1-r4 (walb.md §8.1), with the controller's
workflows (docs/replication.md): the volume's history stays restorable throughout, and each
scenario ends as WalB's do, sha1(device at a snapshot) == sha1(image restored where it now lives).
"""

from __future__ import annotations

import random

from cluster import sha1_of_device, write_random

VOL = "vol0"


def holds(cluster, server: str) -> bool:
    """Whether ``server`` holds the volume (it is not Clear there)."""
    return VOL in cluster.ctl.run(server, "status")["volumes"]


def copy_device(source: str, target: str, size: int) -> None:
    """The volume's data moved to a new host's disk (as an operator would before r1)."""
    with open(source, "rb") as reader, open(target, "r+b") as writer:
        for _ in range(0, size, 4 << 20):
            writer.write(reader.read(4 << 20))
        writer.flush()


def test_r1_replace_the_storage_host_and_back(cluster):
    _, device1 = cluster.add_storage("wdev1")
    device0 = cluster.backed_up(VOL)
    history = [cluster.snapshot_restorable(VOL)]
    copy_device(device0, device1, cluster.device_size)
    write_random(device1, random.Random(130), count=16)  # the new host runs on before the switch
    expected = sha1_of_device(device1)
    gid = cluster.ctl.replace_storage(VOL, "s0", "s1", "wdev1", timeout=120)
    assert not holds(cluster, "s0") and cluster.ctl.get_state("s1", VOL) == "Target"
    assert cluster.restored_sha1(VOL, gid) == expected
    write_random(device1, random.Random(131), count=16)
    history.append((int(cluster.ctl.snapshot("s1", VOL, timeout=120)), sha1_of_device(device1)))
    # And back onto the first host (its device given the volume's data again).
    copy_device(device1, device0, cluster.device_size)
    gid = cluster.ctl.replace_storage(VOL, "s1", "s0", cluster.device_name, timeout=120)
    assert cluster.ctl.get_state("s0", VOL) == "Target" and not holds(cluster, "s1")
    assert cluster.restored_sha1(VOL, gid) == sha1_of_device(device0)
    for old, sha in history:
        assert cluster.restored_sha1(VOL, old) == sha


def test_r2_replace_the_proxy(cluster):
    cluster.add_spare_proxy()  # p1: the new proxy, in the storage's list after p0
    device = cluster.backed_up(VOL)
    history = cluster.snapshot_restorable(VOL)
    cluster.ctl.replace_proxy(VOL, "p0", "p1")
    assert not holds(cluster, "p0") and cluster.ctl.get_state("p1", VOL) == "Started"
    assert cluster.ctl.run("p1", "archive-info", cmd="list", vol=VOL) == ["a0"]
    cluster.stop("proxy")  # the old host is gone: the storage ships through p1
    write_random(device, random.Random(132), count=16)
    cluster.snapshot_and_verify(VOL)
    assert cluster.restored_sha1(VOL, history[0]) == history[1]


def test_r3_replace_the_primary_archive_and_back(cluster):
    cluster.add_archive()
    device = cluster.backed_up(VOL)
    history = [cluster.snapshot_restorable(VOL)]
    gid = cluster.ctl.replace_archive(VOL, "a0", "a1", timeout=120)
    assert not holds(cluster, "a0") and cluster.ctl.get_state("a1", VOL) == "Archived"
    assert gid >= history[0][0] and cluster.ctl.run("p0", "archive-info", cmd="list", vol=VOL) == ["a1"]
    write_random(device, random.Random(133), count=16)
    later = cluster.ctl.snapshot("s0", VOL, archives=["a1"], timeout=120)
    history.append((later, sha1_of_device(device)))
    assert cluster.restored_sha1(VOL, later, archive="a1") == history[-1][1]
    # And back to a0, which holds nothing any more: a full replication, then synchronizing.
    cluster.ctl.replace_archive(VOL, "a1", "a0", timeout=120)
    assert not holds(cluster, "a1") and cluster.ctl.get_state("a0", VOL) == "Archived"
    write_random(device, random.Random(134), count=16)
    history.append(cluster.snapshot_restorable(VOL))
    for gid, sha in history[1:]:
        assert cluster.restored_sha1(VOL, gid) == sha


def test_r4_replace_the_secondary_archive(cluster):
    """a1 keeps a copy by replication (not synchronizing); a2 replaces it, filled from a0."""
    cluster.add_archive()
    cluster.add_archive("archive2")
    device = cluster.backed_up(VOL)
    gid, expected = cluster.snapshot_restorable(VOL)
    cluster.ctl.replicate_once("a0", VOL, "a1")
    replaced = cluster.ctl.replace_archive(VOL, "a1", "a2", source="a0", timeout=120)
    assert not holds(cluster, "a1") and cluster.ctl.get_state("a2", VOL) == "Archived"
    assert replaced == gid and cluster.restored_sha1(VOL, gid, archive="a2") == expected
    write_random(device, random.Random(135), count=16)
    later, expected = cluster.snapshot_restorable(VOL)
    assert cluster.ctl.replicate_once("a0", VOL, "a2") == later
    assert cluster.restored_sha1(VOL, later, archive="a2") == expected
