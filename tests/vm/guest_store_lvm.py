"""The lvm store on real, active LVs: runs inside the test guest (tests/vm/test_vm_lvm.py).

A thick VG (classic snapshots) and a thin pool (thin snapshots), each on its own scratch disk.
Every step ends with the sha1 of an LV equal to the sha1 of the image it must hold: the base
after a full backup and after an apply, each restored snapshot; a restored ext4 image attaches
read-only, checks clean and mounts.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from walbops.diff.engine import DiscardPolicy
from walbops.diff.io import DiffIo
from walbops.diff.sorted_file import SortedDiffWriter
from walbops.errors import OperationError
from walbops.formats.compression import Compression
from walbops.store import CloneMethod
from walbops.store.lvmstore import LvmStore, device_mapper_missing

if os.environ.get("WALBOPS_VM_GUEST") != "1":
    pytest.skip("runs inside the test guest (tests/vm/test_vm_lvm.py)", allow_module_level=True)

MiB = 1 << 20
LB = 512
BLOCK = 4096  # [bytes] the granularity of the image diffs, ext4's block size
IMAGE_SIZE = 24 * MiB
VOL = "vol-1"
UUID = bytes(range(16))
DISKS = {"thick": "/dev/vda", "thin": "/dev/vdb"}


def lvm(*args: str) -> str:
    result = subprocess.run(["lvm", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise AssertionError(f"lvm {' '.join(args)}: {result.stderr}")
    return result.stdout


def lv_names(vg: str) -> list[str]:
    return sorted(lvm("lvs", "--noheadings", "--options", "lv_name", vg).split())


@pytest.fixture(params=["thick", "thin"])
def store(request: pytest.FixtureRequest) -> Iterator[LvmStore]:
    assert device_mapper_missing() is None, "the guest has device-mapper"
    vg = f"wbvm{request.param}"
    lvm("pvcreate", "--yes", DISKS[request.param])
    lvm("vgcreate", vg, DISKS[request.param])
    if request.param == "thin":
        lvm("lvcreate", "--yes", "--type", "thin-pool", "--size", "128M", "--name", "pool", vg)
    try:
        yield LvmStore(vg, thinpool="pool" if request.param == "thin" else None)
    finally:
        lvm("vgremove", "--yes", "--force", vg)
        lvm("pvremove", "--yes", DISKS[request.param])


def ext4_image(path: Path, files: dict[str, bytes]) -> bytes:
    """An ext4 filesystem of IMAGE_SIZE holding ``files``, made by mkfs.ext4 -d (no mount)."""
    tree = path.with_suffix(".tree")
    tree.mkdir()
    for name, data in files.items():
        (tree / name).write_bytes(data)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-U", "0f0e0d0c-0b0a-0908-0706-050403020100",
                    "-d", str(tree), str(path), f"{IMAGE_SIZE // 1024}k"], check=True, capture_output=True)
    return path.read_bytes()


def changes(old: bytes, new: bytes) -> list[DiffIo]:
    """The BLOCKs of ``new`` that differ from ``old``, as IOs (neighbours joined)."""
    blocks = len(new) // BLOCK
    differs = (np.frombuffer(old, np.uint8).reshape(blocks, BLOCK)
               != np.frombuffer(new, np.uint8).reshape(blocks, BLOCK)).any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], differs.astype(np.int8), [0])))).tolist()
    return [DiffIo.normal(start * BLOCK // LB, new[start * BLOCK:end * BLOCK])
            for start, end in zip(edges[::2], edges[1::2], strict=True)]


def write_diff(path: Path, ios: list[DiffIo]) -> str:
    with open(path, "wb") as out:
        writer = SortedDiffWriter(out, UUID, Compression.LZ4)
        for io in ios:
            writer.write(io)
        writer.close()
    return str(path)


def sha1_of(path: str, size: int = IMAGE_SIZE) -> str:
    with open(path, "rb") as device:
        return hashlib.sha1(device.read(size)).hexdigest()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def test_full_backup_diffs_restores_and_apply_on_active_lvs(store: LvmStore, tmp_path: Path) -> None:
    thin = store.thinpool is not None
    images = [ext4_image(tmp_path / f"v{number}.img", files) for number, files in enumerate((
        {"a": b"first\n" * 1000},
        {"a": b"first\n" * 1000, "b": os.urandom(3 * MiB)},
        {"b": b"replaced\n" * 5000, "c": os.urandom(MiB)},
    ))]
    diffs = [write_diff(tmp_path / f"{number}-{number + 1}.wdiff", changes(images[number], images[number + 1]))
             for number in range(2)]

    # A full backup: a zeroed base, the image written through open_base as the archive does.
    base = store.create_base(VOL, IMAGE_SIZE // LB, zero=True)
    assert os.path.exists(base) and store.base_size_lb(VOL) == IMAGE_SIZE // LB
    with store.open_base(VOL) as target:
        os.pwrite(target.fd, images[0], 0)
    assert sha1_of(base) == sha1(images[0])

    # Restores: a snapshot of the base, the diffs laid over it; the base itself unchanged.
    for gid in (1, 2):
        restored = store.restore(VOL, gid, diffs[:gid])
        assert restored.clone == (CloneMethod.LVM_THIN_SNAPSHOT if thin else CloneMethod.LVM_SNAPSHOT)
        assert sha1_of(restored.path) == sha1(images[gid]), f"gid {gid}"
    assert store.restored(VOL) == [1, 2] and sha1_of(base) == sha1(images[0])

    # The restored image attaches read-only, checks clean and mounts.
    device = store.attach(VOL, 2)
    try:
        fsck = subprocess.run(["e2fsck", "-fn", device], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        mountpoint = tmp_path / "mnt"
        mountpoint.mkdir()
        subprocess.run(["mount", "-o", "ro", device, str(mountpoint)], check=True, capture_output=True)
        try:
            assert (mountpoint / "b").read_bytes() == b"replaced\n" * 5000
            assert not (mountpoint / "a").exists()
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True)
    finally:
        assert store.detach(VOL, 2) == [device]

    # del-restored.
    for gid in (1, 2):
        store.delete_restored(VOL, gid)
    assert store.restored(VOL) == [] and lv_names(store.vg) == sorted(["wb_vol-1", *(["pool"] if thin else [])])

    # Apply: the base takes the first diff; a restore of gid 2 then needs only the second.
    store.apply_to_base(VOL, diffs[:1], DiscardPolicy.IGNORE)
    assert sha1_of(base) == sha1(images[1])
    assert sha1_of(store.restore(VOL, 2, diffs[1:]).path) == sha1(images[2])

    # Growing zeroes the new part of a thick base (BLKZEROOUT on the LV); a thin one reads zeros.
    # lvm2 extends a thick base with restored (classic) snapshots only while they are inactive:
    # one in use refuses the grow; otherwise they are active again after it, unchanged.
    if not thin:
        attached = store.attach(VOL, 2)
        try:
            with pytest.raises(OperationError, match=r"needs it inactive, with its restored snapshots \(gids 2\)"):
                store.grow_base(VOL, 2 * IMAGE_SIZE // LB, zero_new=True)
        finally:
            store.detach(VOL, 2)
        assert attached and store.base_size_lb(VOL) == IMAGE_SIZE // LB
    grown = store.grow_base(VOL, 2 * IMAGE_SIZE // LB, zero_new=True)
    assert grown * LB >= 2 * IMAGE_SIZE
    with open(base, "rb") as device_file:
        assert device_file.read(IMAGE_SIZE) == images[1]
        assert device_file.read(IMAGE_SIZE).count(0) == IMAGE_SIZE
    assert sha1_of(store.restored_path(VOL, 2)) == sha1(images[2]), "the restored gid is there, unchanged"

    store.remove_volume(VOL)
    assert store.volumes() == [] and lv_names(store.vg) == (["pool"] if thin else [])


def test_a_corrupt_diff_changes_no_lv(store: LvmStore, tmp_path: Path) -> None:
    image = os.urandom(4 * MiB)
    base = store.create_base(VOL, len(image) // LB, zero=True)
    with store.open_base(VOL) as target:
        os.pwrite(target.fd, image, 0)
    good = write_diff(tmp_path / "good.wdiff", [DiffIo.normal(0, os.urandom(64 * 1024))])
    bad = tmp_path / "bad.wdiff"
    data = bytearray(Path(write_diff(tmp_path / "whole.wdiff", [DiffIo.normal(8, os.urandom(64 * 1024))])).read_bytes())
    data[-100] ^= 0xFF  # inside the last pack's data: its checksum no longer matches
    bad.write_bytes(data)
    before = lv_names(store.vg)
    with pytest.raises(OperationError, match="cannot apply"):
        store.apply_to_base(VOL, [good, str(bad)])
    with pytest.raises(OperationError, match="cannot restore gid 2"):
        store.restore(VOL, 2, [good, str(bad)])
    assert sha1_of(base, len(image)) == sha1(image), "the base is untouched"
    assert lv_names(store.vg) == before, "no snapshot is left behind"
