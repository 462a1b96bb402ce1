"""The walb device's lifecycle: format its ldev, start its daemon, stop it.

This is the one implementation of these three steps, with their checks and messages;
``walbops wdev format-ldev/create/delete`` print what they return, and the ensure
operations (``walbops.converge``) decide whether to call them, not how they work.

A device runs as its own daemon process (:mod:`walbops.device.daemon`), detached from
its caller in a new session: starting one waits for the daemon to say, over a pipe,
that its block device is usable (or why it is not), so a caller never sees a
half-started device; stopping one asks it over the control socket and waits for the
process to be gone, so the ldev and ddev are free again when ``stop_device`` returns.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..blockdev import is_block_device
from ..errors import OperationError, UsageError
from ..formats.ldev import SuperSector
from .control import DeviceClient
from .core import DeviceConfig, OverflowPolicy, format_ldev
from .registry import DevicePaths, check_name, device_using, pid_alive, read_info
from .system import clear_stale

START_TIMEOUT = 60.0  # [s] for a new device to become usable
STOP_TIMEOUT = 60.0  # [s] for a deleted device's daemon to exit
_READY_POLL = 0.5  # [s] longest wait on the ready pipe between deadline checks
_EXIT_WAIT = 10.0  # [s] to reap a daemon that closed its ready pipe without a reply
_STOP_POLL = 0.05  # [s] between checks that a stopping daemon is gone


@dataclass(frozen=True)
class Started:
    """A device whose daemon said it is ready."""

    name: str
    path: str  # the /dev/walbops/NAME link
    loop: str  # the loop device the link points to
    pid: int  # the daemon's


@dataclass(frozen=True)
class Stopped:
    """A device that no longer runs."""

    name: str
    # False: its daemon had died already, and only what it left behind was removed.
    was_running: bool
    pid: int | None  # the daemon that stopped; None when it had died already


def _require_free(paths: tuple[str, ...], advice: str = "") -> None:
    """Refuse a path that does not exist or that a running walb device uses as its ldev or ddev."""
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such device or file")
        user = device_using(path)
        if user is not None:
            raise OperationError(f"{path} is in use by walb device {user!r}{advice}")


def refuse_if_busy(path: str) -> None:
    """A block device that is mounted or held open exclusively is in use."""
    fd = os.open(path, os.O_RDONLY)
    try:
        block = is_block_device(fd)
    finally:
        os.close(fd)
    if block:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_EXCL))
        except OSError:
            raise OperationError(f"{path} is in use (mounted or held open)") from None


def format_checked(ldev: str, ddev: str, name: str = "", pbs: int | None = None,
                   discard: bool = True) -> SuperSector:
    """Format ``ldev`` for ``ddev`` (new uuid and salt, empty ring) unless either is in use.

    Formatting throws away every log on the ldev, so a device or file a running walb
    device uses, or a mounted or otherwise held block device, is refused first. ``pbs``
    None takes the ldev's physical block size.
    """
    _require_free((ldev, ddev), "; delete it first")
    if os.path.realpath(ldev) == os.path.realpath(ddev):
        raise UsageError("the ldev and the ddev must be different devices")
    refuse_if_busy(ldev)
    return format_ldev(ldev, ddev, name, pbs, discard)


def start_device(name: str, ldev: str, ddev: str, overflow: OverflowPolicy = DeviceConfig.overflow,
                 checkpoint_interval_ms: int = DeviceConfig.checkpoint_interval_ms,
                 flush_interval_ms: int = DeviceConfig.flush_interval_ms, metrics_listen: str = "") -> Started:
    """Start the daemon of device ``name`` over ``ldev`` and ``ddev``; returns once it is usable.

    The daemon outlives its caller (a new session, stdio to its log), and reports over
    an inherited pipe when its block device exists or why it failed; one that says
    nothing within START_TIMEOUT is terminated. The defaults are :class:`DeviceConfig`'s,
    as the daemon's own; ``metrics_listen`` (HOST:PORT) has it serve Prometheus metrics.
    """
    check_name(name)
    if read_info(name) is not None:
        raise OperationError(f"walb device {name!r} is already running")
    _require_free((ldev, ddev))
    paths = DevicePaths(name)
    os.makedirs(paths.run_dir, exist_ok=True)
    os.makedirs(os.path.dirname(paths.log), exist_ok=True)
    ready_read, ready_write = os.pipe()
    command = [sys.executable, "-m", "walbops.device.daemon", "--name", name, "--ldev", os.path.abspath(ldev),
               "--ddev", os.path.abspath(ddev), "--overflow", str(overflow),
               "--checkpoint-interval-ms", str(checkpoint_interval_ms),
               "--flush-interval-ms", str(flush_interval_ms), "--metrics-listen", metrics_listen,
               "--ready-fd", str(ready_write)]
    with open(paths.log, "ab") as log_file:
        process = subprocess.Popen(command, pass_fds=(ready_write,), start_new_session=True, stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=subprocess.STDOUT, cwd="/")
    os.close(ready_write)
    try:
        reply = _await_ready(ready_read, process)
    finally:
        os.close(ready_read)
    if not reply.get("ok"):
        raise OperationError(f"walb device {name!r} did not start: {reply.get('error', 'unknown error')} "
                             f"(log: {paths.log})")
    return Started(name, str(reply["path"]), str(reply["loop"]), process.pid)


def _await_ready(fd: int, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The daemon's one-line JSON reply on the ready pipe, or a failed one of our own."""
    deadline = time.monotonic() + START_TIMEOUT
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.terminate()
            return {"ok": False, "error": f"not ready within {START_TIMEOUT:.0f} s"}
        readable, _, _ = select.select([fd], [], [], min(remaining, _READY_POLL))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
    if b"\n" not in buffer:
        code = process.wait(timeout=_EXIT_WAIT)
        return {"ok": False, "error": f"the daemon exited with status {code}"}
    result: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return result


