"""The system tools a walb device needs: losetup, umount, and cleaning up after a dead daemon."""

from __future__ import annotations

import json
import os
import subprocess

from ..loop import backing_file, resolved
from .registry import DevicePaths


def loop_busy(loop: str) -> bool:
    """Whether something holds the loop device exclusively (a mount, another exclusive open)."""
    try:
        fd = os.open(loop, os.O_RDONLY | os.O_EXCL)
    except OSError:
        return True
    os.close(fd)
    return False


def clear_stale(paths: DevicePaths) -> None:
    """Remove what a dead daemon left behind: a loop device, a FUSE mount, files."""
    info_loop = None
    try:
        with open(paths.info) as stream:
            info_loop = json.load(stream).get("loop")
    except (OSError, json.JSONDecodeError):
        pass
    # The loop device recorded in the info may have been released already (a normal stop detaches
    # it first) and attached since by someone else: detach it only while it still backs our volume.
    if info_loop and backing_file(info_loop) == resolved(paths.volume):
        subprocess.run(["losetup", "-d", info_loop], capture_output=True)
    # A dead daemon's FUSE mount answers ENOTCONN to everything, exists() included.
    subprocess.run(["umount", "-l", paths.volume], capture_output=True)
    for path in (paths.info, paths.pid, paths.control, paths.volume):
        try:
            os.unlink(path)
        except (FileNotFoundError, IsADirectoryError):
            pass
        except OSError:
            pass
    if os.path.islink(paths.link):
        os.unlink(paths.link)
