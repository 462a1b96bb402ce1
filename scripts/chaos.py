"""Chaos rounds on a whole backup group: faults drawn at random under continuous writes (issue 18).

The group is the scenario tests' cluster (tests/scenarios/cluster.py): two storage agents holding
three volumes between them (s0: vol0 and vol1, s1: vol2, each on a walb device of its own), one
proxy, a primary archive a0 and a secondary a1 kept synchronizing. Every agent runs as a process
on loopback; the links storage -> proxy, storage -> archive and proxy -> archive pass through
relays, so that a link can be cut (reset, or silent: packets dropped) and brought back.

A writer per volume writes random 4 KiB blocks with O_DIRECT all the time. A digest snapshot
stops that volume's writer between two writes, takes the sha1 of the device and the snapshot,
and lets the writer go on: the sha1 is the image the gid must restore to.

Each round draws one or two faults and runs them while one or two commands race them:

* ``kill``: SIGKILL or SIGTERM of an agent, started again after a random time;
* ``cut``: a link cut (reset or silent) for a random time;
* commands, as WalB's stest/scenario1.py draws them: a digest snapshot, merge, apply, a hash
  backup, a restore checked against its digest.

Then the round heals (dead agents started, links back) and must converge within ``--bound``
seconds: every volume's storage Target again (a backup a fault broke is recovered as an operator
would, by ``Controller.recover``: noted in the round), a new digest snapshot restorable on both
archives. Two recorded snapshots are restored at random and compared; at the end every
recorded snapshot that no apply has taken into the base must still be restorable on a0.

Beside each archive runs its worker (CHAOS_WORKER: apply what is older than a minute, merge
implicit diffs; a0's also replicates to a1), so that chains stay as short as a deployment's.

    ./scripts/chaos [--rounds 10] [--minutes 30] [--seed N] [--bound 120] [--dir /var/tmp]

``--soak`` runs the same group without faults for ``--minutes``, under the same writes, with the
workers also enforcing a retention policy (SOAK_WORKER). Every
``--sample-interval`` seconds it samples each daemon (the five agents, the worker, the three walb
device daemons: resident memory, open file descriptors, threads), the archives' disk use, and
each volume's RPO on a0 (now minus the timestamp of its newest restorable snapshot). It fails
when a series grows without bound: a least-squares line over the last half of the samples'
floors (FLOOR_SAMPLES) rises by more than GROWTH_LIMITS allows over that half, once that half spans MIN_JUDGED_SPAN (shorter
soaks report the rises unjudged). At the end a digest snapshot must restore right on both
archives.

    ./scripts/chaos --soak [--minutes 60] [--sample-interval 60] [--seed N] [--dir /var/tmp]

Prints one JSON document (each round's faults, commands, recoveries and convergence time) and a
one-line summary on stderr; exit 1 when a restore was wrong, a snapshot was lost or a round did
not converge. Needs root (FUSE, loop devices). Not in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS / "scenarios"), str(TESTS)]
import cluster as scenario  # noqa: E402  (tests/scenarios/cluster.py)

from walbops.errors import WalbopsError  # noqa: E402

MiB = 1 << 20
BLOCK = 4096  # [bytes] one write
WRITE_PAUSE = 0.005  # [s] between two writes of a volume's writer
VOLUMES = {"vol0": "storage", "vol1": "storage", "vol2": "storage1"}  # volume -> the role of its storage
AGENTS = ("storage", "storage1", "proxy", "archive", "archive1")
LINKS = (("storage", "proxy"), ("storage1", "proxy"), ("proxy", "archive"), ("storage", "archive"),
         ("storage1", "archive"))
COMMANDS = ("snapshot", "merge", "apply", "hash-backup", "restore")

# The worker beside each archive in the fault rounds: applies and merges keep every chain short,
# as a deployment's would (docs/worker.md; bare numbers are seconds). Without it, chains of
# thousands of diffs make each hash backup and replication outgrow the convergence bound.
# No retention here: every recorded snapshot newer than the base must stay restorable.
CHAOS_WORKER = {
    "apply": {"keep_period": "60", "interval": "20"},
    "merge": {"interval": "10", "max_nr": 20, "threshold_nr": 40},
}
# The soak's worker: the same, with a retention policy on top and periods short enough that a few
# minutes see every task several times.
SOAK_WORKER = {
    "apply": {"keep_period": "30", "interval": "20"},
    "merge": {"interval": "10", "max_nr": 20, "threshold_nr": 40},
    "retention": {"interval": "15", "keep_last": 20},
}
# How much a soak series may rise over the last half of the run (a fitted line's rise), as a
# fraction of its mean or an absolute amount, whichever is larger; more is a leak.
GROWTH_LIMITS = {
    "rss_kib": (0.10, 8 * 1024),  # [KiB]
    "fds": (0.0, 4),
    "threads": (0.0, 2),
    "disk_bytes": (0.25, 16 * MiB),
}
# A series is judged by its floor: each sample replaced by the lowest of it and the samples just
# before it, this many in all. Connections and diffs in flight add fds and disk use for a moment
# (a sample that catches a replication sees 30 fds where 12 is the rule); a leak raises the floor.
FLOOR_SAMPLES = 5
# [s] The last half of a soak must span this long for its rises to be judged: a shorter run (the
# test command's 2 minutes) still sees caches fill and the archive's chain reach its steady length.
MIN_JUDGED_SPAN = 600


class ChaosError(Exception):
    """What the run found wrong."""


class ChaosCluster(scenario.Cluster):
    failure = ChaosError


class Writer:
    """Random 4 KiB O_DIRECT writes to a device until stopped; ``paused()`` holds them off."""

    def __init__(self, path: str, size: int, seed: int) -> None:
        self.path, self.size, self.rng = path, size, random.Random(seed)
        self.lock = threading.Lock()
        self.writes = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer {path}", daemon=True)

    def _run(self) -> None:
        buffer = mmap.mmap(-1, BLOCK)
        fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
        try:
            while not self._stop.is_set():
                with self.lock:
                    buffer[:] = self.rng.randbytes(BLOCK)
                    os.pwrite(fd, buffer, self.rng.randrange(self.size // BLOCK) * BLOCK)
                    self.writes += 1
                time.sleep(WRITE_PAUSE)
        except BaseException as exc:  # reported by the round that sees it
            self.error = exc
        finally:
            os.close(fd)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Chaos:
    def __init__(self, root: Path, seed: int, bound: float) -> None:
        self.rng = random.Random(seed)
        self.bound = bound
        root.mkdir(parents=True, exist_ok=True)
        self.cluster = ChaosCluster(root)
        self.devices: dict[str, str] = {}
        self.writers: dict[str, Writer] = {}
        self.digests: dict[str, dict[int, str]] = {vol: {} for vol in VOLUMES}  # gid -> sha1 of the device
        self.cut: set[tuple[str, str]] = set()
        self.workers: dict[str, subprocess.Popen[bytes]] = {}  # archive name -> its worker
        self.current: dict[str, Any] | None = None  # the round being healed
        self.restores = {"checked": 0, "wrong": 0}

    @property
    def ctl(self) -> Any:
        return self.cluster.ctl  # the layout, and so the controller, grows with the cluster

    # -- setting up ---------------------------------------------------------------------------

    def build(self, worker_tasks: dict[str, Any]) -> None:
        cluster = self.cluster
        _, self.devices["vol2"] = cluster.add_storage(f"chs1x{os.getpid()}")
        cluster.add_archive("archive1")
        for client, server in LINKS:
            cluster.add_relay(client, server)
        self.devices["vol0"] = cluster.make_device(f"chs0x{os.getpid()}")
        self.devices["vol1"] = self._second_device(f"chs0y{os.getpid()}")
        cluster.start_all()
        for vol, storage in VOLUMES.items():
            self._set_up(vol, storage)
        for vol, device in self.devices.items():
            self.writers[vol] = Writer(device, scenario.block_size(device), self.rng.randrange(2**32)).start()
        for vol in VOLUMES:
            self.ctl.synchronize("a0", vol, "a1", timeout=self.bound)
        # a0's worker replicates to a1 whatever synchronizing did not bring there (after a hash
        # backup whose replication a fault cut, say).
        self.start_worker("a0", {"repl": {"servers": {"a1": {"interval": "5"}}}, **worker_tasks})
        self.start_worker("a1", worker_tasks)

    def start_worker(self, archive: str, tasks: dict[str, Any]) -> None:
        """The walbops worker of ``archive`` with ``tasks`` (sections of its config), as a deployment
        runs one beside each archive (docs/worker.md)."""
        config = self.cluster.root / f"worker-{archive}.yml"
        config.write_text(yaml.safe_dump({
            "general": {"layout": str(self.cluster.layout_path), "server": archive, "kick_interval": 1}, **tasks}))
        self.workers[archive] = subprocess.Popen(
            [sys.executable, "-m", "walbops.cli.main", "worker", "--config", str(config),
             "--log-file", str(self.cluster.root / f"worker-{archive}.log")], stdin=subprocess.DEVNULL)

    def check_workers(self) -> None:
        for archive, worker in self.workers.items():
            if worker.poll() is not None:
                raise ChaosError(f"the worker of {archive} exited with {worker.returncode}: see worker-{archive}.log")

    def _second_device(self, name: str) -> str:
        root = self.cluster.root
        ldev, ddev = str(root / "ldev-vol1.img"), str(root / "ddev-vol1.img")
        for path, size in ((ldev, self.cluster.ldev_size), (ddev, self.cluster.device_size)):
            with open(path, "wb") as stream:
                stream.truncate(size)
        self.cluster.cli("wdev", "format-ldev", ldev, ddev, "--name", name)
        self.cluster.extra_devices.append(name)
        return self.cluster.cli("wdev", "create", ldev, ddev, "--name", name, "--checkpoint-interval-ms", "1000")

    def _set_up(self, vol: str, storage: str) -> None:
        """init-vol on the storage and a0, a0 in the proxy's archive-info, a full backup."""
        cluster, ctl = self.cluster, self.ctl
        wdev = Path(self.devices[vol]).name
        ctl.run(scenario.agent_id(storage), "init-vol", vol=vol, wdev=wdev)
        ctl.run("a0", "init-vol", vol=vol)
        ctl.run("p0", "archive-info", cmd="add", vol=vol, archive="a0", host="127.0.0.1",
                port=cluster.port_for("proxy", "archive"))
        ctl.run("p0", "start", vol=vol)
        scenario.write_random(self.devices[vol], random.Random(vol), count=32)
        ctl.run(scenario.agent_id(storage), "full-bkp", vol=vol)
        ctl.wait_for_state(scenario.agent_id(storage), vol, {"Target"}, timeout=self.bound)

    # -- commands -----------------------------------------------------------------------------

    def digest_snapshot(self, vol: str) -> int:
        """Hold the volume's writes, sha1 of the device, snapshot, let them go: the gid's image."""
        with self.writers[vol].lock:
            expected = scenario.sha1_of_device(self.devices[vol])
            gid = int(self.ctl.run(scenario.agent_id(VOLUMES[vol]), "snapshot", vol=vol)["gid"])
        self.digests[vol][gid] = expected
        return gid

    def check_restore(self, vol: str, archive: str = "a0") -> str:
        """Restore a recorded snapshot the archive lists and compare it with its digest."""
        for _ in range(3):
            listed = set(self.ctl.get_restorable(archive, vol, include_implicit=True))
            candidates = sorted(gid for gid in self.digests[vol] if gid in listed)
            if not candidates:
                return "nothing recorded restorable yet"
            gid = self.rng.choice(candidates)
            if gid in self.ctl.get(archive, "restored", vol):
                # A restore a fault cut from its caller may have finished: the image stays until
                # deleted, as in WalB (a drill purges them first too).
                self.ctl.del_restored(archive, vol, gid)
            try:
                return self.check_gid(vol, archive, gid)
            except WalbopsError:
                if gid >= self.base_gid(archive, vol):
                    raise
                # The worker's apply took it into the base between the listing and the restore.
        return f"{vol}: every snapshot drawn on {archive} was applied meanwhile"

    def check_gid(self, vol: str, archive: str, gid: int) -> str:
        """Restore recorded snapshot ``gid`` and compare it with its digest."""
        device = self.ctl.restore(archive, vol, gid, timeout=self.bound)
        try:
            actual = hashlib.sha1(Path(device).read_bytes()).hexdigest()
        finally:
            self.ctl.del_restored(archive, vol, gid)
        self.restores["checked"] += 1
        if actual != self.digests[vol][gid]:
            self.restores["wrong"] += 1
            raise ChaosError(f"{vol}: gid {gid} restored on {archive} differs from the device at that snapshot")
        return f"{vol}: gid {gid} on {archive} matches"

    def command(self, name: str, vol: str) -> dict[str, Any]:
        """Run one racing command; a refusal or a failure a fault caused is its outcome, not an error
        of the run (only a wrong restore is)."""
        started = time.monotonic()
        outcome: dict[str, Any] = {"command": name, "vol": vol}
        try:
            if name == "snapshot":
                outcome["gid"] = self.digest_snapshot(vol)
            elif name == "restore":
                outcome["result"] = self.check_restore(vol, self.rng.choice(["a0", "a1"]))
            elif name == "merge":
                restorable = self.ctl.get_restorable("a0", vol, include_implicit=True)
                if len(restorable) >= 2:
                    self.ctl.merge("a0", vol, restorable[0], timeout=self.bound)
                outcome["result"] = "done"
            elif name == "apply":
                restorable = self.ctl.get_restorable("a0", vol)
                if len(restorable) >= 2:
                    gid = restorable[len(restorable) // 2]
                    self.ctl.apply("a0", vol, gid, timeout=self.bound)
                    outcome["gid"] = gid
                outcome["result"] = "done"
            elif name == "hash-backup":
                outcome["gid"] = self.ctl.hash_backup(scenario.agent_id(VOLUMES[vol]), vol, timeout=self.bound)
        except (WalbopsError, OSError) as exc:  # a ChaosError (a wrong restore) goes on up
            outcome["refused"] = str(exc)[:300]
        outcome["seconds"] = round(time.monotonic() - started, 2)
        return outcome

    # -- faults -------------------------------------------------------------------------------

    def draw_faults(self) -> list[tuple[str, Any]]:
        """One or two faults, on different agents or links (two at once on one would race each other)."""
        targets = [("kill", role) for role in AGENTS] + [("cut", link) for link in LINKS]
        return self.rng.sample(targets, self.rng.randint(1, 2))

    def fault(self, kind: str, target: Any) -> dict[str, Any]:
        hold = round(self.rng.uniform(0.5, 4.0), 2)
        if kind == "kill":
            sig = self.rng.choice([signal.SIGKILL, signal.SIGTERM])
            self.cluster.stop(target, sig)
            time.sleep(hold)
            self.cluster.start(target)
            return {"fault": "kill", "agent": scenario.agent_id(target), "signal": sig.name, "down_s": hold}
        silent = self.rng.random() < 0.5
        relay = self.cluster.relays[target]
        relay.cut(silent=silent)
        self.cut.add(target)
        time.sleep(hold)
        relay.restore()
        self.cut.discard(target)
        return {"fault": "cut", "link": "->".join(scenario.agent_id(role) for role in target),
                "silent": silent, "cut_s": hold}

    # -- a round ------------------------------------------------------------------------------

    def round(self, index: int) -> dict[str, Any]:
        faults = self.draw_faults()
        commands = [(self.rng.choice(COMMANDS), self.rng.choice(list(VOLUMES))) for _ in range(self.rng.randint(1, 2))]
        with ThreadPoolExecutor(len(faults) + len(commands)) as pool:
            running = [pool.submit(self.command, name, vol) for name, vol in commands]
            time.sleep(self.rng.uniform(0, 0.5))
            happened = [pool.submit(self.fault, kind, target) for kind, target in faults]
            fault_results = [future.result() for future in happened]
            command_results = [future.result() for future in running]
        self.current = {"round": index, "faults": fault_results, "commands": command_results}
        started = time.monotonic()
        recovered = self.heal_and_converge()
        converged = round(time.monotonic() - started, 2)
        checks = [self.check_restore(vol, archive) for vol, archive in
                  ((self.rng.choice(list(VOLUMES)), self.rng.choice(["a0", "a1"])) for _ in range(2))]
        self.check_writers()
        return {"round": index, "faults": fault_results, "commands": command_results, "recovered": recovered,
                "converged_s": converged, "checks": checks}

    def heal_and_converge(self) -> list[str]:
        """Every agent up, every link back; every volume's storage Target (recovered if a backup a
        fault broke left it otherwise), and a new digest snapshot restorable on a0 and a1."""
        for role in AGENTS:
            if not self.cluster.alive(role):
                self.cluster.start(role)
        self.check_workers()
        for link in list(self.cut):
            self.cluster.relays[link].restore()
        self.cut.clear()
        deadline = time.monotonic() + self.bound
        recovered = []
        for vol, role in VOLUMES.items():
            storage = scenario.agent_id(role)
            state = self._settled_state(storage, vol, deadline)
            if state != "Target":
                self.ctl.recover(storage, vol, timeout=max(1.0, deadline - time.monotonic()))
                recovered.append(f"{vol}: {storage} was {state}: recovered by a hash backup")
        self.snapshot_everywhere(deadline)
        return recovered

    def snapshot_everywhere(self, deadline: float) -> list[tuple[str, int]]:
        """A digest snapshot of every volume, waited for until restorable on a0 and a1; (vol, gid)s."""
        taken = []
        for vol in VOLUMES:
            gid = self.digest_snapshot(vol)
            for archive in ("a0", "a1"):
                self._wait_restorable(archive, vol, gid, deadline)
            taken.append((vol, gid))
        return taken

    def check_writers(self) -> None:
        for vol, writer in self.writers.items():
            if writer.error is not None:
                raise ChaosError(f"{vol}: the writer failed: {writer.error!r}")

    def _settled_state(self, storage: str, vol: str, deadline: float) -> str:
        """The storage's state once it stops moving (Target, or one a broken backup left)."""
        while True:
            try:
                state = self.ctl.get_state(storage, vol)
            except (WalbopsError, OSError):
                state = "unreachable"
            if state in ("Target", "SyncReady", "Stopped") or time.monotonic() > deadline:
                return state
            time.sleep(0.2)

    def _wait_restorable(self, archive: str, vol: str, gid: int, deadline: float) -> None:
        while True:
            try:
                self.ctl.kick_proxies(vol)
                if gid in self.ctl.get_restorable(archive, vol, include_implicit=True):
                    return
            except (WalbopsError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ChaosError(f"{vol}: gid {gid} not restorable on {archive} within {self.bound:.0f} s")
            time.sleep(0.2)

    def final_check(self) -> list[str]:
        """Every recorded snapshot no apply took into the base is still restorable on a0."""
        lost = []
        for vol, digests in self.digests.items():
            listed = set(self.ctl.get_restorable("a0", vol, include_implicit=True))
            floor = self.base_gid("a0", vol)
            lost += [f"{vol}: gid {gid}" for gid in digests if gid >= floor and gid not in listed]
        return lost

    def base_gid(self, archive: str, vol: str) -> int:
        """The oldest gid the archive can still restore: its base's, or while an apply runs, the
        gid it is applying to (snapshots before it go as the apply ends)."""
        base = self.ctl.get_base(archive, vol)
        return (base.snap_e or base.snap_b).gid_b

    # -- soak -------------------------------------------------------------------------------

    def daemons(self) -> dict[str, int]:
        """The pid of every daemon of the group: agents by id, the worker, walb devices by name."""
        pids = {scenario.agent_id(role): process.pid for role, process in self.cluster.processes.items()
                if process.poll() is None}
        pids.update({f"worker {archive}": worker.pid for archive, worker in self.workers.items()
                     if worker.poll() is None})
        for pidfile in Path(os.environ["WALBOPS_RUN_DIR"]).glob("*/daemon.pid"):
            pids[f"device {pidfile.parent.name}"] = int(pidfile.read_text().split()[0])
        return pids

    def sample(self, started: float) -> dict[str, Any]:
        """One soak sample: each daemon's memory, fds and threads, the archives' disk use, the RPOs."""
        taken: dict[str, Any] = {"t": round(time.monotonic() - started, 1), "daemons": {}}
        for name, pid in self.daemons().items():
            try:
                taken["daemons"][name] = process_usage(pid)
            except OSError:
                pass  # exited between the listing and the reading: the next sample shows it
        for archive in ("archive", "archive1"):
            taken[f"disk_bytes {scenario.agent_id(archive)}"] = disk_use(self.cluster.root / archive)
        now = time.time()
        for vol in VOLUMES:
            entries = self.ctl.get("a0", "restorable", vol, "all")
            taken[f"rpo_s {vol}"] = round(now - max(int(entry["timestamp"]) for entry in entries), 1) \
                if entries else None
        self.check_writers()
        self.check_workers()
        return taken

    def soak(self, seconds: float, interval: float) -> dict[str, Any]:
        """Run without faults for ``seconds``, sampling every ``interval``; then a digest snapshot
        restores right on both archives. Returns the samples and what grew."""
        started = time.monotonic()
        samples = [self.sample(started)]
        while time.monotonic() - started < seconds:
            time.sleep(max(0.0, min(interval, seconds - (time.monotonic() - started))))
            samples.append(self.sample(started))
        taken = self.snapshot_everywhere(time.monotonic() + self.bound)
        checks = [self.check_gid(vol, archive, gid) for vol, gid in taken for archive in ("a0", "a1")]
        rpos = {vol: max((sample[f"rpo_s {vol}"] or 0.0) for sample in samples) for vol in VOLUMES}
        half = samples[len(samples) // 2:]
        judged = half[-1]["t"] - half[0]["t"] >= MIN_JUDGED_SPAN
        return {"samples": samples, "judged": judged, "grown": grown_series(samples), "worst_rpo_s": rpos,
                "checks": checks}

    def close(self) -> list[str]:
        errors = []
        for archive, worker in self.workers.items():
            errors += stop_worker(archive, worker)
        for writer in self.writers.values():
            writer.stop()
        for relay in self.cluster.relays.values():
            relay.restore()
        return errors + self.cluster.teardown()


def stop_worker(archive: str, worker: subprocess.Popen[bytes]) -> list[str]:
    """SIGTERM: it waits for its running tasks; a second signal exits at once. What went wrong."""
    if worker.poll() is not None:
        return []
    worker.terminate()
    try:
        worker.wait(timeout=30)
        return []
    except subprocess.TimeoutExpired:
        errors = [f"the worker of {archive} still waited for its tasks 30 s after SIGTERM"]
    worker.terminate()
    try:
        worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
        errors.append(f"the worker of {archive} ignored a second SIGTERM")
        worker.kill()
        worker.wait()
    return errors


def process_usage(pid: int) -> dict[str, int]:
    """A process's resident memory [KiB], open file descriptors and threads, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def disk_use(directory: Path) -> int:
    """Bytes allocated under ``directory`` (sparse files count what they hold, as du does)."""
    total = 0
    for path in directory.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_blocks * 512
        except OSError:
            pass  # removed while we walked (a merge's inputs, a restore's tmp)
    return total


def rise(points: list[tuple[float, float]]) -> float:
    """How much a least-squares line through ``points`` (t, value) rises from the first t to the last."""
    count = len(points)
    mean_t = sum(t for t, _ in points) / count
    mean_v = sum(v for _, v in points) / count
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return slope * (points[-1][0] - points[0][0])


def floors(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Each (t, value) with the lowest value of it and the FLOOR_SAMPLES - 1 points before it."""
    return [(t, min(value for _, value in points[max(0, index - FLOOR_SAMPLES + 1):index + 1]))
            for index, (t, _) in enumerate(points)]


def grown_series(samples: list[dict[str, Any]]) -> list[str]:
    """The series that rose over the last half of ``samples`` by more than GROWTH_LIMITS allows."""
    half = samples[len(samples) // 2:]
    if len(half) < 3:
        return []
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for sample in samples:
        for name, usage in sample["daemons"].items():
            for key, value in usage.items():
                series.setdefault((name, key), []).append((sample["t"], value))
        for key, value in sample.items():
            if key.startswith("disk_bytes "):
                series.setdefault((key.split()[1], "disk_bytes"), []).append((sample["t"], value))
    grown = []
    for (name, key), values in sorted(series.items()):
        # The floors come from every sample (the first of the last half has its predecessors).
        points = [(t, value) for t, value in floors(values) if t >= half[0]["t"]]
        if len(points) < 3:
            continue  # a daemon restarted meanwhile
        fraction, amount = GROWTH_LIMITS[key]
        mean = sum(value for _, value in points) / len(points)
        limit = max(fraction * mean, amount)
        if (up := rise(points)) > limit:
            grown.append(f"{name} {key}: +{up:.0f} over the last {points[-1][0] - points[0][0]:.0f} s "
                         f"(mean {mean:.0f}, limit {limit:.0f})")
    return grown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=30, help="stop starting rounds after this long")
    parser.add_argument("--seed", type=int, default=None, help="default: drawn and printed")
    parser.add_argument("--bound", type=float, default=120, help="[s] a round must converge within this")
    parser.add_argument("--dir", default="/var/tmp", help="scratch directory")
    parser.add_argument("--soak", action="store_true", help="no faults: sample the daemons for --minutes")
    parser.add_argument("--sample-interval", type=float, default=60, help="[s] between two soak samples")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("scripts/chaos needs root (FUSE, loop devices)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    work = Path(tempfile.mkdtemp(prefix="walbops-chaos-", dir=args.dir))
    os.environ["WALBOPS_RUN_DIR"] = str(work / "run")
    os.environ["WALBOPS_DEV_DIR"] = str(work / "dev")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    rounds: list[dict[str, Any]] = []
    failure = ""
    chaos = Chaos(work / "cluster", seed, args.bound)
    lost: list[str] = []
    soaked: dict[str, Any] | None = None
    try:
        chaos.build(SOAK_WORKER if args.soak else CHAOS_WORKER)
        if args.soak:
            soaked = chaos.soak(args.minutes * 60, args.sample_interval)
            if soaked["judged"] and soaked["grown"]:
                failure = "grew without bound: " + "; ".join(soaked["grown"])
        for index in range(0 if args.soak else args.rounds):
            if time.monotonic() - started > args.minutes * 60:
                break
            print(f"[chaos] round {index + 1}/{args.rounds}", file=sys.stderr, flush=True)
            rounds.append(chaos.round(index + 1))
        lost = [] if args.soak else chaos.final_check()
    except ChaosError as exc:
        failure = str(exc)
    except Exception as exc:  # noqa: BLE001  (a fault of the harness or of walbops: reported, kept)
        failure = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        errors = chaos.close()
        if not failure and not errors:
            shutil.rmtree(work, ignore_errors=True)
    ok = not failure and not lost and not errors
    if not ok:  # what the kept cluster's snapshots must restore to, for whoever looks into it
        (work / "digests.json").write_text(json.dumps(chaos.digests, indent=1, sort_keys=True))
    report = {
        "chaos": "walbops", "seed": seed, "ok": ok, "rounds": len(rounds), "failure": failure or None,
        "lost_snapshots": lost, "restores": chaos.restores, "cleanup_errors": errors,
        "writes": {vol: writer.writes for vol, writer in chaos.writers.items()},
        "max_converge_s": max((entry["converged_s"] for entry in rounds), default=None),
        "kept": None if ok else str(work), "round_log": rounds,
        "failed_round": None if ok or args.soak else chaos.current,
        "soak": soaked,
    }
    print(json.dumps(report, indent=1))
    what = f"soak of {args.minutes:g} min" if args.soak else f"{len(rounds)} rounds"
    print(f"[chaos] seed {seed}: {what}, {chaos.restores['checked']} restores checked, "
          f"{chaos.restores['wrong']} wrong, {len(lost)} snapshots lost, "
          f"{'ok' if ok else 'FAILED: ' + (failure or 'see the report')}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