def stop_device(name: str, force: bool = False) -> Stopped:
    """Stop device ``name``: a final checkpoint, detach, and wait until its daemon is gone.

    The daemon refuses while the device is mounted or open, unless ``force``. A daemon
    that died without cleaning up (a loop device, a FUSE mount, files) is not running,
    and what it left behind is removed only with ``force``.
    """
    check_name(name)
    info = read_info(name)
    paths = DevicePaths(name)
    if info is None:
        if not os.path.exists(paths.info) and not os.path.lexists(paths.link):
            raise OperationError(f"walb device {name!r} is not running")
        if not force:
            raise OperationError(f"walb device {name!r} is not running but its daemon left files behind; "
                                 "--force cleans them up")
        clear_stale(paths)  # a dead daemon's loop device, FUSE mount and files
        return Stopped(name, was_running=False, pid=None)
    with DeviceClient(name) as client:
        client.call("stop", force=force)
    deadline = time.monotonic() + STOP_TIMEOUT
    pid = int(info["pid"])
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(_STOP_POLL)
    else:
        raise OperationError(f"walb device {name!r} (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s")
    return Stopped(name, was_running=True, pid=pid)


def resize_device(name: str, size_lb: int) -> dict[str, Any]:
    """Grow running device ``name`` to ``size_lb`` LB (0: as large as its ddev), online.

    The loop device over the FUSE file learns the new size only when told (``losetup
    --set-capacity``); that is done here too, so a filesystem on it can grow next.

    Raises:
        OperationError: shrinking, or the ddev is too small.
    """
    check_name(name)
    with DeviceClient(name) as client:
        result: dict[str, Any] = client.call("resize", size_lb=size_lb)
    info = read_info(name)
    if info is not None and info.get("loop"):
        subprocess.run(["losetup", "--set-capacity", info["loop"]], capture_output=True, check=False)
    return result
