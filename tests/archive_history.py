"""An archive agent holding a volume whose whole history is known: what every gid must restore to.

The lifecycle tests (apply, merge, retention, bhash) need many snapshots with chosen flags and
timestamps, and an oracle that does not share code with the archive. ``ArchiveHistory`` runs a
real archive agent process on loopback, plays the storage and the proxy towards it over the
wire protocol (a full backup, then one wdiff-transfer per snapshot, as WalB's ``wdiff-send``
tool does), and keeps the volume in a plain bytearray it writes with slicing: the sha1 of that
model at each gid is what a restore must give.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port

from walbops.agents.transfers import send_full_backup, send_wdiff
from walbops.controller import Controller, Layout
from walbops.diff.engine import convert_to_sorted
from walbops.diff.io import DiffIo, IoKind
from walbops.errors import WalbopsError
from walbops.gid import MetaDiff
from walbops.loop import devices_under
from walbops.net.auth import load_key, write_key
from walbops.net.transport import open_connection

LB = 512
KiB = 1 << 10
MiB = 1 << 20
BASE_TIME = 1_767_225_600  # [s] 2026-01-01T00:00:00Z, the start of simulated time
UUID = bytes.fromhex("5eedc0de" * 4)


@dataclass
class ArchiveHistory:
    """A volume on a real archive agent, with the sha1 of its image at every gid."""

    root: Path
    size: int = 8 * MiB
    seed: int = 1
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the agent (crash points)
    vol: str = "vol0"
    explicit: dict[int, bool] = field(default_factory=dict)  # gid -> whether the storage made it explicit
    oracle: bool = True  # keep the model's sha1 at every gid (a benchmark of a large volume turns it off)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_file = self.root / "cluster.key"
        write_key(self.key_file)
        self.key = load_key(self.key_file)
        self.port = free_port()
        self.layout_path = self.root / "layout.yml"
        self.layout_path.write_text(f"key_file: {self.key_file}\nservers:\n"
                                    f"  - {{name: a0, address: 127.0.0.1, port: {self.port}, role: archive}}\n")
        self.ctl = Controller(Layout.load(str(self.layout_path)), timeout=60)
        self.rng = random.Random(self.seed)
        self.image = bytearray(self.size)
        self.expected: dict[int, str] = {}  # gid -> sha1 of the image at that gid
        self.timestamps: dict[int, int] = {}  # gid -> its snapshot's timestamp
        self.latest = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_dir(self) -> Path:
        return self.root / "a0"

    @property
    def log_path(self) -> Path:
        return self.root / "a0.log"

    # ------------------------------------------------------------------ the agent

    def start(self, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "walbops.cli.main", "agent", "archive", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--id", "a0", "--base-dir", str(self.base_dir),
                   "--cluster-key-file", str(self.key_file), "--log-file", str(self.log_path),
                   "--shutdown-timeout", "10"]
        self.process = subprocess.Popen(command, env={**os.environ, **self.env, **(env or {})},
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.ctl.get("a0", "pid") == self.process.pid:
                    return
            except (WalbopsError, OSError):
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"the archive agent did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=60)

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for the agent to end by itself (a crash point); its exit code."""
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()
        for device in devices_under(str(self.base_dir)):
            subprocess.run(["losetup", "--detach", device], capture_output=True)

    # ------------------------------------------------------------------ the history

    def full_backup(self, fill: int = 64) -> None:
        """init-vol and a full backup of an image with ``fill`` random writes; the base is clean ``|0|``."""
        self._write_random(fill)
        self.ctl.run("a0", "init-vol", vol=self.vol)
        asyncio.run(self._send_full())
        self.expected[0] = self.sha1()
        self.timestamps[0] = BASE_TIME

    async def _send_full(self) -> None:
        path = self.root / "full.img"
        path.write_bytes(self.image)
        fd = os.open(path, os.O_RDONLY)
        channel = await open_connection("127.0.0.1", self.port, self.key, "s0", "storage")
        try:
            async with channel:
                async def accepted() -> bytes:
                    return UUID

                async def streamed() -> int:
                    return 0

                await send_full_backup(channel, self.vol, fd, self.size // LB, 512, BASE_TIME, accepted, streamed)
        finally:
            os.close(fd)
            path.unlink()

    def add_snapshot(self, timestamp: int, explicit: bool = True, writes: int = 8, gid_step: int = 1,
                     previous_explicit: bool | None = None) -> int:
        """Random writes, then the diff from the latest snapshot to a new one ``gid_step`` later.

        ``explicit`` is the new snapshot's kind as the *next* diff will say it (WalB keeps the
        flag of a snapshot on the diff that starts there): this diff's is_mergeable says
        whether the snapshot it starts from is implicit, which the previous call decided.
        """
        start = self.latest
        gid = start + gid_step
        ios = self._write_random(writes)
        mergeable = not self.explicit.get(start, True)
        self.explicit[gid] = explicit
        diff = MetaDiff(start, gid, is_mergeable=mergeable, timestamp=timestamp)
        asyncio.run(self._send_diff(diff, ios))
        self.latest = gid
        if self.oracle:
            self.expected[gid] = self.sha1()
        self.timestamps[gid] = timestamp
        return gid

    async def _send_diff(self, diff: MetaDiff, ios: list[DiffIo]) -> None:
        out = io.BytesIO()
        convert_to_sorted(iter(ios), out, UUID)
        channel = await open_connection("127.0.0.1", self.port, self.key, "p0", "proxy")
        async with channel:
            await send_wdiff(channel, self.vol, UUID, self.size // LB, diff, [out.getvalue()])

    def _write_random(self, count: int) -> list[DiffIo]:
        """``count`` writes into the model, as the IOs a diff carries (log order): mostly data,
        some all-zero writes and some discards (the archive's default discard policy zeroes)."""
        ios = []
        for _ in range(count):
            length = self.rng.randint(1, 16) * 4 * KiB
            offset = self.rng.randrange(0, (self.size - length) // (4 * KiB) + 1) * 4 * KiB
            roll = self.rng.random()
            if roll < 0.1:
                self.image[offset:offset + length] = bytes(length)
                ios.append(DiffIo(offset // LB, length // LB, IoKind.DISCARD))
            elif roll < 0.2:
                self.image[offset:offset + length] = bytes(length)
                ios.append(DiffIo(offset // LB, length // LB, IoKind.ALLZERO))
            else:
                data = self.rng.randbytes(length)
                self.image[offset:offset + length] = data
                ios.append(DiffIo.normal(offset // LB, data))
        return ios

    def sha1(self) -> str:
        return hashlib.sha1(self.image).hexdigest()

    # ------------------------------------------------------------------ checks

    def restored_sha1(self, gid: int) -> str:
        device = self.ctl.restore("a0", self.vol, gid, timeout=120)
        try:
            return sha1_of(device)
        finally:
            self.ctl.del_restored("a0", self.vol, gid)

    def restorable(self, include_implicit: bool = True) -> list[int]:
        return self.ctl.get_restorable("a0", self.vol, include_implicit)

    def disk_use(self) -> int:
        """Bytes allocated under the archive's base directory (diffs, base, metadata)."""
        total = 0
        for dirpath, _, names in os.walk(self.base_dir):
            for name in names:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total


def sha1_of(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()
