"""A file attached as a loop device (the ``walb_loopdev`` module).

An existing attachment is found by the backing file's inode, so a second ``present``
never adds a second loop device. ``size`` creates a missing file sparse, and grows a
smaller one (the loop device's capacity is refreshed); shrinking is refused.
"""

from __future__ import annotations

import os
from typing import Any

from .. import loop
from ..errors import OperationError, UsageError
from . import Outcome


def _describe(path: str) -> dict[str, Any]:
    exists = os.path.exists(path)
    devices = [attachment.device for attachment in loop.attachments(path)] if exists else []
    return {"file": path, "exists": exists, "size": os.path.getsize(path) if exists else None,
            "devices": devices}


def ensure_loopdev(path: str, state: str, size: int | None = None, read_only: bool = False,
                   check: bool = False) -> Outcome:
    """Make ``path`` attached (state present) or not attached (absent) as a loop device."""
    if state not in ("present", "absent"):
        raise UsageError(f"state must be present or absent, not {state!r}")
    before = _describe(path)
    if state == "absent":
        if not before["devices"]:
            return Outcome(False, before, before, {"device": None, "file": path})
        if not check:
            for device in before["devices"]:
                mounted = loop.mount_points(device)
                if mounted:
                    raise OperationError(f"{path}: loop device {device} is mounted at {', '.join(mounted)}; "
                                         "unmount it before state=absent")
            loop.detach(path)
        after = {**before, "devices": []}
        return Outcome(True, before, after, {"device": None, "file": path, "detached": before["devices"]})

    changed = False
    grow_to = None
    if not before["exists"]:
        if size is None:
            raise OperationError(f"{path} does not exist; give size to create it")
        grow_to = size
    elif size is not None and size != before["size"]:
        if size < before["size"]:
            raise OperationError(f"{path} is {before['size']} bytes, more than size={size}; "
                                 "a loop file is never shrunk (remove it first)")
        grow_to = size
    if grow_to is not None:
        changed = True
        if not check:
            with open(path, "ab") as stream:
                stream.truncate(grow_to)
    devices = list(before["devices"])
    if devices:
        existing = loop.attachments(path)[0]
        if existing.read_only != read_only:
            mode = "read-only" if existing.read_only else "read-write"
            raise OperationError(f"{path} is attached {mode} as {existing.device}; "
                                 "set state=absent first to change read_only")
        if grow_to is not None and not check:
            for device in devices:
                loop.run(["losetup", "--set-capacity", device])
        device = devices[0]
    else:
        changed = True
        device = loop.attach(path, read_only=read_only) if not check else None
        devices = [device] if device else ["(new loop device)"]
    after = {"file": path, "exists": True, "size": grow_to if grow_to is not None else before["size"],
             "devices": devices}
    return Outcome(changed, before, after, {"device": device, "file": path})
