"""Loop devices over restored images, so a snapshot can be mounted (util-linux ``losetup``).

An image is attached at most once: an existing loop device over the same file (or
block device) is found by the backing inode the kernel records (``BACK-MAJ:MIN`` and
``BACK-INO``), not by its path, which a rename would change.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from ..errors import OperationError


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


def _backing_key(path: str) -> tuple[int, int, int]:
    """(major, minor, inode) of the inode a loop device over ``path`` records."""
    info = os.stat(path)
    return os.major(info.st_dev), os.minor(info.st_dev), info.st_ino


def attachments(path: str) -> list[Attachment]:
    """The loop devices whose backing file is ``path`` (an image file or a device node)."""
    try:
        key = _backing_key(path)
    except FileNotFoundError:
        return []
    output = run(["losetup", "--json", "--list", "--output", "NAME,BACK-INO,BACK-MAJ:MIN,RO"])
    found = []
    for entry in json.loads(output or "{}").get("loopdevices", []):
        major, _, minor = str(entry.get("back-maj:min", "")).strip().partition(":")
        try:
            entry_key = (int(major), int(minor), int(entry.get("back-ino")))
        except (TypeError, ValueError):
            continue  # a loop device being torn down has no backing file any more
        if entry_key == key:
            found.append(Attachment(entry["name"], bool(entry.get("ro"))))
    return found


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
