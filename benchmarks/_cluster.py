"""A walb device and the three walbops agents on loopback, for the benchmarks.

The backup group is the scenario tests' (tests/scenarios/cluster.py, put on sys.path here): the
same agents on free ports, layout, key, device and teardown, run with the agents' own defaults
(``tuning={}``: no test-only retry delays or implicit snapshots). This module adds what only a
benchmark needs: finer waiting, the device's control socket and pid, and the measuring helpers
(dropping the page cache, reading a process's peak RSS). Needs root (FUSE, loop devices).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS / "scenarios"), str(TESTS)]  # cluster.py, and the helpers it imports
import cluster as scenario  # noqa: E402  (tests/scenarios/cluster.py)

MiB = scenario.MiB
free_port = scenario.free_port

__all__ = ["Cluster", "MiB", "drop_caches", "free_port", "peak_rss"]


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


class Cluster(scenario.Cluster):
    """The scenario tests' backup group with the agents' default settings, failing with SystemExit.

    Set ``WALBOPS_RUN_DIR`` and ``WALBOPS_DEV_DIR`` before using it so that the device's FUSE
    mount, control socket and symlink stay inside the benchmark's scratch directory. Build it
    with ``Cluster(root, tuning={})``; ``teardown()`` removes everything it made and returns
    what failed.
    """

    failure: ClassVar[type[BaseException]] = SystemExit
    vol: ClassVar[str] = "vol0"

    def device_pid(self) -> int:
        info = Path(os.environ.get("WALBOPS_RUN_DIR", "/run/walbops")) / self.device_name / "info.json"
        return int(json.loads(info.read_text())["pid"])

    def device_call(self, op: str, **args: Any) -> dict[str, Any]:
        """One request on the device's control socket (as the storage agent makes them)."""
        from walbops.device.control import DeviceClient

        with DeviceClient(self.device_name, timeout=30.0) as client:
            return client.call(op, **args)

    def wait_applied(self, timeout: float = 120) -> None:
        """Wait until every acknowledged write is in the ddev (written == latest), not only in the ring."""
        deadline = time.monotonic() + timeout
        while True:
            lsids = self.device_call("lsids")
            if int(lsids["written"]) >= int(lsids["latest"]):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.device_name}: writes not applied to the ddev after {timeout:.0f} s: {lsids}")
            time.sleep(0.02)

    def agent_pids(self) -> dict[str, int]:
        return {role: process.pid for role, process in self.processes.items()}

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
