"""A volume grown on one agent (the ``walb_resize`` module), and the filesystem on it.

On an archive the base grows (WalB's archive resize); on a storage the walb device grows online
over its data device, which must be large enough already (walb_loopdev, walb_lvm_lv grow it),
and with ``grow_fs`` the filesystem mounted on the device grows to fill it: ``online`` (resize2fs
for ext2/3/4, xfs_growfs for xfs; the kernel needs CAP_SYS_RESOURCE for ext), or ``offline`` for
ext (unmounted, checked, grown, mounted again with its options). A volume at least as large is left alone; volumes
never shrink. Run the archives first (``resize.yml`` does): a storage grown first sends diffs the
archive refuses until it is grown too.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

from ..controller import Controller, Server
from ..errors import OperationError, UsageError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from . import Outcome
from .cluster import volume_status

GROWERS = {"ext2": ["resize2fs"], "ext3": ["resize2fs"], "ext4": ["resize2fs"], "xfs": ["xfs_growfs"]}
GROW_FS_MODES = ("no", "online", "offline")
# What resize2fs says when the kernel refuses an online resize: it needs CAP_SYS_RESOURCE, which
# containers often drop.
_ONLINE_REFUSED = "Permission denied to resize filesystem"


def _mount_of(device: str) -> tuple[str, str, str] | None:
    """(mount point, filesystem type, options) of ``device`` (its path or the loop behind it), if mounted."""
    real = os.path.realpath(device)
    with open("/proc/self/mounts") as stream:
        for line in stream:
            source, target, kind, options = line.split()[:4]
            if os.path.realpath(source) == real:
                return target.replace("\\040", " "), kind, options
    return None


def _fs_span(device: str, mount: str, kind: str) -> tuple[int, int]:
    """(bytes the filesystem spans on its device, its block size), as the filesystem itself says."""
    if kind in ("ext2", "ext3", "ext4"):
        text = _run(["dumpe2fs", "-h", os.path.realpath(device)])
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        block = int(fields["Block size"])
        return int(fields["Block count"]) * block, block
    if kind == "xfs":
        match = re.search(r"^data\s+=\s*bsize=(\d+)\s+blocks=(\d+)", _run(["xfs_info", mount]), re.MULTILINE)
        if match is None:
            raise OperationError(f"xfs_info {mount}: no data section")
        return int(match[1]) * int(match[2]), int(match[1])
    raise OperationError(f"{mount}: cannot grow a {kind} filesystem (only {', '.join(sorted(GROWERS))})")


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise OperationError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _grow_fs(device: str, mount: str, kind: str, options: str, mode: str) -> None:
    """Grow the filesystem to its device: online, or (ext only) unmounted, checked, grown and mounted again."""
    real = os.path.realpath(device)
    if mode == "online":
        try:
            _run([*GROWERS[kind], mount if kind == "xfs" else real])
        except OperationError as exc:
            if _ONLINE_REFUSED in str(exc):
                raise OperationError(f"{exc}: the kernel refuses an online resize here (it needs CAP_SYS_RESOURCE, "
                                     "which containers often drop); grow_fs: offline unmounts, grows and mounts it "
                                     "again") from None
            raise
        return
    if kind == "xfs":
        raise OperationError(f"{mount}: xfs grows only mounted (grow_fs: online)")
    _run(["umount", mount])
    try:
        _run(["e2fsck", "-f", "-p", real])  # resize2fs insists on a freshly checked filesystem
        _run(["resize2fs", real])
    finally:
        _run(["mount", "-t", kind, "-o", options, real, mount])


def ensure_resized(controller: Controller, server: Server, vol: str, size: int, *, zeroclear: bool = False,
                   grow_fs: str = "no", check: bool = False) -> Outcome:
    """Make ``vol`` at least ``size`` bytes on ``server`` (an archive or a storage); ``grow_fs`` (online,
    offline) grows the filesystem mounted on a storage's device too."""
    if grow_fs not in GROW_FS_MODES:
        raise UsageError(f"grow_fs must be one of {', '.join(GROW_FS_MODES)}, not {grow_fs!r}")
    if size <= 0 or size % LOGICAL_BLOCK_SIZE:
        raise UsageError(f"size {size} is not a positive multiple of {LOGICAL_BLOCK_SIZE}")
    if server.role not in ("archive", "storage"):
        raise UsageError(f"server {server.name!r} is a {server.role}; resize an archive or a storage")
    status = volume_status(controller, server, vol)
    if status["state"] == "Clear":
        raise OperationError(f"{vol} is not on {server.role} {server.name}")
    current = int(controller.get(server, "vol-size", vol)) * LOGICAL_BLOCK_SIZE
    if size < current:
        raise OperationError(f"{vol} is {current} bytes on {server.name}, more than size={size}; volumes never "
                             "shrink")
    target = max(size, current)
    mounted = _mount_of(status["device"]) if grow_fs != "no" and server.role == "storage" and status.get("device") \
        else None
    span, block = _fs_span(status["device"], *mounted[:2]) if mounted else (None, 0)
    device_grows = size > current
    # A filesystem fills its device when less than one of its blocks is left over.
    fs_grows = span is not None and target - span >= block
    before = {"size": current, "fs_size": span}
    values: dict[str, Any] = {"vol": vol, "server": server.name, "size": target, "fs_grown": fs_grows}
    if check or not (device_grows or fs_grows):
        return Outcome(device_grows or fs_grows, before, {"size": target, "fs_size": None if fs_grows else span},
                       values)
    if device_grows:
        if server.role == "archive":
            controller.resize_archive(server, vol, size, zeroclear)
        else:
            controller.resize_storage(server, vol, size)
    if fs_grows and mounted is not None:
        _grow_fs(status["device"], *mounted, grow_fs)
        span = _fs_span(status["device"], *mounted[:2])[0]
    after = {"size": int(controller.get(server, "vol-size", vol)) * LOGICAL_BLOCK_SIZE, "fs_size": span}
    return Outcome(True, before, after, values)
