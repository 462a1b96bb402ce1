"""A restored snapshot on an archive, present or absent (the ``walb_restore`` module).

``gid`` is a number, ``latest`` (the newest restorable snapshot) or, for ``absent``,
``all``. A present restore is attached as a loop device, so it can be checked and
mounted; ``digest`` returns the sha256 of the restored image for a drill to compare.
"""

from __future__ import annotations

import time
from typing import Any

from ..controller import Controller, Server
from ..errors import OperationError, UsageError
from . import Outcome
from .backup import digest_of
from .cluster import volume_status


def _restored(controller: Controller, archive: Server, vol: str) -> list[int]:
    return sorted(int(gid) for gid in controller.get(archive, "restored", vol))


def resolve_gid(controller: Controller, archive: Server, vol: str, gid: str, include_implicit: bool) -> int:
    """A gid from ``gid``: a number, or ``latest`` (the newest restorable)."""
    if gid == "latest":
        restorable = controller.get_restorable(archive, vol, include_implicit)
        if not restorable:
            raise OperationError(f"{vol} has no restorable snapshot on archive {archive.name}: "
                                 "take one with walb_snapshot")
        return max(restorable)
    try:
        return int(gid)
    except ValueError:
        raise UsageError(f"gid must be a number or latest (or all with state=absent), not {gid!r}") from None


def ensure_restored(controller: Controller, archive: Server, vol: str, gid: str, state: str, *,
                    include_implicit: bool = False, digest: bool = False, timeout: float = 3600.0,
                    check: bool = False) -> Outcome:
    status = volume_status(controller, archive, vol)
    if status["state"] == "Clear":
        raise OperationError(f"{vol} is not on archive {archive.name}: nothing to restore")
    restored = _restored(controller, archive, vol)
    before = {"restored": restored}
    if state == "absent":
        if gid == "all":
            gone = restored
        else:
            number = resolve_gid(controller, archive, vol, gid, include_implicit)
            gone = [number] if number in restored else []
        if not check:
            for number in gone:
                controller.del_restored(archive, vol, number)
        after = {"restored": [number for number in restored if number not in gone]}
        return Outcome(bool(gone), before, after, {"vol": vol, "archive": archive.name, "removed": gone})
    if state != "present":
        raise UsageError(f"state must be present or absent, not {state!r}")
    number = resolve_gid(controller, archive, vol, gid, include_implicit)
    values: dict[str, Any] = {"vol": vol, "archive": archive.name, "gid": number}
    if number in restored:
        values["device"] = controller.get_restored_path(archive, vol, number)
        changed, duration = False, 0.0
    else:
        if number not in controller.get_restorable(archive, vol, include_implicit=True):
            raise OperationError(f"{vol}: gid {number} is not restorable on archive {archive.name}")
        changed = True
        if check:
            after = {"restored": sorted([*restored, number])}
            return Outcome(True, before, after, {**values, "device": None, "digest": None, "duration": None})
        started = time.monotonic()
        values["device"] = controller.restore(archive, vol, number, timeout)
        duration = time.monotonic() - started
    values["duration"] = round(duration, 3)
    values["digest"] = digest_of(values["device"]) if digest and values["device"] else None
    after = {"restored": sorted({*restored, number})}
    return Outcome(changed, before, after, values)
