"""Loop devices over restored images, so a snapshot can be mounted (util-linux ``losetup``).

An image is attached at most once: an existing loop device over the same file (or block
device) is found in sysfs (``/sys/block/loopN/loop/backing_file``), which the kernel renders
from the open file at the time of reading, so it follows a rename. Nothing here asks the
kernel about a loop device's backing inode (``losetup --list`` with ``BACK-INO``, or ``-a``):
that ioctl stats the backing file, and over the FUSE file of a walb device whose daemon hangs
it never returns; reading sysfs never blocks.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import OperationError

SYS_BLOCK = Path("/sys/block")
DELETED_SUFFIX = " (deleted)"  # what the kernel appends to the name of an unlinked backing file


@dataclass(frozen=True)
class Attachment:
    """A loop device and whether it is read-only."""

    device: str
    read_only: bool


def run(command: list[str]) -> str:
    """Run a system tool; its stderr becomes the error message."""
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise OperationError(f"{command[0]}: command not found") from None
    if result.returncode != 0:
        raise OperationError(f"{' '.join(command)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result.stdout.strip()


def _read_sys(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # the device went away between listing and reading
        return None


def backing_file(device: str) -> str | None:
    """The file a loop device is attached to, as sysfs names it, or None if it is free."""
    return _read_sys(SYS_BLOCK / os.path.basename(device) / "loop" / "backing_file")


def resolved(path: str) -> str:
    """``path`` as sysfs names a backing file, symlinks resolved.

    A device node (``/dev/vg/lv`` is a link to ``/dev/dm-3``) is resolved entirely; any other
    file only up to its directory: it may be a walb device's FUSE file, and resolving the file
    itself would stat it (see the module's docstring).
    """
    absolute = os.path.abspath(path)
    if absolute.startswith("/dev/"):
        return os.path.realpath(absolute)
    return os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))


def attached() -> list[tuple[str, str, bool]]:
    """Every attached loop device: (device, backing file as sysfs names it, read-only)."""
    found = []
    for entry in sorted(SYS_BLOCK.glob("loop[0-9]*")):
        back = _read_sys(entry / "loop" / "backing_file")
        if back:
            found.append((f"/dev/{entry.name}", back, _read_sys(entry / "ro") == "1"))
    return found


def attachments(path: str) -> list[Attachment]:
    """The loop devices whose backing file is ``path`` (an image file or a device node)."""
    wanted = resolved(path)
    return [Attachment(device, read_only) for device, back, read_only in attached() if back == wanted]


def devices_under(root: str) -> list[str]:
    """Loop devices whose backing file lies under the directory ``root``, deleted or not."""
    prefix = resolved(root) + os.sep
    return [device for device, back, _ in attached() if back.removesuffix(DELETED_SUFFIX).startswith(prefix)]


def attach(path: str, read_only: bool = True) -> str:
    """A loop device over ``path``: the existing one if there is one, else a new one.

    Raises:
        OperationError: ``path`` is already attached with the other access mode, or
            losetup failed.
    """
    for existing in attachments(path):
        if existing.read_only == read_only:
            return existing.device
        mode = "read-only" if existing.read_only else "read-write"
        raise OperationError(f"{path} is already attached {mode} as {existing.device}; detach it first")
    command = ["losetup", "--find", "--show"]
    if read_only:
        command.append("--read-only")
    return run([*command, path])


def mount_points(device: str) -> list[str]:
    """Where the block device ``device`` is mounted, from /proc/self/mountinfo."""
    rdev = os.stat(device).st_rdev
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    points = []
    with open("/proc/self/mountinfo") as stream:
        for line in stream:
            fields = line.split()
            if len(fields) > 4 and fields[2] == wanted:
                points.append(fields[4])
    return points


def detach(*paths: str) -> list[str]:
    """Detach every loop device over ``paths``; returns the devices detached.

    Raises:
        OperationError: one is mounted (detaching would only mark it for autoclear and
            leave the image in use); then none is detached.
    """
    found = [(path, attachment) for path in paths for attachment in attachments(path)]
    for path, attachment in found:
        mounted = mount_points(attachment.device)
        if mounted:
            raise OperationError(f"{path}: loop device {attachment.device} is mounted at {', '.join(mounted)}; "
                                 "unmount it first")
    for _, attachment in found:
        run(["losetup", "--detach", attachment.device])
    return [attachment.device for _, attachment in found]
