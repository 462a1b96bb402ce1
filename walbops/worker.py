"""The worker: WalB's walb-worker for one archive, with the retention policy on top (docs/worker.md).

Every ``kick_interval`` it looks at each volume of the archive that runs no action and no task
of the worker, and picks at most one task per volume, in WalB's order (walb.md §7.4):

1. finish an interrupted apply (the base is applying);
2. apply: up to the newest snapshot older than ``apply.keep_period``, on the volume with the
   most diff bytes before that point, at most once per ``apply.interval`` per volume;
3. merge when a volume holds ``merge.threshold_nr`` diffs or more: the longest run of mergeable
   diffs, 2..``max_nr`` of them and at most ``max_size`` bytes;
4. replicate to each enabled ``repl`` server whose latest snapshot is not this archive's, least
   recently replicated first, at most once per its ``interval`` (``max_send_size`` caps the diff
   bytes one replication sends, by its target gid), at most ``max_replication_task`` at once;
5. merge by ``merge.interval``, the same choice, whatever the count;
6. retention: the policy of docs/retention.md every ``retention.interval``.

At most ``max_task`` tasks run at once, each in a thread that talks to the archive through a
Controller. Every decision is logged with its reason. SIGINT/SIGTERM stop picking tasks and
wait for the running ones; a second signal exits at once (the archive finishes what it was
told; the next worker picks up from the archive's state).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from .agents.config import load_yaml
from .controller import Controller, Layout, Server
from .errors import OperationError, UsageError, WalbopsError
from .gid import MetaDiff, MetaSnap, MetaState, Restorable
from .logs import new_request_id, request_id_var
from .retention import Policy, enforce, restorable_snapshots
from .units import parse_size

logger = logging.getLogger("walbops.worker")

# WalB's PERIOD: N (seconds) | Nm | Nh | Nd | hh:mm:ss. Note: m is a minute here, as in walb-worker,
# where --keep-within (retention) follows borg and restic and m is a month.
_PERIOD_RE = re.compile(r"([0-9]+)([smhd]?)|([0-9]+):([0-5][0-9]):([0-5][0-9])", re.ASCII)
_PERIOD_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_period(value: int | str) -> int:
    """Seconds of a WalB PERIOD: ``90``, ``30m``, ``12h``, ``7d`` or ``hh:mm:ss``.

    Raises:
        UsageError: anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _PERIOD_RE.fullmatch(str(value).strip())
    if match is None:
        raise UsageError(f"period {value!r}: expected N (seconds), Nm, Nh, Nd or hh:mm:ss")
    if match[1] is not None:
        return int(match[1]) * _PERIOD_UNITS[match[2]]
    return int(match[3]) * 3600 + int(match[4]) * 60 + int(match[5])


