"""A whole walbops backup group on one machine: a walb device and the three agents on loopback."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from walbops.controller import Controller, Layout
from walbops.net.auth import write_key

MiB = 1 << 20
ROLES = ("archive", "proxy", "storage")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def walbops(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"walbops {' '.join(args)}: {result.stderr}")
    return result.stdout.strip()


def sha1_of_device(path: str) -> str:
    digest = hashlib.sha1()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        import mmap

        buffer = mmap.mmap(-1, MiB)
        offset = 0
        while True:
            count = os.preadv(fd, [buffer], offset)
            if count <= 0:
                break
            digest.update(buffer[:count])
            offset += count
    finally:
        os.close(fd)
    return digest.hexdigest()


@dataclass
class Cluster:
    """Agents as processes, one walb device, and a Controller over them."""

    root: Path
    device_size: int = 32 * MiB
    ldev_size: int = 64 * MiB
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    device_name: str = ""
    device_path: str = ""

    def __post_init__(self) -> None:
        self.key = self.root / "cluster.key"
        write_key(self.key)
        self.ports = {role: free_port() for role in ROLES}
        self.layout_path = self.root / "layout.yml"
        self.layout_path.write_text(yaml.safe_dump({
            "key_file": str(self.key),
            "servers": [{"name": name, "address": "127.0.0.1", "port": self.ports[role], "role": role}
                        for name, role in (("s0", "storage"), ("p0", "proxy"), ("a0", "archive"))],
        }))
        self.ctl = Controller(Layout.load(str(self.layout_path)))

    def make_device(self, name: str) -> str:
        ldev, ddev = self.root / "ldev.img", self.root / "ddev.img"
        with open(ldev, "wb") as stream:
            stream.truncate(self.ldev_size)
        with open(ddev, "wb") as stream:
            stream.truncate(self.device_size)
        walbops("wdev", "format-ldev", str(ldev), str(ddev), "--name", name)
        self.device_path = walbops("wdev", "create", str(ldev), str(ddev), "--name", name,
                                   "--checkpoint-interval-ms", "1000")
        self.device_name = name
        return self.device_path

    def start(self, role: str) -> None:
        args = [sys.executable, "-m", "walbops.cli.main", "agent", role, "--listen", "127.0.0.1",
                "--port", str(self.ports[role]), "--id", f"{role[0]}0", "--base-dir", str(self.root / role),
                "--cluster-key-file", str(self.key), "--log-file", str(self.root / f"{role}.log"),
                "--shutdown-timeout", "10"]
        if role == "storage":
            args += ["--archive", f"127.0.0.1:{self.ports['archive']}", "--proxies",
                     f"127.0.0.1:{self.ports['proxy']}", "--implicit-snapshot-interval", "1"]
        if role == "proxy":
            args += ["--retry-delay", "0.2", "--retry-max-delay", "2"]
        if role == "storage":
            args += ["--retry-delay", "0.2", "--retry-max-delay", "2"]
        self.processes[role] = subprocess.Popen(args)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.ports[role]), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.processes[role].poll() is not None:
                    raise AssertionError(self.log(role))
                time.sleep(0.05)

    def stop(self, role: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(role, None)
        if process is not None:
            process.send_signal(sig)
            process.wait(timeout=60)

    def log(self, role: str) -> str:
        path = self.root / f"{role}.log"
        return path.read_text() if path.exists() else ""

    def start_all(self) -> None:
        for role in ROLES:
            self.start(role)

    def close(self) -> None:
        for role in list(self.processes):
            self.stop(role)
        if self.device_name:
            subprocess.run([sys.executable, "-m", "walbops.cli.main", "wdev", "delete", self.device_name, "--force"],
                           capture_output=True)
