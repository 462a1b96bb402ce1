"""WalB's tutorial and its scenario tests n1/n2 on one machine: sha1(device at gid) == sha1(restored)."""

from __future__ import annotations

import os
import random
import subprocess

from cluster import MiB, sha1_of_device


def write_random(path: str, rng: random.Random, count: int = 64, size: int = 32 * MiB) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        import mmap

        buffer = mmap.mmap(-1, 65536)
        for _ in range(count):
            length = rng.randint(1, 16) * 4096
            buffer[:length] = rng.randbytes(length)
            os.pwrite(fd, memoryview(buffer)[:length], rng.randrange(0, (size - length) // 4096) * 4096)
    finally:
        os.close(fd)


def restored_sha1(cluster, vol: str, gid: int) -> str:
    device = cluster.ctl.restore("a0", vol, gid, timeout=120)
    try:
        return sha1_of_device(device)
    finally:
        cluster.ctl.del_restored("a0", vol, gid)


def test_full_backup_then_snapshot_and_restore(cluster):
    device = cluster.make_device("tut0")
    cluster.start_all()
    ctl = cluster.ctl
    ctl.run("s0", "init-vol", vol="vol0", wdev="tut0")
    ctl.run("a0", "init-vol", vol="vol0")
    ctl.run("p0", "archive-info", cmd="add", vol="vol0", archive="a0", host="127.0.0.1",
            port=cluster.ports["archive"])
    ctl.run("p0", "start", vol="vol0")
    rng = random.Random(1)
    write_random(device, rng)
    # n1: full backup, then the base snapshot restores to the device as it was.
    ctl.run("s0", "full-bkp", vol="vol0")
    ctl.wait_for_state("s0", "vol0", {"Target"}, timeout=120)
    # The first diff may already be arriving (WdiffRecv is Archived receiving a diff).
    assert ctl.get_state("a0", "vol0") in ("Archived", "WdiffRecv")
    # n2: more writes, a snapshot, wait until restorable, restore, compare.
    write_random(device, rng)
    expected = sha1_of_device(device)
    gid = ctl.run("s0", "snapshot", vol="vol0")["gid"]
    ctl.wait_for_restorable("a0", "vol0", gid, timeout=120)
    assert restored_sha1(cluster, "vol0", gid) == expected
    # The filesystem layer: ext4, files, a snapshot, a mounted restore.
    subprocess.run(["mkfs.ext4", "-q", device], check=True)
    mnt = cluster.root / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", device, str(mnt)], check=True)
    try:
        (mnt / "hello.txt").write_text("walbops\n")
        (mnt / "data.bin").write_bytes(os.urandom(2 * MiB))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    expected = sha1_of_device(device)
    gid = ctl.run("s0", "snapshot", vol="vol0")["gid"]
    ctl.wait_for_restorable("a0", "vol0", gid, timeout=120)
    restored = ctl.restore("a0", "vol0", gid, timeout=120)
    try:
        assert sha1_of_device(restored) == expected
        subprocess.run(["mount", "-o", "ro", restored, str(mnt)], check=True)
        try:
            assert (mnt / "hello.txt").read_text() == "walbops\n"
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        ctl.del_restored("a0", "vol0", gid)


def test_walblib_workflows(cluster):
    """init_storage, full_backup and snapshot as walblib's Controller runs them."""
    device = cluster.make_device("tut1")
    cluster.start_all()
    ctl = cluster.ctl
    ctl.init_storage("s0", "vol1", "tut1")
    assert ctl.get_state("s0", "vol1") == "Standby"
    rng = random.Random(5)
    write_random(device, rng)
    first = ctl.full_backup("s0", "vol1", timeout=120)
    states = ctl.get_state_all("vol1")
    assert states["s0"] == "Target" and states["p0"] in ("Started", "WlogRecv")
    assert states["a0"] in ("Archived", "WdiffRecv")
    write_random(device, rng)
    expected = sha1_of_device(device)
    gid = ctl.snapshot("s0", "vol1", timeout=120)
    assert gid > first
    assert restored_sha1(cluster, "vol1", gid) == expected
    for server in ("s0", "p0", "a0"):
        ctl.clear(server, "vol1")
    # Cleared everywhere: no server knows the volume any more.
    assert all("not found" in state for state in ctl.get_state_all("vol1").values())
