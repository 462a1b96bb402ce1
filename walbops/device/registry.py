"""Where running walb devices live: a runtime directory per device and a /dev symlink.

::

    $WALBOPS_RUN_DIR/NAME/   (default /run/walbops/NAME)
        volume         the FUSE mount point (a file: the FUSE root is the volume itself)
        control.sock   the control socket
        info.json      pid, loop device, ldev, ddev, written when the device is ready
        daemon.pid     the daemon's pid (a service manager's PIDFile)
    $WALBOPS_DEV_DIR/NAME  (default /dev/walbops/NAME) -> /dev/loopN
    log_root()/device-NAME.log   the daemon's log, kept across reboots (default /var/log/walbops)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from ..durable import atomic_write
from ..errors import UsageError

NAME_PATTERN = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,30}")  # fits WalB's 32-byte name with its NUL


def run_root() -> str:
    return os.environ.get("WALBOPS_RUN_DIR", "/run/walbops")


def dev_root() -> str:
    return os.environ.get("WALBOPS_DEV_DIR", "/dev/walbops")


def log_root() -> str:
    """Where the devices' logs go: not in the run dir, which a reboot empties (/run is a tmpfs).
    WALBOPS_LOG_DIR, else with WALBOPS_RUN_DIR set (a test, a benchmark, the demo) beside its
    devices in ``.logs``, else /var/log/walbops."""
    if "WALBOPS_LOG_DIR" in os.environ:
        return os.environ["WALBOPS_LOG_DIR"]
    if "WALBOPS_RUN_DIR" in os.environ:
        return os.path.join(os.environ["WALBOPS_RUN_DIR"], ".logs")  # no device name starts with a dot
    return "/var/log/walbops"


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"device name {name!r}: 1-31 characters of [0-9A-Za-z_.-], not starting with . or -")
    return name


@dataclass(frozen=True)
class DevicePaths:
    """The files of one device."""

    name: str

    @property
    def run_dir(self) -> str:
        return os.path.join(run_root(), self.name)

    @property
    def volume(self) -> str:
        return os.path.join(self.run_dir, "volume")

    @property
    def control(self) -> str:
        return os.path.join(self.run_dir, "control.sock")

    @property
    def info(self) -> str:
        return os.path.join(self.run_dir, "info.json")

    @property
    def log(self) -> str:
        return os.path.join(log_root(), f"device-{self.name}.log")

    @property
    def pid(self) -> str:
        """The daemon's pid, for a service manager (the walbops-device@ unit's PIDFile)."""
        return os.path.join(self.run_dir, "daemon.pid")

    @property
    def link(self) -> str:
        return os.path.join(dev_root(), self.name)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (killed, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stream:
            # The state follows the parenthesised command name, which may contain spaces.
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_info(name: str) -> dict[str, Any] | None:
    """The info of a running device, or None if it is not running."""
    try:
        with open(DevicePaths(name).info) as stream:
            info: dict[str, Any] = json.load(stream)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info if pid_alive(int(info.get("pid", -1))) else None


def write_info(name: str, info: dict[str, Any]) -> None:
    atomic_write(DevicePaths(name).info, json.dumps(info).encode())


def running_devices() -> list[dict[str, Any]]:
    """Infos of every running device, by name."""
    root = run_root()
    if not os.path.isdir(root):
        return []
    found = []
    for name in sorted(os.listdir(root)):
        info = read_info(name)
        if info is not None:
            found.append(info)
    return found


def device_using(path: str) -> str | None:
    """Name of the running device whose ldev or ddev is ``path``, if any."""
    real = os.path.realpath(path)
    for info in running_devices():
        if real in (os.path.realpath(info["ldev"]), os.path.realpath(info["ddev"])):
            return str(info["name"])
    return None
