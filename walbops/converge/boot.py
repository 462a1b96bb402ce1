"""A storage host's walb devices brought up after a boot and down before a shutdown
(``walbops wdev up`` / ``down``; the ``walbops-device@NAME`` unit, and the roles' boot path
where systemd does not run: docs/operations.md).

Each device has a spec file the walbops_device role writes (``/etc/walbops/devices/NAME.yml``):
its ldev and ddev (block devices, or files that are attached as loop devices, since loop
devices do not survive a reboot), its options, and where its filesystem is mounted. ``up``
attaches the files, starts the device (which redoes its logs, as ``wdev create`` does: every
acknowledged write is back) and, when asked, mounts it. ``down`` unmounts when asked, stops the
device (a final checkpoint) and detaches the files. Both do nothing to what is already so.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from typing import Any

import yaml

from .. import loop
from ..device.registry import DevicePaths, check_name
from ..errors import OperationError, UsageError
from .device import ensure_device
from .loopdev import ensure_loopdev

SPEC_KEYS = {"name", "ldev", "ddev", "overflow", "checkpoint_interval_ms", "metrics_listen", "mount"}
MOUNT_KEYS = {"path", "fs", "options"}


@dataclass(frozen=True)
class Mount:
    path: str
    fs: str
    options: str = "defaults"


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    ldev: str
    ddev: str
    overflow: str | None = None
    checkpoint_interval_ms: int | None = None
    mount: Mount | None = None
    metrics_listen: str | None = None

    @classmethod
    def load(cls, path: str, name: str) -> DeviceSpec:
        """Read a spec file and check it is the one of device ``name``.

        Raises:
            UsageError: unreadable, unknown keys, missing ones, or another device's.
        """
        try:
            with open(path) as stream:
                data = yaml.safe_load(stream)
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"{path}: cannot read the device spec ({exc})") from None
        if not isinstance(data, dict) or not {"name", "ldev", "ddev"} <= set(data) or set(data) - SPEC_KEYS:
            raise UsageError(f"{path}: a device spec has name, ldev, ddev and optionally "
                             f"{', '.join(sorted(SPEC_KEYS - {'name', 'ldev', 'ddev'}))}")
        if data["name"] != name:
            raise UsageError(f"{path} is the spec of device {data['name']!r}, not {name!r}")
        mount = data.get("mount")
        if mount is not None and (not isinstance(mount, dict) or not {"path", "fs"} <= set(mount)
                                  or set(mount) - MOUNT_KEYS):
            raise UsageError(f"{path}: mount has path, fs and optionally options")
        return cls(check_name(str(data["name"])), str(data["ldev"]), str(data["ddev"]), data.get("overflow"),
                   data.get("checkpoint_interval_ms"), Mount(**mount) if mount else None,
                   None if data.get("metrics_listen") is None else str(data["metrics_listen"]))


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        raise OperationError(f"{path}: no such device or file") from None


def _block_device(path: str) -> str:
    """``path`` if it is a block device; a file's loop device, attached if it is not."""
    if not _is_file(path):
        return path
    return str(ensure_loopdev(path, "present", read_only=False).values["device"])


def _mounted_at(spec: DeviceSpec) -> list[str]:
    link = DevicePaths(spec.name).link
    return loop.mount_points(link) if os.path.exists(link) else []


def device_up(spec: DeviceSpec, mount: bool = False) -> dict[str, Any]:
    """Attach, start, and (``mount``) mount device ``spec``; what changed."""
    ldev, ddev = _block_device(spec.ldev), _block_device(spec.ddev)
    started = ensure_device(spec.name, "present", ldev, ddev, spec.overflow, spec.checkpoint_interval_ms,
                            metrics_listen=spec.metrics_listen)
    result: dict[str, Any] = {"name": spec.name, "path": DevicePaths(spec.name).link, "ldev": ldev, "ddev": ddev,
                              "started": started.changed, "mounted": False}
    if mount and spec.mount is not None:
        result["mount"] = spec.mount.path
        if os.path.realpath(spec.mount.path) not in [os.path.realpath(point) for point in _mounted_at(spec)]:
            os.makedirs(spec.mount.path, exist_ok=True)
            _run(["mount", "-t", spec.mount.fs, "-o", spec.mount.options, DevicePaths(spec.name).link,
                  spec.mount.path])
            result["mounted"] = True
    return result


def device_down(spec: DeviceSpec, unmount: bool = False) -> dict[str, Any]:
    """(``unmount``) Unmount, stop (a final checkpoint) and detach device ``spec``; what changed."""
    result: dict[str, Any] = {"name": spec.name, "unmounted": [], "stopped": False, "detached": []}
    if unmount:
        for point in _mounted_at(spec):
            _run(["umount", point])
            result["unmounted"].append(point)
    result["stopped"] = ensure_device(spec.name, "absent").changed
    for path in (spec.ldev, spec.ddev):
        if os.path.exists(path) and _is_file(path):
            result["detached"] += ensure_loopdev(path, "absent").values.get("detached", [])
    return result


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise OperationError(f"{' '.join(command)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