_PERIOD = {"type": ["integer", "string"]}
_COUNT = {"type": "integer", "minimum": 1}
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "general": {
            "type": "object",
            "properties": {
                "layout": {"type": "string"}, "server": {"type": "string"},
                "address": {"type": "string"}, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "key_file": {"type": "string"},
                "max_task": _COUNT, "max_replication_task": _COUNT,
                "kick_interval": {"type": "number", "exclusiveMinimum": 0},
                "timeout": {"type": "number", "minimum": 0}, "volumes": {"type": "array", "items": {"type": "string"}},
            },
            "additionalProperties": False,
        },
        "apply": {
            "type": "object", "properties": {"keep_period": _PERIOD, "interval": _PERIOD},
            "required": ["keep_period"], "additionalProperties": False,
        },
        "merge": {
            "type": "object",
            "properties": {"interval": _PERIOD, "max_nr": {"type": "integer", "minimum": 2},
                           "max_size": {"type": ["integer", "string"]}, "threshold_nr": {"type": "integer",
                                                                                       "minimum": 2}},
            "required": ["interval"], "additionalProperties": False,
        },
        "retention": {
            "type": "object",
            "properties": {"interval": _PERIOD, "keep_last": {"type": "integer", "minimum": 0},
                           "keep_within": {"type": "string"}, "keep_hourly": {"type": "integer", "minimum": 0},
                           "keep_daily": {"type": "integer", "minimum": 0},
                           "keep_weekly": {"type": "integer", "minimum": 0},
                           "keep_monthly": {"type": "integer", "minimum": 0},
                           "keep_yearly": {"type": "integer", "minimum": 0},
                           "keep_gids": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
            "additionalProperties": False,
        },
        "repl": {
            "type": "object",
            "properties": {
                "servers": {"type": "object", "additionalProperties": {
                    "type": "object",
                    "properties": {"address": {"type": "string"},
                                   "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                   "interval": _PERIOD, "max_send_size": {"type": ["integer", "string"]},
                                   "enabled": {"type": "boolean"}},
                    "additionalProperties": False}},
                "disabled_volumes": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["servers"], "additionalProperties": False,
        },
        "log_file": {"type": "string"},
    },
    "required": ["general"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ReplServer:
    """A destination archive of the worker's replication (walb-worker's repl.servers entry)."""

    server: Server
    interval: int = 0  # [s] at most one replication per volume this often
    max_send_size: int | None = None  # [bytes] of diffs one replication sends; None: no limit
    enabled: bool = True


@dataclass(frozen=True)
class WorkerConfig:
    """A worker's configuration (docs/worker.md)."""

    layout: Layout
    archive: Server
    max_task: int = 1
    kick_interval: float = 1.0  # [s]
    timeout: float = 3600.0  # [s] the longest wait for one apply or merge
    volumes: tuple[str, ...] = ()  # empty: every volume of the archive
    keep_period: int | None = None  # [s] apply diffs older than this; None: no apply by age
    apply_interval: int = 86400  # [s] WalB's default: one apply a day per volume
    merge_interval: int | None = None  # [s] None: no merge by interval
    merge_max_nr: int = 10
    merge_max_size: int = 1 << 30  # [bytes]
    merge_threshold_nr: int | None = None
    retention: Policy | None = None
    retention_interval: int = 3600  # [s]
    repl_servers: tuple[ReplServer, ...] = ()
    repl_disabled_volumes: tuple[str, ...] = ()
    max_replication_task: int = 1
    log_file: str = "-"

    @classmethod
    def load(cls, path: str) -> "WorkerConfig":
        """Read and check a worker config; errors name the file and the key.

        Raises:
            UsageError: unreadable, invalid YAML, or a key that breaks the schema.
        """
        data = load_yaml(path)
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(CONFIG_SCHEMA).iter_errors(data))
        if error is not None:
            where = ".".join(str(part) for part in error.absolute_path) or "(top)"
            raise UsageError(f"{path}: {where}: {error.message}")
        try:
            return cls.from_mapping(data)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "WorkerConfig":
        general = data["general"]
        if "layout" in general:
            layout = Layout.load(general["layout"])
            archive = layout.get(general["server"]) if "server" in general else layout.primary_archive
        elif {"address", "port", "key_file"} <= set(general):
            archive = Server("a0", general["address"], general["port"], "archive")
            layout = Layout((archive,), general["key_file"])
        else:
            raise UsageError("general: give layout (and server), or address, port and key_file")
        options: dict[str, Any] = {
            "layout": layout, "archive": archive, "max_task": general.get("max_task", 1),
            "kick_interval": float(general.get("kick_interval", 1.0)), "timeout": float(general.get("timeout", 3600)),
            "volumes": tuple(general.get("volumes", ())), "log_file": data.get("log_file", "-"),
            "max_replication_task": general.get("max_replication_task", 1),
        }
        if "repl" in data:
            options["repl_servers"] = tuple(_repl_server(layout, name, entry)
                                            for name, entry in data["repl"]["servers"].items())
            options["repl_disabled_volumes"] = tuple(data["repl"].get("disabled_volumes", ()))
        if "apply" in data:
            options["keep_period"] = parse_period(data["apply"]["keep_period"])
            options["apply_interval"] = parse_period(data["apply"].get("interval", "1d"))
        if "merge" in data:
            merge = data["merge"]
            options["merge_interval"] = parse_period(merge["interval"])
            options["merge_max_nr"] = merge.get("max_nr", 10)
            options["merge_max_size"] = parse_size(merge.get("max_size", "1G"))
            options["merge_threshold_nr"] = merge.get("threshold_nr")
        if "retention" in data:
            rules = dict(data["retention"])
            options["retention_interval"] = parse_period(rules.pop("interval", "1h"))
            options["retention"] = Policy.from_mapping(rules)
        return cls(**options)


def _repl_server(layout: Layout, name: str, entry: dict[str, Any]) -> ReplServer:
    """A repl.servers entry: an archive of the layout by name, or one at address and port."""
    if "address" in entry or "port" in entry:
        if not {"address", "port"} <= set(entry):
            raise UsageError(f"repl.servers.{name}: give both address and port, or neither (a layout name)")
        server = Server(name, entry["address"], entry["port"], "archive")
    else:
        server = layout.get(name)
        if server.role != "archive":
            raise UsageError(f"repl.servers.{name}: a {server.role}, not an archive")
    max_send = entry.get("max_send_size")
    return ReplServer(server, parse_period(entry.get("interval", 0)),
                      parse_size(max_send) if max_send not in (None, 0, "0") else None, entry.get("enabled", True))


# ------------------------------------------------------------------------------------------
# Decisions (pure)


@dataclass(frozen=True)
class VolumeView:
    """What the worker reads of one volume before deciding."""

    vol: str
    state: str
    base: MetaState
    chain: tuple[MetaDiff, ...]  # the applicable diffs from the base
    restorable: tuple[Restorable, ...]
    running: tuple[str, ...]  # actions running on the archive
    replicas: tuple[tuple[str, str], ...] = ()  # (destination "host:port", its latest snapshot) from ts-delta
    latest: str = ""  # this archive's latest snapshot


@dataclass(frozen=True)
class Task:
    """One thing to do on one volume, with the reason the worker chose it."""

    kind: str  # finish-apply, apply, merge, replicate, retention
    vol: str
    reason: str
    gid: int | None = None  # apply, replicate: the target; merge: the first snapshot
    gid_e: int | None = None  # merge: stop before diffs starting here
    max_size: int | None = None
    server: Server | None = None  # replicate: the destination

    def __str__(self) -> str:
        target = f" {self.gid}" + (f"..{self.gid_e}" if self.gid_e is not None else "") if self.gid is not None else ""
        to = f" to {self.server.name}" if self.server is not None else ""
        return f"{self.vol}: {self.kind}{target}{to} ({self.reason})"


def merge_run(chain: Sequence[MetaDiff], max_nr: int, max_size: int) -> list[MetaDiff]:
    """The longest run of diffs that merge into one: each after the first is mergeable and no compared
    diff is in it; at most ``max_nr`` diffs and ``max_size`` bytes (the first diff always counts)."""
    best: list[MetaDiff] = []
    for start in range(len(chain)):
        if chain[start].is_comp_diff:
            continue
        run = [chain[start]]
        size = chain[start].data_size
        for diff in chain[start + 1:]:
            if not diff.is_mergeable or diff.is_comp_diff or len(run) >= max_nr or size + diff.data_size > max_size:
                break
            run.append(diff)
            size += diff.data_size
        if len(run) > len(best):
            best = run
    return best if len(best) >= 2 else []


def _merge_task(view: VolumeView, config: WorkerConfig, reason: str) -> Task | None:
    run = merge_run(view.chain, config.merge_max_nr, config.merge_max_size)
    if not run:
        return None
    return Task("merge", view.vol, f"{reason}; {len(run)} diffs, {sum(d.data_size for d in run)} bytes",
                run[0].snap_b.gid_b, run[-1].snap_e.gid_b, config.merge_max_size)


def bytes_before(view: VolumeView, gid: int) -> int:
    """Diff bytes the base would take in if applied up to ``gid``."""
    return sum(diff.data_size for diff in view.chain if diff.snap_e.gid_b <= gid)


def apply_target(view: VolumeView, now: float, keep_period: int) -> int | None:
    """The newest restorable gid at least ``keep_period`` old, if it is past the base."""
    limit = now - keep_period
    old = [snap.gid for snap in view.restorable if snap.timestamp <= limit]
    if not old or max(old) <= view.base.snap_b.gid_b:
        return None
    return max(old)


def replication_target(view: VolumeView, there: str | None, max_send_size: int | None) -> int | None:
    """The gid to replicate up to: the newest restorable one, or with ``max_send_size`` the newest
    whose diffs after the destination's snapshot ``there`` fit in it (at least the first)."""
    newest = max((snap.gid for snap in view.restorable), default=None)
    if newest is None or max_send_size is None or there is None:
        return newest
    start = MetaSnap.parse(there).gid_b
    sent, target = 0, None
    for diff in view.chain:
        if diff.snap_b.gid_b < start:
            continue
        sent += diff.data_size
        if target is not None and sent > max_send_size:
            break
        target = diff.snap_e.gid_b
    restorable = [snap.gid for snap in view.restorable if target is None or snap.gid <= target]
    return max(restorable, default=newest)


def replication_tasks(view: VolumeView, config: WorkerConfig,
                      due: Callable[[VolumeView, str, int], bool]) -> list[Task]:
    """Replications of ``view`` that are due, least recently run first (walb-worker's step 4)."""
    if view.vol in config.repl_disabled_volumes:
        return []
    where = dict(view.replicas)
    tasks = []
    for repl in config.repl_servers:
        destination = f"{repl.server.address}:{repl.server.port}"
        there = where.get(destination)
        if not repl.enabled or there == view.latest or not due(view, f"replicate:{repl.server.name}", repl.interval):
            continue
        gid = replication_target(view, there, repl.max_send_size)
        if gid is not None:
            reason = f"{repl.server.name} is at {there}, here {view.latest}" if there else \
                f"{repl.server.name} not replicated yet by this worker"
            tasks.append(Task("replicate", view.vol, reason, gid, server=repl.server))
    return tasks


def choose(views: Sequence[VolumeView], config: WorkerConfig, now: float,
           last_run: dict[tuple[str, str], float]) -> list[Task]:
    """The tasks worth doing now, best first, at most one per volume; volumes that run an action are left alone.

    Args:
        last_run: (vol, kind) -> when the worker last started that kind of task on the volume.
    """
    idle = [view for view in views if view.state == "Archived" and not view.running]
    chosen: dict[str, Task] = {}

    def propose(task: Task | None) -> None:
        if task is not None and task.vol not in chosen:
            chosen[task.vol] = task

    def due(view: VolumeView, kind: str, interval: int) -> bool:
        return now - last_run.get((view.vol, kind), float("-inf")) >= interval

    for view in idle:
        if view.base.is_applying and view.base.snap_e is not None:
            propose(Task("finish-apply", view.vol, f"the base is {view.base.to_str(False)}", view.base.snap_e.gid_b))
    if config.keep_period is not None:
        candidates = []
        for view in idle:
            target = apply_target(view, now, config.keep_period)
            if target is not None and due(view, "apply", config.apply_interval):
                candidates.append((bytes_before(view, target), view, target))
        for size, view, target in sorted(candidates, key=lambda c: c[0], reverse=True):
            propose(Task("apply", view.vol, f"{size} diff bytes older than {config.keep_period} s", target))
    if config.merge_interval is not None and config.merge_threshold_nr is not None:
        for view in idle:
            if len(view.chain) >= config.merge_threshold_nr:
                propose(_merge_task(view, config, f"{len(view.chain)} diffs >= {config.merge_threshold_nr}"))
    replications = [task for view in idle for task in replication_tasks(view, config, due)]
    for task in sorted(replications, key=lambda t: last_run.get((t.vol, f"replicate:{t.server.name}"
                                                                 if t.server else ""), float("-inf"))):
        propose(task)
    if config.merge_interval is not None:
        for view in idle:
            if due(view, "merge", config.merge_interval):
                propose(_merge_task(view, config, f"merge interval {config.merge_interval} s"))
    if config.retention is not None:
        for view in idle:
            if due(view, "retention", config.retention_interval):
                propose(Task("retention", view.vol, f"retention interval {config.retention_interval} s"))
    return list(chosen.values())


# ------------------------------------------------------------------------------------------
# The daemon


@dataclass
class Worker:
    config: WorkerConfig
    clock: Callable[[], float] = time.time
    ctl: Controller = field(init=False)
    last_run: dict[tuple[str, str], float] = field(default_factory=dict)
    should_exit: bool = False
    force_exit: bool = False

    def __post_init__(self) -> None:
        self.ctl = Controller(self.config.layout, timeout=60.0)
        self._busy: dict[str, concurrent.futures.Future[Any]] = {}  # vol -> its running task
        self._kinds: dict[str, str] = {}  # vol -> the kind of its running task
        self._lock = threading.Lock()

    def handle_exit(self, sig: int | None = None, frame: Any = None) -> None:
        if self.should_exit:
            self.force_exit = True
            logger.warning("second signal: exiting now; the archive finishes what it was told")
        self.should_exit = True

    def views(self) -> list[VolumeView]:
        archive = self.config.archive
        vols = list(self.config.volumes) or [str(vol) for vol in self.ctl.get(archive, "vol")]
        actions = self.ctl.get_all_actions(archive)
        found = []
        for vol in vols:
            state = self.ctl.get_state(archive, vol)
            if state != "Archived":
                found.append(VolumeView(vol, state, MetaState.parse("<|0|>"), (), (), ()))
                continue
            running = tuple(name for name, action in actions.get(vol, {}).items() if action["running"])
            replicas: tuple[tuple[str, str], ...] = ()
            latest = ""
            if self.config.repl_servers:
                replicas = tuple((str(entry["destination"]), str(entry["latest"]))
                                 for entry in self.ctl.get(archive, "ts-delta", vol))
                latest = str(self.ctl.get(archive, "latest-snap", vol))
            found.append(VolumeView(vol, state, self.ctl.get_base(archive, vol),
                                    tuple(self.ctl.get_applicable_diff_list(archive, vol)),
                                    tuple(restorable_snapshots(self.ctl, archive, vol)), running, replicas, latest))
        return found

    def tick(self, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        """Reap finished tasks, then start what is due while slots are free."""
        for vol, future in list(self._busy.items()):
            if future.done():
                del self._busy[vol]
                self._kinds.pop(vol, None)
                error = future.exception()
                if error is not None:
                    logger.error("%s: task failed: %s", vol, error)
        free = self.config.max_task - len(self._busy)
        if free <= 0 or self.should_exit:
            return
        now = self.clock()
        tasks = [task for task in choose(self.views(), self.config, now, self.last_run) if task.vol not in self._busy]
        replicating = sum(1 for kind in self._kinds.values() if kind == "replicate")
        for task in tasks:
            if free <= 0:
                break
            if task.kind == "replicate":
                if replicating >= self.config.max_replication_task:
                    continue
                replicating += 1
            self.last_run[(task.vol, task.kind if task.server is None else f"replicate:{task.server.name}")] = now
            # Each task is a command of its own: its id is in the worker's lines and the agents'.
            context = contextvars.copy_context()
            context.run(request_id_var.set, new_request_id())
            self._busy[task.vol] = pool.submit(context.run, self.run_task, task)
            self._kinds[task.vol] = task.kind
            free -= 1

    def run_task(self, task: Task) -> None:
        logger.info("start %s", task)
        archive, started = self.config.archive, time.monotonic()
        if task.kind in ("apply", "finish-apply"):
            assert task.gid is not None
            base = self.ctl.apply(archive, task.vol, task.gid, self.config.timeout)
            logger.info("done %s: base %s in %.1f s", task, base.to_str(False), time.monotonic() - started)
        elif task.kind == "merge":
            assert task.gid is not None
            merged = self.ctl.merge(archive, task.vol, task.gid, task.gid_e, task.max_size, self.config.timeout)
            logger.info("done %s: %s in %.1f s", task, merged, time.monotonic() - started)
        elif task.kind == "replicate":
            assert task.server is not None and task.gid is not None
            gid = self.ctl.replicate_once(archive, task.vol, task.server, task.gid, timeout=self.config.timeout)
            logger.info("done %s: %s can restore %d in %.1f s", task, task.server.name, gid, time.monotonic() - started)
        elif task.kind == "retention":
            assert self.config.retention is not None
            outcome = enforce(self.ctl, archive, task.vol, self.config.retention, timeout=self.config.timeout,
                              log=logger.info)
            logger.info("done %s: kept %s, removed %s, %s bytes freed in %.1f s", task, sorted(outcome.decision.kept),
                        outcome.decision.removed, outcome.bytes_freed, time.monotonic() - started)
        else:
            raise OperationError(f"unknown task {task.kind}")

    def run_once(self) -> int:
        """One round: start what is due now, wait for it, and return (for cron, and for tests)."""
        with concurrent.futures.ThreadPoolExecutor(self.config.max_task, thread_name_prefix="task") as pool:
            self.tick(pool)
            failed = 0
            for vol, future in self._busy.items():
                error = future.exception()
                if error is not None:
                    logger.error("%s: task failed: %s", vol, error)
                    failed += 1
            self._busy.clear()
            self._kinds.clear()
        return 1 if failed else 0

    def run(self) -> int:
        """Loop until a signal; returns the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        logger.info("worker for archive %s (%s:%d): %d tasks at most, every %.1f s", self.config.archive.name,
                    self.config.archive.address, self.config.archive.port, self.config.max_task,
                    self.config.kick_interval)
        pool = concurrent.futures.ThreadPoolExecutor(self.config.max_task, thread_name_prefix="task")
        try:
            while not self.should_exit:
                try:
                    self.tick(pool)
                except (WalbopsError, OSError) as exc:
                    logger.warning("cannot read the archive: %s; trying again", exc)
                deadline = time.monotonic() + self.config.kick_interval
                while not self.should_exit and time.monotonic() < deadline:
                    time.sleep(min(0.1, self.config.kick_interval))
            if self._busy:
                logger.info("waiting for %d running tasks (a second signal exits now)", len(self._busy))
            while self._busy and not self.force_exit:
                for vol, future in list(self._busy.items()):
                    if future.done():
                        del self._busy[vol]
                time.sleep(0.1)
        finally:
            pool.shutdown(wait=not self.force_exit, cancel_futures=True)
        if self.force_exit and self._busy:
            logger.warning("worker stopped with %d tasks still waiting on the archive", len(self._busy))
            logging.shutdown()
            os._exit(1)  # the task threads are blocked in calls to the archive; do not join them
        logger.info("worker stopped")
        return 0
