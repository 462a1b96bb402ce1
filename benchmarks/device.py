"""Direct-IO write throughput of /dev/walbops/NAME against the same stack without logging.

Prints one JSON object. Three block devices are built in the same run and given the same
workloads (4 KiB random and 1 MiB sequential O_DIRECT writes, queue depth 1):

* ``walb``: the walb device (FUSE + loop, every write logged in the ldev first);
* ``passthrough``: the same FUSE + loop stack over a plain file, built here, which only
  forwards writes (what the walb device costs over its own plumbing);
* ``loop_file``: a loop device straight on a plain file (what FUSE costs).

    .venv/bin/python benchmarks/device.py [--size 512M] [--random-writes 20000] [--dir /var/tmp]

Target (issue 3): walb >= 0.5x passthrough for both sizes. Needs root, FUSE and loop devices.
"""

from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

TARGET_RATIO = 0.5
MiB = 1 << 20


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)


def run(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------- pass-through FUSE

def serve_passthrough(backing: str, mountpoint: str) -> None:
    """A single-file FUSE filesystem that forwards to ``backing`` (no logging)."""
    import mfusepy

    fd = os.open(backing, os.O_RDWR)
    size = os.fstat(fd).st_size

    class PassThrough(mfusepy.Operations):
        use_ns = True

        def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
            if path != "/":
                raise mfusepy.FuseOSError(errno.ENOENT)
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": size}

        def open(self, path: str, flags: int) -> int:
            return 0

        def read(self, path: str, length: int, offset: int, fh: Any) -> bytes:
            return os.pread(fd, length, offset)

        def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
            return os.pwrite(fd, data, offset)

        def fsync(self, path: str, datasync: int, fh: Any) -> int:
            os.fdatasync(fd)
            return 0

        def truncate(self, path: str, length: int, fh: Any = None) -> int:
            return 0

    mfusepy.FUSE(PassThrough(), mountpoint, foreground=True, nothreads=False, attr_timeout=0)


# --------------------------------------------------------------------------- workloads

def random_4k(device: str, count: int, seed: int = 1) -> float:
    """IOPS of ``count`` random 4 KiB O_DIRECT writes."""
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        buffer = mmap.mmap(-1, 4096)
        buffer.write(os.urandom(4096))
        rng = random.Random(seed)
        offsets = [rng.randrange(0, size // 4096) * 4096 for _ in range(count)]
        start = time.perf_counter()
        for offset in offsets:
            os.pwrite(fd, buffer, offset)
        os.fsync(fd)
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)


def sequential_1m(device: str, total: int) -> float:
    """MB/s of sequential 1 MiB O_DIRECT writes over ``total`` bytes."""
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, MiB)
        buffer.write(os.urandom(MiB))
        start = time.perf_counter()
        for offset in range(0, total, MiB):
            os.pwrite(fd, buffer, offset)
        os.fsync(fd)
        return total / (time.perf_counter() - start) / 1e6
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the three devices

class Stack:
    """Builds and removes the devices of one run."""

    def __init__(self, work: str, size: int, ldev_size: int) -> None:
        self.work = work
        self.size = size
        self.ldev_size = ldev_size
        self.cleanups: list[list[str]] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.name = f"bench{os.getpid()}"

    def file(self, name: str, size: int) -> str:
        path = os.path.join(self.work, name)
        with open(path, "wb") as stream:
            stream.truncate(size)
        return path

    def walb(self) -> str:
        ldev, ddev = self.file("ldev.img", self.ldev_size), self.file("ddev.img", self.size)
        walbops = [sys.executable, "-m", "walbops.cli.main", "wdev"]
        run([*walbops, "format-ldev", ldev, ddev, "--pbs", "4096"])
        path = run([*walbops, "create", ldev, ddev, "--name", self.name])
        self.cleanups.append([*walbops, "delete", self.name, "--force"])
        return path

    def passthrough(self) -> str:
        backing = self.file("passthrough.img", self.size)
        mountpoint = self.file("passthrough.mnt", 0)
        process = subprocess.Popen([sys.executable, __file__, "--serve-passthrough", backing, mountpoint])
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the pass-through FUSE filesystem did not mount")
            time.sleep(0.01)
        self.cleanups.append(["fusermount3", "-u", "-z", mountpoint])
        loop = run(["losetup", "--find", "--show", mountpoint])
        self.cleanups.append(["losetup", "-d", loop])
        return loop

    def loop_file(self) -> str:
        loop = run(["losetup", "--find", "--show", self.file("plain.img", self.size)])
        self.cleanups.append(["losetup", "-d", loop])
        return loop

    def close(self) -> None:
        for command in reversed(self.cleanups):
            subprocess.run(command, capture_output=True)
        for process in self.processes:
            process.terminate()
            process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512M", help="device size")
    parser.add_argument("--random-writes", type=int, default=20000)
    parser.add_argument("--dir", default=None, help="scratch directory (needs ~3x the size)")
    parser.add_argument("--serve-passthrough", nargs=2, metavar=("BACKING", "MOUNTPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_passthrough:
        serve_passthrough(*args.serve_passthrough)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/device.py needs root (loop devices, FUSE)")
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="walbops-devbench-", dir=args.dir)
    stack = Stack(work, size, 2 * size + 64 * MiB)
    results: dict[str, dict[str, float]] = {}
    try:
        devices = {"walb": stack.walb(), "passthrough": stack.passthrough(), "loop_file": stack.loop_file()}
        for label, device in devices.items():
            sequential_1m(device, 64 * MiB)  # warm up the path once
            results[label] = {
                "random_4k_iops": round(random_4k(device, args.random_writes), 1),
                "sequential_1m_mb_per_s": round(sequential_1m(device, size), 1),
            }
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    walb, passthrough = results["walb"], results["passthrough"]
    ratios = {key: round(walb[key] / passthrough[key], 3) for key in walb}
    print(json.dumps({
        "benchmark": "device",
        "size": size,
        "random_writes": args.random_writes,
        "results": results,
        "walb_vs_passthrough": ratios,
        "walb_vs_loop_file": {key: round(walb[key] / results["loop_file"][key], 3) for key in walb},
        "target": {"ratio": TARGET_RATIO, "ok": all(value >= TARGET_RATIO for value in ratios.values())},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
