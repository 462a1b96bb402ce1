"""A running walb device (the ``walb_device`` module).

``present`` starts the device over a formatted ldev and a ddev unless it already runs
over those two (compared by inode, or device number for block devices, so another path
to the same device is the same); a device of that name over other devices is refused,
never restarted behind the user's back. ``absent`` stops it gracefully, refusing while
its block device is mounted unless forced. A daemon that died without cleaning up counts
as absent: ``absent`` removes what it left, ``present`` starts a new one.
"""

from __future__ import annotations

import os
from typing import Any

from ..blockdev import same_node
from ..device.control import DeviceClient
from ..device.core import DeviceConfig
from ..device.lifecycle import start_device, stop_device
from ..device.policy import OverflowPolicy
from ..device.registry import DevicePaths, check_name, read_info
from ..device.system import clear_stale
from ..errors import OperationError, UsageError
from ..loop import mount_points
from . import Outcome
from .ldev import formatted_super, refuse_if_used, require_exists


def same_file(first: str, second: str) -> bool:
    """Whether two paths reach the same block device (by device number) or file (by inode)."""
    try:
        return same_node(os.stat(first), os.stat(second))
    except OSError:
        return False


def _describe(name: str, info: dict[str, Any] | None) -> dict[str, Any]:
    paths = DevicePaths(name)
    if info is None:
        # A dead daemon leaves its info, its /dev link, maybe a loop device and a FUSE mount.
        stale = os.path.exists(paths.info) or os.path.lexists(paths.link)
        return {"name": name, "running": False, "ldev": None, "ddev": None, "stale": stale}
    return {"name": name, "running": True, "ldev": info["ldev"], "ddev": info["ddev"], "stale": False}


def _status(name: str) -> dict[str, Any]:
    with DeviceClient(name) as client:
        return client.call("status")


def ensure_device(name: str, state: str, ldev: str | None = None, ddev: str | None = None,
                  overflow: str | None = None, checkpoint_interval_ms: int | None = None,
                  flush_interval_ms: int | None = None, force: bool = False, check: bool = False,
                  metrics_listen: str | None = None) -> Outcome:
    """Make the walb device ``name`` run over ``ldev`` and ``ddev`` (state present) or not run (absent).

    The options left None are not compared with a running device: a new one gets
    ``DeviceConfig``'s defaults, as ``walbops wdev create`` gives it. ``checkpoint_interval_ms``
    and ``metrics_listen`` (HOST:PORT, empty for none) change on a running device.
    """
    check_name(name)
    info = read_info(name)
    before = _describe(name, info)
    if state == "absent":
        return _absent(name, info, before, force, check)
    if state != "present":
        raise UsageError(f"state must be present or absent, not {state!r}")
    if ldev is None or ddev is None:
        raise UsageError(f"walb device {name!r}: state=present needs ldev and ddev")
    if overflow is not None and overflow not in {str(policy) for policy in OverflowPolicy}:
        raise UsageError(f"overflow must be one of {', '.join(OverflowPolicy)}, not {overflow!r}")
    if info is not None:
        return _running(name, info, before, ldev, ddev, overflow,
                        {"checkpoint_interval_ms": checkpoint_interval_ms, "metrics_listen": metrics_listen}, check)
    require_exists(ldev, ddev)
    if formatted_super(ldev) is None:
        raise OperationError(f"{ldev} holds no walbops/WalB super sector; format it first with walb_ldev "
                             f"(walbops ensure ldev {ldev} {ddev})")
    refuse_if_used(ldev)
    refuse_if_used(ddev)
    path = DevicePaths(name).link
    after = {"name": name, "running": True, "ldev": os.path.abspath(ldev), "ddev": os.path.abspath(ddev),
             "stale": False}
    if check:
        return Outcome(True, before, after, {"name": name, "path": path, "ldev": after["ldev"],
                                             "ddev": after["ddev"]})
    default = DeviceConfig(name, ldev, ddev)
    start_device(name, ldev, ddev, OverflowPolicy(overflow) if overflow else default.overflow,
                 default.checkpoint_interval_ms if checkpoint_interval_ms is None else checkpoint_interval_ms,
                 default.flush_interval_ms if flush_interval_ms is None else flush_interval_ms, metrics_listen or "")
    return Outcome(True, before, after, {**_status(name), "name": name, "path": path})


# The options a running device changes: its status key -> (control operation, its argument)
LIVE_OPTIONS = {"checkpoint_interval_ms": ("set_checkpoint_interval", "interval_ms"),
                "metrics_listen": ("set_metrics_listen", "listen")}


def _running(name: str, info: dict[str, Any], before: dict[str, Any], ldev: str, ddev: str, overflow: str | None,
             wanted: dict[str, Any], check: bool) -> Outcome:
    """A device of that name runs: the same one, or a refusal."""
    if not (same_file(info["ldev"], ldev) and same_file(info["ddev"], ddev)):
        raise OperationError(f"walb device {name!r} runs over ldev {info['ldev']} and ddev {info['ddev']}, not "
                             f"{ldev} and {ddev}; remove it first with state=absent")
    status = _status(name)
    if overflow is not None and overflow != status["overflow_policy"]:
        raise OperationError(f"walb device {name!r} runs with overflow {status['overflow_policy']}, not {overflow}; "
                             "the policy is set at creation: remove it with state=absent and create it again")
    changes = {key: value for key, value in wanted.items() if value is not None and value != status.get(key)}
    before = {**before, **{key: status.get(key) for key in changes}}
    after = {**before, **changes}
    if changes and not check:
        # The daemon checks the values' bounds and form.
        with DeviceClient(name) as client:
            for key, value in changes.items():
                op, argument = LIVE_OPTIONS[key]
                client.call(op, **{argument: value})
        status = _status(name)
    return Outcome(bool(changes), before, after, {**status, "name": name, "path": DevicePaths(name).link})


def _absent(name: str, info: dict[str, Any] | None, before: dict[str, Any], force: bool, check: bool) -> Outcome:
    after = {"name": name, "running": False, "ldev": None, "ddev": None, "stale": False}
    gone = {"name": name, "path": None, "ldev": before["ldev"], "ddev": before["ddev"]}
    if info is None:
        if not before["stale"]:
            return Outcome(False, before, before, gone)
        if not check:
            clear_stale(DevicePaths(name))
        return Outcome(True, before, after, {**gone, "cleared_stale": True})
    loop_device = info.get("loop")
    mounted = mount_points(loop_device) if loop_device and os.path.exists(loop_device) else []
    if mounted and not force:
        raise OperationError(f"walb device {name!r} ({info['path']} = {loop_device}) is mounted at "
                             f"{', '.join(mounted)}; unmount it first, or force: true (--force) stops it anyway")
    if not check:
        stop_device(name, force)
    return Outcome(True, before, after, gone)
