"""Walb devices for tests: create them on image files, write to them, read them back."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_names = itertools.count()


def walbops(*args: str, check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, text=True,
                            env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"walbops {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def walbops_json(*args: str) -> dict:
    return json.loads(walbops(*args, "--json", check=True).stdout)


def can_run_devices() -> str | None:
    """Why walb devices cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "needs FUSE 3 (apt install fuse3)"
    if shutil.which("losetup") is None:
        return "needs losetup"
    return None


def next_name() -> str:
    return f"t{os.getpid()}x{next(_names)}"


@dataclass
class Device:
    name: str
    ldev: Path
    ddev: Path
    path: str

    def status(self) -> dict:
        return walbops_json("wdev", "status", self.name)

    def lsids(self) -> dict:
        return self.status()["lsids"]

    def pid(self) -> int:
        return int(self.status()["pid"])


def make_files(tmp_path: Path, ldev_size: int, ddev_size: int) -> tuple[Path, Path]:
    ldev, ddev = tmp_path / "ldev.img", tmp_path / "ddev.img"
    with open(ldev, "wb") as stream:
        stream.truncate(ldev_size)
    with open(ddev, "wb") as stream:
        stream.truncate(ddev_size)
    return ldev, ddev


def write_direct(path: str, offset: int, data: bytes) -> None:
    """Write with O_DIRECT so the data reaches the device before the call returns."""
    import mmap

    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, max(len(data), 4096))
        buffer[:len(data)] = data
        os.pwrite(fd, memoryview(buffer)[:len(data)], offset)
    finally:
        os.close(fd)


def read_device(path: str, offset: int = 0, size: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        if size is None:
            size = os.lseek(fd, 0, os.SEEK_END) - offset
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)
