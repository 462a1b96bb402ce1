"""A formatted log device (the ``walb_ldev`` module).

An ldev that already holds a valid walbops/WalB super sector is left alone: formatting
gives it a new uuid and salt, which throws its logs away and makes the archives refuse
the volume's next diffs. ``force`` formats it again anyway, but never while a running
walb device uses it.
"""

from __future__ import annotations

import os
from typing import Any

from ..blockdev import physical_block_size
from ..device.lifecycle import format_checked
from ..device.registry import device_using
from ..diff.logs import read_super
from ..errors import FormatError, OperationError, UsageError
from ..formats.ldev import VALID_PBS, SuperSector
from . import Outcome

DEFAULT_PBS = 512  # [bytes] what format-ldev uses on a regular file (a block device tells its own)


def require_exists(*paths: str) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such device or file")


def formatted_super(ldev: str) -> SuperSector | None:
    """The super sector of ``ldev``; None when it holds no valid one (never formatted, or wiped)."""
    require_exists(ldev)
    fd = os.open(ldev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_super(fd)
    except FormatError:
        return None
    finally:
        os.close(fd)


def refuse_if_used(path: str) -> None:
    """Refuse a device or file that a running walb device uses as its ldev or ddev."""
    user = device_using(path)
    if user is not None:
        raise OperationError(f"{path} is in use by the running walb device {user!r}; remove it first with "
                             f"walb_device state=absent (walbops ensure device {user} --state absent)")


def _describe(ldev: str, sector: SuperSector | None) -> dict[str, Any]:
    if sector is None:
        return {"ldev": ldev, "formatted": False, "uuid": None, "name": None, "pbs": None, "ring_buffer_size": None}
    return {"ldev": ldev, "formatted": True, "uuid": sector.uuid_hex, "name": sector.name, "pbs": sector.physical_bs,
            "ring_buffer_size": sector.ring_buffer_size}


def _pbs_of(ldev: str) -> int:
    fd = os.open(ldev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return physical_block_size(fd) or DEFAULT_PBS
    finally:
        os.close(fd)


def ensure_ldev(ldev: str, ddev: str, name: str | None = None, pbs: int | None = None, force: bool = False,
                check: bool = False) -> Outcome:
    """Make ``ldev`` a formatted log device for ``ddev``; format a formatted one again only with ``force``."""
    if pbs is not None and pbs not in VALID_PBS:
        raise UsageError(f"pbs must be 512 or 4096, not {pbs}")
    require_exists(ldev, ddev)
    before = _describe(ldev, formatted_super(ldev))
    if before["formatted"] and not force:
        if pbs is not None and pbs != before["pbs"]:
            raise OperationError(f"{ldev} is formatted with pbs {before['pbs']}, not {pbs}; force: true (--force) "
                                 "formats it again, losing its logs")
        return Outcome(False, before, before, {**before, "ddev": ddev})
    refuse_if_used(ldev)
    refuse_if_used(ddev)
    if check:
        # The uuid and the ring are only known once written.
        after = {**before, "formatted": True, "uuid": None, "name": name or "", "pbs": pbs or _pbs_of(ldev),
                 "ring_buffer_size": None}
    else:
        after = _describe(ldev, format_checked(ldev, ddev, name or "", pbs))
    return Outcome(True, before, after, {**after, "ddev": ddev})
