"""DirStore on a real xfs with reflinks: the restore shares extents, attaches and mounts."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from walbops.diff.io import DiffIo
from walbops.diff.sorted_file import SortedDiffWriter
from walbops.errors import OperationError
from walbops.loop import attachments
from walbops.store import CloneMethod
from walbops.store.dirstore import DirStore

MiB = 1 << 20
LB = 512
VOL = "vol-x"
BLOCK = 4096  # [bytes] granularity of the block diff below


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout


def require_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (loop devices, mounts)")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/bootstrap (xfsprogs, e2fsprogs, util-linux)")


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """An xfs with reflink=1 on a loop device over a sparse file, mounted; torn down after."""
    require_tools("mkfs.xfs", "mkfs.ext4", "losetup", "mount", "umount", "filefrag")
    image = tmp_path / "xfs.img"
    with open(image, "wb") as stream:
        stream.truncate(512 * MiB)  # mkfs.xfs wants at least 300 MiB
    run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image))
    loop = run("losetup", "--find", "--show", str(image)).strip()
    mount_point = tmp_path / "xfs"
    mount_point.mkdir()
    mounted = False
    try:
        run("mount", loop, str(mount_point))
        mounted = True
        yield mount_point
    finally:
        if mounted:
            subprocess.run(["umount", str(mount_point)], capture_output=True)
        subprocess.run(["losetup", "--detach", loop], capture_output=True)


def ext4_image(path: Path, size: int, files: dict[str, bytes], source: Path) -> None:
    """An ext4 of ``size`` bytes at ``path`` holding ``files`` (mkfs.ext4 -d)."""
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    for name, data in files.items():
        (source / name).write_bytes(data)
    if not path.exists():
        with open(path, "wb") as stream:
            stream.truncate(size)
    run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-U",
        "3f0c2b4e-8d4a-4c55-9a11-0123456789ab", "-d", str(source), str(path))


def block_diff(old: Path, new: Path, out: Path) -> int:
    """A sorted wdiff that takes ``old`` to ``new``: the BLOCKs that differ; returns their count."""
    changed = 0
    with open(old, "rb") as a, open(new, "rb") as b, open(out, "wb") as stream:
        writer = SortedDiffWriter(stream, bytes(16))
        offset = 0
        while True:
            x, y = a.read(BLOCK), b.read(BLOCK)
            if not y:
                break
            if x != y:
                writer.write(DiffIo.normal(offset // LB, y))
                changed += 1
            offset += len(y)
        writer.close()
    return changed


def test_restore_is_a_reflink_and_mounts(xfs: Path, tmp_path: Path):
    store = DirStore(str(xfs / "archive"))
    size = 64 * MiB
    base = Path(store.create_base(VOL, size // LB))
    ext4_image(base, size, {"hello.txt": b"hello from gid 0\n", "big.bin": os.urandom(8 * MiB)}, tmp_path / "src0")
    # The volume at gid 3: the same filesystem rebuilt with other contents, as a block diff.
    newer = tmp_path / "gid3.img"
    ext4_image(newer, size, {"hello.txt": b"hello from gid 3\n", "big.bin": os.urandom(8 * MiB)}, tmp_path / "src3")
    diff = tmp_path / "20240101000000----0-3.wdiff"
    assert block_diff(base, newer, diff) > 0

    restored = store.restore(VOL, 3, [str(diff)])
    assert restored.clone == CloneMethod.REFLINK
    assert Path(restored.path).read_bytes() == newer.read_bytes()
    frag = run("filefrag", "-v", restored.path)
    assert "shared" in frag, frag  # the extents the diff did not touch are still the base's

    mount_point = tmp_path / "restored"
    mount_point.mkdir()
    device = store.attach(VOL, 3)
    mounted = False
    try:
        assert device.startswith("/dev/loop")
        assert store.attach(VOL, 3) == device, "an attached image is reused, not attached twice"
        assert [a.read_only for a in attachments(restored.path)] == [True]
        with pytest.raises(OperationError, match="already attached read-only"):
            store.attach(VOL, 3, read_only=False)
        run("mount", "-o", "ro", device, str(mount_point))
        mounted = True
        assert (mount_point / "hello.txt").read_bytes() == b"hello from gid 3\n"
        with pytest.raises(OperationError, match=f"loop device {device} is mounted at {mount_point}"):
            store.delete_restored(VOL, 3)
        run("umount", str(mount_point))
        mounted = False
        assert store.detach(VOL, 3) == [device]
        assert attachments(restored.path) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(mount_point)], capture_output=True)
        for attachment in attachments(restored.path):
            subprocess.run(["losetup", "--detach", attachment.device], capture_output=True)

    # delete_restored detaches what is still attached.
    device = store.attach(VOL, 3)
    store.delete_restored(VOL, 3)
    assert store.restored(VOL) == [] and not os.path.exists(restored.path)
    assert device not in run("losetup", "--list", "--noheadings", "--output", "NAME").split()


def test_reflink_shares_space(xfs: Path):
    store = DirStore(str(xfs / "archive"), clone="reflink")
    size_lb = 256 * MiB // LB
    store.create_base(VOL, size_lb)
    with store.open_base(VOL) as target:
        chunk = os.urandom(MiB)
        for offset in range(0, 128 * MiB, MiB):
            os.pwrite(target.fd, chunk, offset)
    free_before = os.statvfs(xfs).f_bfree * os.statvfs(xfs).f_frsize
    restored = store.restore(VOL, 1, [])
    free_after = os.statvfs(xfs).f_bfree * os.statvfs(xfs).f_frsize
    assert restored.clone == CloneMethod.REFLINK
    assert free_before - free_after < 8 * MiB, "128 MiB of data cloned without copying it"
    assert os.stat(restored.path).st_blocks * 512 >= 128 * MiB, "the clone maps all of the base's data"
