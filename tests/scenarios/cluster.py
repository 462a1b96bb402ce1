"""A whole walbops backup group on one machine: a walb device and the three agents on loopback.

The scenario tests' harness, and benchmarks/_cluster.py's too (it puts this folder on sys.path):
keep what the benchmarks use (Cluster with ``tuning={}``, ``make_device`` over given files,
``start_all``, ``setup_volume``, ``teardown``, ``free_port``, ``MiB``) working for both.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from helpers import agent_env, free_port
from relay import Relay

from walbops import pki
from walbops.controller import Controller, Layout
from walbops.errors import WalbopsError
from walbops.loop import devices_under
from walbops.net.auth import Keys, load_key, write_key, write_keys
from walbops.net.tls import Credentials, Secret, TlsFiles

MiB = 1 << 20
ROLES = ("archive", "proxy", "storage")
# Agent flags by kind that make failures quick to see and recover from in a test; a benchmark passes
# ``tuning={}`` to run the agents with their defaults.
TEST_TUNING = {
    "storage": ["--implicit-snapshot-interval", "1", "--retry-delay", "0.2", "--retry-max-delay", "2"],
    "proxy": ["--retry-delay", "0.2", "--retry-max-delay", "2"],
}


def kind(role: str) -> str:
    """The agent type of a role name: ``proxy1`` is a proxy."""
    return role.rstrip("0123456789")


def agent_id(role: str) -> str:
    """The id of the agent a role name runs: storage s0, proxy p0, proxy1 p1, archive a0."""
    return f"{role[0]}{role[len(kind(role)):] or 0}"


def walbops(*args: str, timeout: float | None = None, failure: type[BaseException] = AssertionError) -> str:
    """Run the CLI; its stdout, or ``failure`` with its stderr."""
    result = subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise failure(f"walbops {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def sha1_of_device(path: str, size: int | None = None) -> str:
    """sha1 of a device (O_DIRECT), or of its first ``size`` bytes (a multiple of 1 MiB)."""
    digest = hashlib.sha1()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, MiB)
        offset = 0
        while size is None or offset < size:
            count = os.preadv(fd, [buffer], offset)
            if count <= 0:
                break
            digest.update(buffer[:count])
            offset += count
    finally:
        os.close(fd)
    return digest.hexdigest()


def block_size(path: str) -> int:
    """The size of a block device (or file) in bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def describe(path: str) -> str:
    """Where a device path leads and how big it is, for failure messages."""
    try:
        return f"{path} -> {os.path.realpath(path)}, {block_size(path)} bytes"
    except OSError as exc:
        return f"{path}: {exc}"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    """Poll ``predicate`` every ``poll`` seconds until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def write_random(path: str, rng: random.Random, count: int = 64, size: int = 32 * MiB,
                 block: int = 4096) -> None:
    """``count`` O_DIRECT writes of 4-64 KiB of random bytes at random aligned offsets below ``size``."""
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, 16 * block)
        for _ in range(count):
            length = rng.randint(1, 16) * block
            buffer[:length] = rng.randbytes(length)
            os.pwrite(fd, memoryview(buffer)[:length], rng.randrange(0, (size - length) // block + 1) * block)
    finally:
        os.close(fd)


def fill_random(path: str, rng: random.Random, size: int) -> None:
    """Write random bytes over the first ``size`` bytes (O_DIRECT, 1 MiB at a time)."""
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, MiB)
        for offset in range(0, size, MiB):
            buffer[:] = rng.randbytes(MiB)
            os.pwrite(fd, buffer, offset)
    finally:
        os.close(fd)


def fill_random_at(path: str, rng: random.Random, offset: int, length: int = MiB) -> None:
    """Write ``length`` random bytes at ``offset`` (O_DIRECT, one write)."""
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, length)
        buffer[:] = rng.randbytes(length)
        os.pwrite(fd, buffer, offset)
    finally:
        os.close(fd)


def write_zeros(path: str, offset: int, length: int) -> None:
    """Overwrite ``length`` bytes at ``offset`` with zeros (O_DIRECT, 1 MiB at a time)."""
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, MiB)
        end = offset + length
        while offset < end:
            count = min(MiB, end - offset)
            os.pwrite(fd, memoryview(buffer)[:count], offset)
            offset += count
    finally:
        os.close(fd)


class RandomWriter:
    """A background thread writing random data to a device until stopped (WalB's stest writer).

    It writes at a bounded rate (``pause`` after every 4 writes of 4-64 KiB: at most ~2.7 MB/s) so
    that the 64 MiB log ring does not overflow while agents are down for several seconds.
    ``stop()`` returns once the last write is done, so the device holds every acknowledged write
    when the caller takes its sha1.
    """

    def __init__(self, path: str, seed: int, size: int = 32 * MiB, pause: float = 0.05) -> None:
        self.path, self.size, self.pause = path, size, pause
        self.rng = random.Random(seed)
        self.writes = 0
        self.error: BaseException | None = None
        self.where = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer {path}", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                write_random(self.path, self.rng, count=4, size=self.size)
                self.writes += 4
                self._stop.wait(self.pause)
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self.where = describe(self.path)

    def start(self) -> "RandomWriter":
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop writing; returns the number of writes. Raises what the writer failed with."""
        self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            raise AssertionError("the writer did not stop")
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r} ({self.where})")
        return self.writes

    def wait_for_writes(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        target = self.writes + count
        while self.writes < target:
            if self.error is not None or time.monotonic() > deadline:
                raise AssertionError(f"the writer stalled at {self.writes} writes ({self.error!r})")
            time.sleep(0.02)

    def __enter__(self) -> "RandomWriter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@dataclass
class Cluster:
    """Agents as processes, one walb device, and a Controller over them.

    ``tuning`` holds extra agent flags by kind (TEST_TUNING unless given), ``agent_args`` more by
    role name, added last. What goes wrong raises ``failure`` (a benchmark sets SystemExit).
    """

    failure: ClassVar[type[BaseException]] = AssertionError
    restore_timeout: ClassVar[float] = 120  # [s] for a restore of restored_sha1

    root: Path
    device_size: int = 32 * MiB
    ldev_size: int = 64 * MiB
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    device_name: str = ""
    device_path: str = ""
    relays: dict[tuple[str, str], Relay] = field(default_factory=dict)
    agent_args: dict[str, list[str]] = field(default_factory=dict)
    extra_devices: list[str] = field(default_factory=list)  # walb devices of add_storage
    tuning: dict[str, list[str]] = field(default_factory=lambda: dict(TEST_TUNING))
    # TLS mode (certificates from a CA made for the cluster) when WALBOPS_TEST_TLS=1: the scenario
    # suite runs in either mode (docs/security.md).
    tls: bool = field(default_factory=lambda: os.environ.get("WALBOPS_TEST_TLS") == "1")
    # Key mode with role key files (docs/protocol.md 4.7): each agent and the controller hold only
    # their own role's keys; the cluster key stays with the test.
    role_keys: bool = False
    # The agents run asyncio in debug mode if scripts/test asked for it (helpers.agent_env).
    asyncio_debug: bool = False

    def __post_init__(self) -> None:
        self.key = self.root / "cluster.key"
        write_key(self.key)
        self.keys_dir = self.root / "keys"
        if self.role_keys:
            self.keys_dir.mkdir()
            write_keys(self.keys_dir / "ctl.key", Keys.issue(load_key(self.key), ("controller",)))
        self.pki = self.root / "pki"
        if self.tls:
            pki.init_ca(str(self.pki))
            pki.issue(str(self.pki), "ctl", "controller", names=["127.0.0.1"])
        self.ports = {role: free_port() for role in ROLES}
        self.layout_path = self.root / "layout.yml"
        self._write_layout()

    def credential_args(self, role: str) -> list[str]:
        """The agent flags that authenticate role ``role``: its certificate, or the cluster key."""
        if self.role_keys:
            path = self.keys_dir / f"{agent_id(role)}.key"
            write_keys(path, Keys.issue(load_key(self.key), (kind(role),), agent_id(role)), force=True)
            return ["--cluster-key-file", str(path)]
        if not self.tls:
            return ["--cluster-key-file", str(self.key)]
        host = agent_id(role)
        if not (self.pki / f"{host}.crt").exists():
            pki.issue(str(self.pki), host, kind(role), names=["127.0.0.1"])
        return ["--tls-cert", str(self.pki / f"{host}.crt"), "--tls-key", str(self.pki / f"{host}.key"),
                "--tls-ca", str(self.pki / "ca.crt")]

    def secret(self, client_role: str) -> Secret:
        """What a client of ``client_role`` (storage, proxy, archive, controller) authenticates with:
        the cluster key, that role's key file, or in TLS mode a certificate for that role."""
        if self.role_keys:
            return Keys.issue(load_key(self.key), (client_role,))
        if not self.tls:
            return self.ctl.key
        host = f"rogue-{client_role}"
        if not (self.pki / f"{host}.crt").exists():
            pki.issue(str(self.pki), host, client_role, names=["127.0.0.1"])
        return Credentials(tls=TlsFiles(str(self.pki / f"{host}.crt"), str(self.pki / f"{host}.key"),
                                        str(self.pki / "ca.crt")).check())

    def _write_layout(self) -> None:
        credentials: dict[str, Any] = {"key_file": str(self.keys_dir / "ctl.key" if self.role_keys else self.key)}
        if self.tls:
            credentials = {"tls": {"cert": str(self.pki / "ctl.crt"), "key": str(self.pki / "ctl.key"),
                                   "ca": str(self.pki / "ca.crt")}}
        self.layout_path.write_text(yaml.safe_dump({
            **credentials,
            "servers": [{"name": agent_id(role), "address": "127.0.0.1", "port": port, "role": kind(role)}
                        for role, port in self.ports.items()],
        }))
        self.ctl = Controller(Layout.load(str(self.layout_path)))

    def add_spare_proxy(self) -> str:
        """A second proxy, p1 (role name ``proxy1``), after p0 in the storage's priority list.

        Call before the storage starts."""
        self.ports["proxy1"] = free_port()
        self._write_layout()
        return "proxy1"

    def add_archive(self, role: str = "archive1") -> str:
        """Another archive, a1 (role name ``archive1``; ``archive2`` is a2): a replication's
        destination (WalB's n7).

        Call before start_all, or start it with start(role)."""
        self.ports[role] = free_port()
        self._write_layout()
        return role

    def add_storage(self, name: str) -> tuple[str, str]:
        """A second storage, s1 (role name ``storage1``), with a walb device ``name`` of its own over new
        files: another host that may hold the volume (WalB's n12). Returns (role, device path).

        Call before start_all. Its device is deleted at teardown like the first one."""
        self.ports["storage1"] = free_port()
        self._write_layout()
        ldev, ddev = str(self.root / "ldev1.img"), str(self.root / "ddev1.img")
        for path, size in ((ldev, self.ldev_size), (ddev, self.device_size)):
            with open(path, "wb") as stream:
                stream.truncate(size)
        self.cli("wdev", "format-ldev", ldev, ddev, "--name", name)
        self.extra_devices.append(name)
        return "storage1", self.cli("wdev", "create", ldev, ddev, "--name", name, "--checkpoint-interval-ms", "1000")

    def add_relay(self, client: str, server: str) -> Relay:
        """Route ``client``'s connections to ``server`` (role names) through a Relay.

        Call before the client starts (the storage) or before setup_volume (a proxy)."""
        relay = Relay(self.ports[server])
        self.relays[(client, server)] = relay
        return relay

    def port_for(self, client: str, server: str) -> int:
        """The port ``client`` connects to for ``server``: a relay's, or the server's own."""
        relay = self.relays.get((client, server))
        return relay.port if relay is not None else self.ports[server]

    def proxies(self) -> list[str]:
        return [role for role in self.ports if kind(role) == "proxy"]

    def make_device(self, name: str, ldev: str = "", ddev: str = "", pbs: int | None = None,
                    checkpoint_interval_ms: int | None = 1000) -> str:
        """format-ldev and wdev create; returns the device's path (/dev/walbops/NAME, a symlink).

        Over the files ``ldev`` and ``ddev`` if given, else over two new sparse files of ldev_size
        and device_size in root. ``pbs`` or ``checkpoint_interval_ms`` None: the CLI's default.
        From format-ldev on, close() deletes the device, even one that failed to start.
        """
        if not ldev:
            ldev, ddev = str(self.root / "ldev.img"), str(self.root / "ddev.img")
            with open(ldev, "wb") as stream:
                stream.truncate(self.ldev_size)
            with open(ddev, "wb") as stream:
                stream.truncate(self.device_size)
        expected = os.path.getsize(ddev)
        options = [] if pbs is None else ["--pbs", str(pbs)]
        self.cli("wdev", "format-ldev", ldev, ddev, "--name", name, *options)
        self.device_name = name
        options = [] if checkpoint_interval_ms is None else ["--checkpoint-interval-ms", str(checkpoint_interval_ms)]
        self.device_path = self.cli("wdev", "create", ldev, ddev, "--name", name, *options)
        size = block_size(self.device_path)
        if size != expected:
            raise self.failure(f"{self.device_path} has {size} bytes, not {expected}")
        return self.device_path

    def cli(self, *args: str) -> str:
        """walbops(): at most 120 s, raising ``failure``."""
        return walbops(*args, timeout=120, failure=self.failure)

    def start(self, role: str) -> None:
        """Start the agent ``role`` (archive, proxy, proxy1, storage) on its port and base dir."""
        args = [sys.executable, "-m", "walbops.cli.main", "agent", kind(role), "--listen", "127.0.0.1",
                "--port", str(self.ports[role]), "--id", agent_id(role), "--base-dir", str(self.root / role),
                *self.credential_args(role), "--log-file", str(self.root / f"{role}.log"),
                "--shutdown-timeout", "10"]
        if kind(role) == "storage":
            proxies = ",".join(f"127.0.0.1:{self.port_for(role, proxy)}" for proxy in self.proxies())
            args += ["--archive", f"127.0.0.1:{self.port_for(role, 'archive')}", "--proxies", proxies]
        args += self.tuning.get(kind(role), []) + self.agent_args.get(role, [])
        process = self.processes[role] = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                                          env=agent_env(self.asyncio_debug))
        # Ready when the process we started answers (not one left over on the port).
        self.wait_for_agent(role, 30, process.pid, lambda: process.poll() is not None)

    def wait_for_agent(self, role: str, timeout: float, pid: int | None = None,
                       gone: Callable[[], bool] = lambda: False) -> None:
        """Wait until agent ``role`` answers, as process ``pid`` if given; ``failure`` with its log
        after ``timeout`` [s] or once ``gone()``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.ctl.get(agent_id(role), "pid") == pid or pid is None:
                    return
            except (WalbopsError, OSError):
                pass
            if time.monotonic() > deadline or gone():
                raise self.failure(f"the {role} agent did not start:\n{self.log(role)}")
            time.sleep(0.05)

    def stop(self, role: str, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal an agent and wait for it to exit; returns its exit code (SIGKILL after ``timeout``)."""
        process = self.processes.pop(role, None)
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise self.failure(f"the {role} agent did not stop within {timeout:.0f} s after {sig!r}") from None

    def restart(self, role: str, sig: int = signal.SIGTERM) -> None:
        """Stop an agent with ``sig`` and start it again on the same port and base dir."""
        self.stop(role, sig)
        self.start(role)

    def alive(self, role: str) -> bool:
        process = self.processes.get(role)
        return process is not None and process.poll() is None

    def log(self, role: str) -> str:
        path = self.root / f"{role}.log"
        return path.read_text() if path.exists() else ""

    def start_all(self) -> None:
        """Every agent, the storage last (it ships to the others)."""
        for role in sorted(self.ports, key=lambda role: kind(role) == "storage"):
            self.start(role)

    # ------------------------------------------------------------------ WalB's stest steps

    def setup_volume(self, vol: str = "vol0") -> None:
        """init-vol on s0 and a0, archive-info a0 on each proxy, start them (the tutorial's steps)."""
        ctl = self.ctl
        ctl.run("s0", "init-vol", vol=vol, wdev=self.device_name)
        ctl.run("a0", "init-vol", vol=vol)
        for proxy in self.proxies():
            ctl.run(agent_id(proxy), "archive-info", cmd="add", vol=vol, archive="a0", host="127.0.0.1",
                    port=self.port_for(proxy, "archive"))
            ctl.run(agent_id(proxy), "start", vol=vol)

    def full_backup(self, vol: str = "vol0", timeout: float = 120, **args: object) -> None:
        self.ctl.run("s0", "full-bkp", vol=vol, **args)
        self.ctl.wait_for_state("s0", vol, {"Target"}, timeout=timeout)
        # WdiffRecv is Archived while a diff arrives: the first one may already be on its way.
        assert self.ctl.get_state("a0", vol) in ("Archived", "WdiffRecv")

    def restored_sha1(self, vol: str, gid: int, size: int | None = None, archive: str = "a0") -> str:
        """sha1 of snapshot gid restored on ``archive`` (of its first ``size`` bytes: a volume grown since)."""
        device = self.ctl.restore(archive, vol, gid, timeout=self.restore_timeout)
        try:
            return self.image_sha1(device, size)
        finally:
            self.ctl.del_restored(archive, vol, gid)

    def image_sha1(self, path: str, size: int | None = None) -> str:
        """sha1 of a restored image or a base where the archive keeps it (here: this machine)."""
        return sha1_of_device(path, size)

    def snapshot_and_verify(self, vol: str = "vol0", timeout: float = 120) -> int:
        """WalB's restore_and_verify_sha1: sha1 of the device, snapshot, restorable, restore, compare.

        No writes may run: the sha1 is taken before the snapshot and must describe it.
        """
        expected = sha1_of_device(self.device_path)
        gid = int(self.ctl.run("s0", "snapshot", vol=vol)["gid"])
        self.ctl.wait_for_restorable("a0", vol, gid, timeout=timeout)
        assert self.restored_sha1(vol, gid) == expected, f"restored gid {gid} differs from the device"
        return gid

    def backed_up(self, vol: str = "vol0", name: str = "wdev0") -> str:
        """A device, the three agents, a volume, and a full backup of some random data (WalB's n1)."""
        device = self.make_device(name)
        self.start_all()
        self.setup_volume(vol)
        write_random(device, random.Random(name), count=32)
        self.full_backup(vol)
        return device

    def snapshot_restorable(self, vol: str = "vol0", timeout: float = 120) -> tuple[int, str]:
        """sha1 of the device (no writes may run), an explicit snapshot, restorable on a0: (gid, sha1)."""
        expected = sha1_of_device(self.device_path)
        gid = int(self.ctl.run("s0", "snapshot", vol=vol)["gid"])
        self.ctl.wait_for_restorable("a0", vol, gid, timeout=timeout)
        return gid, expected

    def is_restorable(self, vol: str, gid: int) -> bool:
        """Whether a0 lists gid as restorable; an archive that does not answer has nothing restorable."""
        try:
            return gid in self.ctl.get_restorable("a0", vol, include_implicit=True)
        except (WalbopsError, OSError):
            return False

    def close(self) -> None:
        """teardown(), raising ``failure`` if any of it failed."""
        errors = self.teardown()
        if errors:
            raise self.failure("; ".join(errors))

    def teardown(self) -> list[str]:
        """Stop every agent, detach restored images, delete the device, whatever state they are in.

        Returns what failed; a second call has nothing left to do."""
        errors = []
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()  # all at once; then wait for each
        for role in list(self.processes):
            try:
                self.stop(role, timeout=30)
            except self.failure as exc:
                errors.append(str(exc))
        for relay in self.relays.values():
            relay.close()
        self.relays.clear()
        for device in devices_under(str(self.root / "archive")):
            subprocess.run(["losetup", "--detach", device], capture_output=True)
        for name in [self.device_name, *self.extra_devices]:
            if not name:
                continue
            try:
                result = subprocess.run([sys.executable, "-m", "walbops.cli.main", "wdev", "delete", name, "--force"],
                                        capture_output=True, text=True, timeout=120)
                if result.returncode != 0:
                    errors.append(f"wdev delete {name}: {result.stderr.strip()}")
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"wdev delete {name}: {exc}")
        self.device_name = self.device_path = ""
        self.extra_devices.clear()
        return errors
