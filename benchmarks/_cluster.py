"""A walb device and the three walbops agents on loopback, for the benchmarks.

The same steps as tests/scenarios/cluster.py and ``walbops demo`` (format-ldev, wdev create,
storage/proxy/archive agents on free ports, init-vol, archive-info add, start), trimmed to
what a benchmark needs, plus the measuring helpers they share: dropping the page cache and
reading a process's peak RSS. Needs root (FUSE, loop devices).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from walbops.controller import Controller, Layout
from walbops.errors import WalbopsError
from walbops.net.auth import write_key

MiB = 1 << 20
ROLES = ("archive", "proxy", "storage")  # started in this order: the storage ships to the others
IDS = {"storage": "s0", "proxy": "p0", "archive": "a0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def walbops(*args: str, timeout: float = 120) -> str:
    """Run the installed CLI; its stdout, or SystemExit with its stderr."""
    result = subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"walbops {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def drop_caches() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: the next reads come from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as stream:
        stream.write("3\n")


def peak_rss(pid: int) -> int:
    """VmHWM of a live process, in bytes."""
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no VmHWM for pid {pid}")


def loop_devices_under(root: Path) -> list[str]:
    """Loop devices whose backing file lies under ``root`` (restored images left attached)."""
    result = subprocess.run(["losetup", "--json", "--list", "--output", "NAME,BACK-FILE"], capture_output=True,
                            text=True)
    found = []
    for entry in json.loads(result.stdout or "{}").get("loopdevices", []):
        back = str(entry.get("back-file") or "").removesuffix(" (deleted)")
        if back.startswith(str(root) + os.sep):
            found.append(str(entry["name"]))
    return found


class Cluster:
    """One walb device over two files, the three agents as processes, and a Controller.

    Set ``WALBOPS_RUN_DIR`` and ``WALBOPS_DEV_DIR`` before using it so that the device's
    FUSE mount, control socket and symlink stay inside the benchmark's scratch directory.
    ``close()`` removes everything it made, whatever state it is in.
    """

    def __init__(self, root: Path, name: str, vol: str = "vol0") -> None:
        self.root = root
        self.name = name
        self.vol = vol
        self.device = ""
        self.created = False
        self.ldev = ""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.key = root / "cluster.key"
        write_key(self.key)
        self.ports = {role: free_port() for role in ROLES}
        layout = root / "layout.yml"
        layout.write_text(yaml.safe_dump({
            "key_file": str(self.key),
            "servers": [{"name": IDS[role], "address": "127.0.0.1", "port": port, "role": role}
                        for role, port in self.ports.items()],
        }))
        self.ctl = Controller(Layout.load(str(layout)))

    # ------------------------------------------------------------------ the device

    def make_device(self, ldev: str, ddev: str, pbs: int = 4096) -> str:
        """format-ldev and create over existing files; returns /dev/walbops/NAME (a symlink)."""
        walbops("wdev", "format-ldev", ldev, ddev, "--name", self.name, "--pbs", str(pbs))
        self.created = True  # from here on close() deletes the device, even one that failed to start
        self.device = walbops("wdev", "create", ldev, ddev, "--name", self.name)
        self.ldev = ldev
        return self.device

    def device_pid(self) -> int:
        info = Path(os.environ.get("WALBOPS_RUN_DIR", "/run/walbops")) / self.name / "info.json"
        return int(json.loads(info.read_text())["pid"])

    def device_call(self, op: str, **args: Any) -> dict[str, Any]:
        """One request on the device's control socket (as the storage agent makes them)."""
        from walbops.device.control import DeviceClient

        with DeviceClient(self.name, timeout=30.0) as client:
            return client.call(op, **args)

    def wait_applied(self, timeout: float = 120) -> None:
        """Wait until every acknowledged write is in the ddev (written == latest), not only in the ring."""
        deadline = time.monotonic() + timeout
        while True:
            lsids = self.device_call("lsids")
            if int(lsids["written"]) >= int(lsids["latest"]):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: writes not applied to the ddev after {timeout:.0f} s: {lsids}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ the agents

    def start_agents(self) -> None:
        for role in ROLES:
            self._start(role)

    def _start(self, role: str) -> None:
        args = [sys.executable, "-m", "walbops.cli.main", "agent", role, "--listen", "127.0.0.1",
                "--port", str(self.ports[role]), "--id", IDS[role], "--base-dir", str(self.root / role),
                "--cluster-key-file", str(self.key), "--log-file", str(self.root / f"{role}.log"),
                "--shutdown-timeout", "10"]
        if role == "storage":
            args += ["--archive", f"127.0.0.1:{self.ports['archive']}",
                     "--proxies", f"127.0.0.1:{self.ports['proxy']}"]
        process = self.processes[role] = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(WalbopsError, OSError):
                # Ready when the process we started answers (not one left over on the port).
                if self.ctl.get(IDS[role], "pid") == process.pid:
                    return
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the {role} agent did not start; see {self.root / f'{role}.log'}")
            time.sleep(0.05)

    def agent_pids(self) -> dict[str, int]:
        return {role: process.pid for role, process in self.processes.items()}

    def setup_volume(self) -> None:
        """The tutorial's steps: init-vol on s0 and a0, archive-info add a0 on p0, start p0."""
        ctl, vol = self.ctl, self.vol
        ctl.run("s0", "init-vol", vol=vol, wdev=self.name)
        ctl.run("a0", "init-vol", vol=vol)
        ctl.run("p0", "archive-info", cmd="add", vol=vol, archive="a0", host="127.0.0.1", port=self.ports["archive"])
        ctl.run("p0", "start", vol=vol)

    def wait(self, done: Callable[[], bool], what: str, timeout: float, poll: float = 0.05) -> None:
        """Poll ``done()`` every ``poll`` seconds (finer than the Controller's 0.3 s)."""
        deadline = time.monotonic() + timeout
        while not done():
            for role, process in self.processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"the {role} agent died while waiting for {what}; see its log")
            if time.monotonic() > deadline:
                raise SystemExit(f"{what}: not done after {timeout:.0f} s; states {self.ctl.get_state_all(self.vol)}")
            time.sleep(poll)

    # ------------------------------------------------------------------ teardown

    def close(self) -> list[str]:
        """Stop the agents, detach restored images, delete the device; returns what failed."""
        errors = []
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for role, process in self.processes.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                errors.append(f"the {role} agent ignored SIGTERM")
        self.processes.clear()
        for device in loop_devices_under(self.root):
            subprocess.run(["losetup", "--detach", device], capture_output=True)
        if self.created:
            result = subprocess.run([sys.executable, "-m", "walbops.cli.main", "wdev", "delete", self.name, "--force"],
                                    capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                errors.append(f"wdev delete {self.name}: {result.stderr.strip()}")
            self.created = False
            self.device = ""
        return errors
