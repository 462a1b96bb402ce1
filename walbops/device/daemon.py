"""The device daemon: one process per walb device (``walbops wdev create`` starts it).

Lifecycle: open the device (redoing logs after a crash) → control socket → FUSE mount
on the volume file → loop device and ``/dev/walbops/NAME`` → report ready to the parent
through a pipe → serve until ``stop`` → detach the loop device, unmount, final flush and
checkpoint, remove the runtime files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import mfusepy

from .. import logs
from ..errors import OperationError, WalbopsError
from ..loop import run
from .control import Controller, ControlServer
from .core import LB, DeviceConfig, OverflowPolicy, WalbDevice
from .frontend import VolumeFile
from .metrics import DeviceMetrics
from .registry import DevicePaths, check_name, device_using, read_info, write_info
from .system import clear_stale, loop_busy

log = logging.getLogger("walbops.device")

MOUNT_TIMEOUT = 20.0  # [s] for the FUSE mount to appear
UNMOUNT_ATTEMPTS = 100  # 5 s of tries at 50 ms before a stop falls back to a lazy unmount
POLL = 0.01  # [s]


class Daemon:
    """Owns the device, the control server, the FUSE mount and the loop device."""

    def __init__(self, config: DeviceConfig, ready_fd: int | None, metrics_listen: str = "") -> None:
        self.config = config
        self.metrics_listen = metrics_listen
        self.metrics: DeviceMetrics | None = None
        self.paths = DevicePaths(config.name)
        self.ready_fd = ready_fd
        self.loop: str | None = None
        self.device: WalbDevice | None = None
        self._stopping = threading.Event()

    def report(self, message: dict[str, Any]) -> None:
        if self.ready_fd is None:
            return
        os.write(self.ready_fd, json.dumps(message).encode() + b"\n")
        os.close(self.ready_fd)
        self.ready_fd = None

    def status(self) -> dict[str, Any]:
        device = self.device
        if device is None:
            raise OperationError("device is not open")
        return {
            "name": self.config.name, "pid": os.getpid(), "path": self.paths.link, "loop": self.loop,
            "ldev": self.config.ldev, "ddev": self.config.ddev, "uuid": device.super.uuid.hex(),
            "pbs": device.pbs, "size_lb": device.size_lb, "lsids": device.lsids().as_dict(),
            "log_usage_pb": device.log_usage(), "log_capacity_pb": device.log_capacity(),
            "overflow": device.overflow, "overflow_policy": str(self.config.overflow), "frozen": device.frozen,
            "checkpoint_interval_ms": device.checkpoint_interval_ms,
            "metrics_listen": self.metrics.server.listen if self.metrics else "",
        }

    def set_metrics_listen(self, listen: str) -> None:
        if self.metrics is None:
            raise OperationError("device is not open")
        self.metrics.listen(listen)
        log.info("%s: metrics %s", self.config.name, f"at http://{listen}/metrics" if listen else "off")

    def serve(self) -> int:
        os.makedirs(self.paths.run_dir, exist_ok=True)
        try:
            self.device = WalbDevice(self.config)
        except (WalbopsError, OSError) as exc:
            self.report({"ok": False, "error": str(exc)})
            return 1
        with open(self.paths.volume, "a"):
            pass  # the FUSE mount point is a file
        self.metrics = DeviceMetrics(self.device, self.status)
        try:
            self.set_metrics_listen(self.metrics_listen)
        except OperationError as exc:
            self.report({"ok": False, "error": str(exc)})
            self.device.close()
            self._remove_runtime_files()
            return 1
        server = ControlServer(self.paths.control, Controller(self.device, self.status, self.stop,
                                                              self.set_metrics_listen))
        server.start()
        threading.Thread(target=self._attach, args=(self.device,), name="walb-attach", daemon=True).start()
        try:
            mfusepy.FUSE(VolumeFile(self.device), self.paths.volume, foreground=True, nothreads=False,
                         fsname=f"walbops-{self.config.name}", subtype="walbops",
                         attr_timeout=0)  # a resize must show at once (losetup --set-capacity)
        except RuntimeError as exc:
            self.report({"ok": False, "error": f"FUSE mount failed: {exc}"})
        finally:
            server.shutdown()
            self.metrics.close()
            self._detach_loop()
            self.device.close()
            self._remove_runtime_files()
            log.info("%s: stopped", self.config.name)
        return 0

    def _remove_runtime_files(self) -> None:
        clear_stale(self.paths)
        try:
            os.rmdir(self.paths.run_dir)
        except OSError:
            pass  # not empty: another file someone put there stays

    def _attach(self, device: WalbDevice) -> None:
        """Once the FUSE file is mounted: loop device, symlink, info, ready."""
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.paths.volume):
            if time.monotonic() > deadline:
                self.report({"ok": False, "error": "the FUSE mount did not appear"})
                self._unmount()
                return
            time.sleep(POLL)
        try:
            self.loop = run(["losetup", "--find", "--show", "--sector-size", "512", self.paths.volume])
            os.makedirs(os.path.dirname(self.paths.link), exist_ok=True)
            if os.path.islink(self.paths.link):
                os.unlink(self.paths.link)
            os.symlink(self.loop, self.paths.link)
            write_info(self.config.name, {
                "name": self.config.name, "pid": os.getpid(), "loop": self.loop, "path": self.paths.link,
                "ldev": self.config.ldev, "ddev": self.config.ddev, "volume": self.paths.volume,
                "size_bytes": device.size_lb * LB,
            })
            with open(self.paths.pid, "w") as stream:
                stream.write(f"{os.getpid()}\n")
        except (OperationError, OSError) as exc:
            self.report({"ok": False, "error": str(exc)})
            self._unmount()
            return
        log.info("%s: ready as %s -> %s", self.config.name, self.paths.link, self.loop)
        self.report({"ok": True, "path": self.paths.link, "loop": self.loop})

    def stop(self, force: bool) -> None:
        """Detach and unmount; the FUSE loop then returns and serve() closes the device."""
        if self.loop and loop_busy(self.loop) and not force:
            raise OperationError(f"{self.paths.link} ({self.loop}) is in use (mounted or open); "
                                 "unmount it or use --force")
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._detach_loop()
        threading.Thread(target=self._unmount, args=(force,), name="walb-unmount", daemon=True).start()

    def _detach_loop(self) -> None:
        if self.loop:
            loop, self.loop = self.loop, None
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        if os.path.islink(self.paths.link):
            os.unlink(self.paths.link)

    def _unmount(self, force: bool = False) -> None:
        """Unmount the volume so the FUSE loop returns; forced, also while a user holds it."""
        attempts = 1 if force else UNMOUNT_ATTEMPTS
        for _ in range(attempts):
            if subprocess.run(["fusermount3", "-u", self.paths.volume], capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        # Still busy (a deferred loop detach, a mount on it): detach the mount lazily and
        # end the FUSE loop with the signal libfuse handles; users then see EIO.
        subprocess.run(["fusermount3", "-u", "-z", self.paths.volume], capture_output=True)
        os.kill(os.getpid(), signal.SIGTERM)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="walbops-device-daemon")
    parser.add_argument("--name", required=True)
    parser.add_argument("--ldev", required=True)
    parser.add_argument("--ddev", required=True)
    parser.add_argument("--overflow", choices=[p.value for p in OverflowPolicy], default="overwrite")
    parser.add_argument("--checkpoint-interval-ms", type=int, default=10_000)
    parser.add_argument("--flush-interval-ms", type=int, default=100)
    parser.add_argument("--metrics-listen", default="", help="serve Prometheus metrics on HOST:PORT")
    parser.add_argument("--ready-fd", type=int)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(None)
    config = DeviceConfig(name=check_name(args.name), ldev=os.path.abspath(args.ldev),
                          ddev=os.path.abspath(args.ddev), overflow=OverflowPolicy(args.overflow),
                          checkpoint_interval_ms=args.checkpoint_interval_ms,
                          flush_interval_ms=args.flush_interval_ms)
    daemon = Daemon(config, args.ready_fd, args.metrics_listen)
    if read_info(config.name) is not None or device_using(config.ldev) or device_using(config.ddev):
        daemon.report({"ok": False, "error": f"device {config.name} or its ldev/ddev is already in use"})
        return 1
    clear_stale(daemon.paths)
    return daemon.serve()


if __name__ == "__main__":
    sys.exit(main())
