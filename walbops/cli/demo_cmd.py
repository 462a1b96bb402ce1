"""``walbops demo``: WalB's tutorial on one machine, from files to a verified restore.

files → loop devices → format-ldev → the walb device → storage, proxy and archive agents
on 127.0.0.1:10000/10100/10200 → init → mkfs and mount → full backup → write files →
snapshot → restore → mount the restored image → compare. Everything it made is removed
at the end, so it can run again at once.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import mmap
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from ..blockdev import open_uncached
from ..controller import Controller, Layout
from ..errors import OperationError
from ..net.auth import write_key
from ._common import parse_size

PORTS = {"storage": 10000, "proxy": 10100, "archive": 10200}  # the tutorial's ports
NAMES = {"storage": "s0", "proxy": "p0", "archive": "a0"}
VOLUME = "vol0"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="the WalB tutorial on this machine: backup, snapshot, restore, verify")
    parser.add_argument("--size", type=parse_size, default=64 << 20, help="volume size (default 64M)")
    parser.add_argument("--workdir", help="where the demo's files go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="leave everything running and in place")
    parser.set_defaults(handler=cmd_demo)


def say(text: str) -> None:
    print(f"== {text}", flush=True)


def run(*command: str) -> str:
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise OperationError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result.stdout.strip()


def sha1_of(path: str) -> str:
    """sha1 of a file or device, read with O_DIRECT where possible (no stale page cache)."""
    digest = hashlib.sha1()
    fd = open_uncached(path)
    buffer = mmap.mmap(-1, 1 << 20)
    try:
        offset = 0
        while count := os.preadv(fd, [buffer], offset):
            digest.update(memoryview(buffer)[:count])
            offset += count
    finally:
        os.close(fd)
    return digest.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): sha1_of(str(path)) for path in sorted(root.rglob("*"))
            if path.is_file() and "lost+found" not in path.parts}


class Demo:
    def __init__(self, work: Path, size: int) -> None:
        self.work = work
        self.size = size
        self.walbops = [sys.executable, "-m", "walbops.cli.main"]
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.loops: list[str] = []
        self.mounts: list[Path] = []
        self.device = ""
        self.name = f"demo{os.getpid()}"
        self.restored: int | None = None
        self.ctl: Controller | None = None

    def check_ports(self) -> None:
        for role, port in PORTS.items():
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    raise OperationError(f"port {port} (the {role} agent's) is in use: is another demo running?")

    def start_agent(self, role: str, key: Path) -> None:
        args = [*self.walbops, "agent", role, "--listen", "127.0.0.1", "--port", str(PORTS[role]),
                "--id", NAMES[role], "--base-dir", str(self.work / role), "--cluster-key-file", str(key),
                "--log-file", str(self.work / f"{role}.log")]
        if role == "storage":
            args += ["--archive", f"127.0.0.1:{PORTS['archive']}", "--proxies", f"127.0.0.1:{PORTS['proxy']}"]
        print("$ walbops " + " ".join(args[3:]), flush=True)
        self.agents[role] = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", PORTS[role])) == 0:
                    return
            if time.monotonic() > deadline or self.agents[role].poll() is not None:
                raise OperationError(f"the {role} agent did not start (log: {self.work / f'{role}.log'})")
            time.sleep(0.05)

    def run_demo(self) -> bool:
        say("Files and loop devices for the log device and the data device")
        ldev_file, ddev_file = self.work / "wlog.img", self.work / "wdata.img"
        for path, size in ((ldev_file, self.size // 2 + (16 << 20)), (ddev_file, self.size)):
            with open(path, "wb") as stream:
                stream.truncate(size)
        ldev = run("losetup", "--find", "--show", str(ldev_file))
        self.loops.append(ldev)
        ddev = run("losetup", "--find", "--show", str(ddev_file))
        self.loops.append(ddev)

        say("Format the log device and create the walb device")
        run(*self.walbops, "wdev", "format-ldev", ldev, ddev, "--name", self.name)
        self.device = run(*self.walbops, "wdev", "create", ldev, ddev, "--name", self.name)
        print(f"walb device: {self.device} -> {os.path.realpath(self.device)}")

        say("Start the archive, proxy and storage agents (127.0.0.1:10200, :10100, :10000)")
        key = self.work / "cluster.key"
        write_key(key)
        layout = self.work / "layout.yml"
        layout.write_text(yaml.safe_dump({"key_file": str(key), "servers": [
            {"name": NAMES[role], "address": "127.0.0.1", "port": PORTS[role], "role": role} for role in PORTS]}))
        for role in ("archive", "proxy", "storage"):
            self.start_agent(role, key)
        ctl = self.ctl = Controller(Layout.load(str(layout)))

        say(f"Initialise volume {VOLUME} on every agent")
        ctl.run("s0", "init-vol", vol=VOLUME, wdev=self.name)
        ctl.run("a0", "init-vol", vol=VOLUME)
        ctl.run("p0", "archive-info", cmd="add", vol=VOLUME, archive="a0", host="127.0.0.1", port=PORTS["archive"])
        ctl.run("p0", "start", vol=VOLUME)
        print(ctl.get_state_all(VOLUME))

        say("Make a filesystem on the walb device and mount it")
        run("mkfs.ext4", "-q", self.device)
        mnt = self.work / "mnt"
        mnt.mkdir()
        run("mount", self.device, str(mnt))
        self.mounts.append(mnt)
        (mnt / "before-backup.txt").write_text("written before the full backup\n")
        os.sync()

        say("Full backup to the archive")
        ctl.run("s0", "full-bkp", vol=VOLUME)
        ctl.wait_for_state("s0", VOLUME, {"Target"}, timeout=600)
        print(ctl.get_state_all(VOLUME), "base:", ctl.get("a0", "base", VOLUME))

        say("Write files, then take a snapshot")
        shutil.copytree(Path(__file__).resolve().parent.parent, mnt / "walbops-sources")
        (mnt / "random.bin").write_bytes(os.urandom(4 << 20))
        (mnt / "after-backup.txt").write_text("written after the full backup\n")
        expected = tree_digest(mnt)
        run("umount", str(mnt))
        self.mounts.remove(mnt)
        device_sha1 = sha1_of(self.device)
        gid = int(ctl.run("s0", "snapshot", vol=VOLUME)["gid"])
        print(f"snapshot gid {gid}; device sha1 {device_sha1}")

        say(f"Wait until gid {gid} is restorable on the archive")
        ctl.wait_for_restorable("a0", VOLUME, gid, timeout=600)
        print("restorable:", ctl.get_restorable("a0", VOLUME))

        say(f"Restore gid {gid} and mount it read-only")
        restored = ctl.restore("a0", VOLUME, gid, timeout=600)
        self.restored = gid
        print(f"restored image attached at {restored}")
        restored_sha1 = sha1_of(restored)
        rmnt = self.work / "restored"
        rmnt.mkdir()
        run("mount", "-o", "ro,noload", restored, str(rmnt))
        self.mounts.append(rmnt)
        files_match = tree_digest(rmnt) == expected
        sha1_match = restored_sha1 == device_sha1
        say("Result")
        print(f"volume {VOLUME}: snapshot gid {gid}")
        print(f"device sha1   {device_sha1}")
        print(f"restored sha1 {restored_sha1}  {'match' if sha1_match else 'MISMATCH'}")
        print(f"{len(expected)} files {'match' if files_match else 'DIFFER'}")
        return files_match and sha1_match

    def cleanup(self) -> None:
        for mount in reversed(self.mounts):
            subprocess.run(["umount", str(mount)], capture_output=True)
        if self.ctl is not None and self.restored is not None:
            with contextlib.suppress(Exception):
                self.ctl.del_restored("a0", VOLUME, self.restored)
        for role in ("storage", "proxy", "archive"):
            process = self.agents.get(role)
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.device:
            subprocess.run([*self.walbops, "wdev", "delete", self.name, "--force"], capture_output=True)
        for loop in reversed(self.loops):
            subprocess.run(["losetup", "-d", loop], capture_output=True)


@contextlib.contextmanager
def workdir(path: str | None, keep: bool) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    directory = Path(tempfile.mkdtemp(prefix="walbops-demo-", dir="/var/tmp"))
    try:
        yield directory
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def cmd_demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise OperationError("the demo needs root (loop devices, FUSE, mounts)")
    with workdir(args.workdir, args.keep) as work:
        demo = Demo(work, args.size)
        demo.check_ports()
        ok = False
        try:
            ok = demo.run_demo()
        finally:
            if args.keep:
                print(f"kept everything in {work}")
            else:
                demo.cleanup()
    print("demo: the restored snapshot matches the volume" if ok else "demo: MISMATCH")
    return 0 if ok else 1
