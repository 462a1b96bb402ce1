"""What every agent shares: lifecycle, signals, connections, command dispatch, background tasks.

The lifecycle is uvicorn's: ``startup()`` → ``main_loop()`` (a 0.1 s tick until asked to
exit) → ``shutdown()``. Signal handlers only set flags. A graceful shutdown stops taking
connections, lets running work finish for ``shutdown_timeout`` seconds, then cancels what
is left and says so in the log; a second signal (or ``shutdown force``) cancels at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import jsonschema

from .. import __version__
from ..errors import OperationError, ProtocolError, RemoteError, UsageError, WalbopsError
from ..logs import request_id_var
from ..net import messages
from ..net.tls import Credentials, Secret
from ..net.transport import Channel, open_connection, serve
from . import metadata
from .config import Config, host_port
from .metrics import AgentMetrics, Families, serve_metrics
from .state import Refused

HANDLED_SIGNALS = (
    signal.SIGINT,  # Ctrl+C
    signal.SIGTERM,  # kill <pid>
)
TICK = 0.1  # [s] main loop period
LOCK_FILE = ".lock"  # in the base dir; not a volume id, so never taken for a volume
BROKEN = "Broken"  # not a WalB state: what status says of a volume whose metadata does not load
# Commands whose request opens a stream: their bytes and durations are the transfer metrics.
TRANSFERS = frozenset({messages.WLOG_TRANSFER, messages.WDIFF_TRANSFER, messages.DIRTY_FULL_SYNC,
                       messages.DIRTY_HASH_SYNC, messages.REPL_SYNC})


@dataclass
class Request:
    """One request being served."""

    channel: Channel
    id: int
    command: str
    args: dict[str, Any]
    answered: bool = False

    async def accept(self) -> None:
        """Answer ``accepted``: the work goes on (a transfer's stream follows on this channel)."""
        await self.channel.accept(self.id)
        self.answered = True

    async def answer(self, result: Any) -> None:
        """Answer with ``result`` before the handler ends (a stream or more requests follow)."""
        await self.channel.respond(self.id, result)
        self.answered = True


Handler = Callable[[Request], Awaitable[Any]]


class HandlerStat:
    """WalB's ``get handler-stat``: requests served per command and their mean latency, and
    ``get`` calls per target, since the last read (a read resets them, as in WalB)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.gets: dict[str, int] = {}

    @contextlib.contextmanager
    def timed(self, request: Request) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            command = request.command
            self.counts[command] = self.counts.get(command, 0) + 1
            self.seconds[command] = self.seconds.get(command, 0.0) + time.monotonic() - started
            if command == "get":
                target = str(request.args.get("target"))
                self.gets[target] = self.gets.get(target, 0) + 1

    def read_and_reset(self) -> dict[str, Any]:
        stat = {"PROTOCOL_COUNT": dict(sorted(self.counts.items())),
                "PROTOCOL_LATENCY": {command: round(self.seconds[command] / count, 6)
                                     for command, count in sorted(self.counts.items())},
                "GET_COUNT": dict(sorted(self.gets.items()))}
        self.counts, self.seconds, self.gets = {}, {}, {}
        return stat


CONTROLLER = frozenset({"controller"})
ANY_ROLE = frozenset(messages.ROLES)


@dataclass
class Command:
    """A command an agent serves: its handler, its arguments' schema, and the client roles that
    may call it (docs/protocol.md §6.2; the controller alone unless said otherwise)."""

    handler: Handler
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    help: str = ""
    roles: frozenset[str] = CONTROLLER


def args_schema(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON schema for a command's arguments."""
    return {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required),
            "additionalProperties": False}


VOL = {"type": "string", "pattern": "^[0-9A-Za-z-]{1,64}$"}
GID = {"type": "integer", "minimum": 0, "maximum": messages.U64_MAX}


class Volume(Protocol):
    """What every agent's per-volume object offers."""

    vol: str

    def __init__(self, base_dir: str, vol: str) -> None: ...

    @property
    def state(self) -> str: ...


V = TypeVar("V", bound=Volume)


class Agent(Generic[V]):
    """Base of the storage, proxy and archive agents.

    ``volume_class`` makes the agent's volumes: they are loaded from ``base_dir`` on
    first use and kept in ``volumes``.
    """

    host_type = "agent"
    volume_class: type[V]

    def __init__(self, config: Config) -> None:
        self.config = config
        self.log = logging.getLogger(f"walbops.{config.role}")
        self.should_exit = False
        self.force_exit = False
        self.started_at = time.time()
        self.commands: dict[str, Command] = {
            "status": Command(self.cmd_status, args_schema({}, {"vol": VOL}), "agent or volume status"),
            "get": Command(self.cmd_get, args_schema({"target": {"type": "string"}}, {"vol": VOL, "args": {}}),
                           "a value (walbc get TARGET)"),
            "shutdown": Command(self.cmd_shutdown, args_schema({}, {"mode": {"enum": ["graceful", "force"]}}),
                                "stop the agent"),
            "version": Command(self.cmd_version, args_schema({}), "walbops version", ANY_ROLE),
        }
        self.getters: dict[str, Callable[[dict[str, Any]], Any]] = {
            "host-type": lambda args: self.host_type,
            "pid": lambda args: os.getpid(),
            "vol": lambda args: self.volume_ids(),
            "handler-stat": lambda args: self.handler_stat.read_and_reset(),
        }
        self.handler_stat = HandlerStat()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connections: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(int(config.max_connections))
        self.server: asyncio.Server | None = None
        self.key: Secret = b""
        self.volumes: dict[str, V] = {}
        self.broken: dict[str, str] = {}  # volume id -> its metadata file and what is wrong with it
        self._lock_fd = -1  # holds the base dir's lock for the process's life (lock_base_dir)
        self.metrics = AgentMetrics(self.host_type, str(config.id))
        self.metrics.add_collector(self.collect_metrics)
        self.metrics_server: asyncio.Server | None = None

    # ------------------------------------------------------------------ to be provided by agents

    def volume(self, vol: str, create: bool = False) -> V:
        """The volume ``vol``; unless ``create``, one in state Clear is refused as unknown.

        Raises:
            Refused: (``broken-volume``) its metadata cannot be loaded; see :meth:`_load_volume`.
        """
        volume = self.volumes.get(vol)
        if volume is None:
            volume = self._load_volume(vol)
            if volume.state == "Clear" and not create:
                raise OperationError(f"volume {vol!r} not found on {self.host_type} {self.config.id}")
            self.volumes[vol] = volume
        return volume

    def _load_volume(self, vol: str) -> V:
        """Load ``vol`` from its metadata. A volume whose metadata is unreadable or corrupt is
        broken: it is refused (and listed in ``status``) while the others are served, and every
        later use reads the file again, so a repaired or removed file needs no restart."""
        metadata.check_volume_id(vol)
        try:
            volume = self.volume_class(self.config.base_dir, vol)
        except (WalbopsError, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            detail = str(exc) if isinstance(exc, WalbopsError) else f"{type(exc).__name__}: {exc}"
            problem = f"{metadata.meta_path(self.config.base_dir, vol)}: {detail}"
            if self.broken.get(vol) != problem:
                self.log.error("volume %s is broken, the others are served: %s", vol, problem)
            self.broken[vol] = problem
            raise Refused("broken-volume", f"volume {vol} on {self.host_type} {self.config.id} is broken: {problem} "
                          "(repair or move away the file; the next request reads it again)") from exc
        if self.broken.pop(vol, None) is not None:
            self.log.info("volume %s loads again", vol)
        return volume

    def stored_volumes(self) -> list[V]:
        """Every volume with metadata under ``base_dir`` that loads (broken ones are logged, skipped)."""
        loaded = []
        for vol in metadata.volume_dirs(self.config.base_dir):
            with contextlib.suppress(Refused):
                loaded.append(self.volume(vol, create=True))
        return loaded

    def volume_ids(self) -> list[str]:
        return sorted(set(metadata.volume_dirs(self.config.base_dir)) |
                      {vol for vol, v in self.volumes.items() if v.state != "Clear"})

    def vol_getter(self, read: Callable[[V, Any], Any],
                   every: Callable[[V], dict[str, Any]] | None = None) -> Callable[[dict[str, Any]], Any]:
        """A ``get`` target of one volume: ``read(volume, extra argument)``; with ``every``, the
        target without a volume is ``[{"name": vol, **every(volume)}]`` for every volume that is
        not Clear (WalB's ``[vol]`` targets: ``log-usage``, ``latest-snap``)."""
        def getter(args: dict[str, Any]) -> Any:
            vol = args.get("vol")
            if vol is None:
                if every is None:
                    raise OperationError(f"get {args['target']}: needs a volume")
                return [{"name": volume.vol, **every(volume)} for volume in self.stored_volumes()
                        if volume.state != "Clear"]
            return read(self.volume(vol), args.get("args"))
        return getter

    def volume_status(self, vol: str) -> dict[str, Any]:
        raise OperationError(f"volume {vol!r} not found")

    def collect_metrics(self, families: Families) -> None:
        """The gauges of a scrape (docs/operations.md): every agent's volumes' states; agents add theirs."""
        families.gauge("walbops_connections_open", "Authenticated connections being served", {},
                       len(self._connections))
        for vol in self.volume_ids():
            try:
                state = self.volume(vol, create=True).state
            except Refused:
                families.gauge("walbops_volume_broken", "1 for a volume whose metadata does not load",
                               {"vol": vol}, 1)
                continue
            families.gauge("walbops_volume_state", "1 for the state the volume is in (WalB's names)",
                           {"vol": vol, "state": state}, 1)

    async def refresh_metrics(self) -> None:
        """Read what a scrape needs that takes I/O (the storage's devices) before it is collected."""

    async def render_metrics(self) -> bytes:
        await self.refresh_metrics()
        return self.metrics.render()

    async def on_start(self) -> None:
        """Reload state, resume work (after the server listens)."""

    async def on_tick(self) -> None:
        """Periodic work, every TICK seconds."""

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        self.key = self.config.credentials()
        os.makedirs(self.config.base_dir, exist_ok=True)
        self._lock_fd = lock_base_dir(self.config.base_dir, f"{self.host_type} {self.config.id}")
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.handle_exit, sig)
        self.server = await serve(self.config.listen, int(self.config.port), self.key, str(self.config.id),
                                  self.host_type, self._serve_channel, timeout=float(self.config.socket_timeout),
                                  on_refused=lambda reason: self.metrics.handshake_failures.labels(reason).inc())
        if self.config.metrics_listen:
            host, port = host_port(self.config.metrics_listen)
            self.metrics_server = await serve_metrics(host, port, self.render_metrics)
            self.log.info("metrics at http://%s/metrics", self.config.metrics_listen)
        await self.on_start()
        mode = "TLS" if isinstance(self.key, Credentials) and self.key.tls else "key mode, unencrypted"
        self.log.info("%s agent %s listening on %s:%s (pid %d, %s)", self.host_type, self.config.id,
                      self.config.listen, self.port, os.getpid(), mode)

    @property
    def port(self) -> int:
        if self.server is None or not self.server.sockets:
            return int(self.config.port)
        return int(self.server.sockets[0].getsockname()[1])

    def handle_exit(self, sig: int | None = None) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def main_loop(self) -> None:
        while not self.should_exit:
            await asyncio.sleep(TICK)
            try:
                await self.on_tick()
            except Exception:
                self.log.exception("periodic work failed")

    async def shutdown(self) -> None:
        # Stop accepting connections.
        if self.server is not None:
            self.server.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        pending = self._tasks | self._connections
        if pending and not self.force_exit:
            self.log.info("waiting up to %.0f s for %d tasks (a second signal cancels them)",
                          float(self.config.shutdown_timeout), len(pending))
            deadline = time.monotonic() + float(self.config.shutdown_timeout)
            while pending and not self.force_exit and time.monotonic() < deadline:
                _, pending = await asyncio.wait(pending, timeout=min(TICK, deadline - time.monotonic()))
        if pending:
            self.log.warning("cancelling %d unfinished tasks", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5)
        self.log.info("%s agent %s stopped", self.host_type, self.config.id)

    async def connect_peer(self, host: str, port: int) -> Channel:
        """A connection to another agent, as this agent's role, with its credentials."""
        return await open_connection(host, port, self.key, str(self.config.id), self.host_type,
                                     timeout=float(self.config.socket_timeout))

    @contextlib.asynccontextmanager
    async def sending(self, channel: Channel, kind: str) -> AsyncIterator[Channel]:
        """Use ``channel`` for one outgoing transfer of ``kind``: counted in the transfer metrics,
        closed afterwards."""
        async with channel:
            with self.metrics.transfer(kind, "sent", channel.wire_bytes):
                yield channel

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str, detached: bool = False) -> asyncio.Task[Any]:
        """Run background work that shutdown waits for; failures are logged. Work a request asked
        for keeps its request id in its log lines; ``detached`` work (a loop that outlives the
        request that started it: shipping, forwarding) has none."""
        context = contextvars.copy_context()
        if detached:
            context.run(request_id_var.set, None)
        task = asyncio.create_task(coroutine, name=name, context=context)
        self._tasks.add(task)

        def finished(done: asyncio.Task[Any]) -> None:
            self._tasks.discard(done)
            if not done.cancelled() and (error := done.exception()) is not None:
                self.metrics.errors.labels(type(error).__name__).inc()
                self.log.error("%s failed: %s", name, error)

        task.add_done_callback(finished)
        return task

    # ------------------------------------------------------------------ requests

    async def _serve_channel(self, channel: Channel) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self.metrics.connections.inc()
        try:
            async with self._slots:
                while not self.should_exit and not channel.closed:  # a receiver's abort closes it
                    request = await channel.recv_request()
                    if request is None:
                        return
                    # The operator's request id, for this request's log lines and the requests it makes.
                    request_id_var.set(request.get("rid"))
                    await self.dispatch(Request(channel, request["id"], request["command"], request["args"]))
        finally:
            if task is not None:
                self._connections.discard(task)

    async def dispatch(self, request: Request) -> None:
        command = self.commands.get(request.command)
        channel = request.channel
        if command is None:
            self.metrics.refusals.labels("(unknown)", "unknown-command").inc()
            await channel.refuse(request.id, f"unknown command {request.command!r} for the {self.host_type} agent",
                                 "unknown-command")
            return
        if channel.peer_role not in command.roles:
            self.metrics.refusals.labels(request.command, "forbidden").inc()
            needed = " or ".join(sorted(command.roles))
            await channel.refuse(request.id, f"{request.command} on the {self.host_type} agent needs role {needed}; "
                                 f"this connection is {channel.peer_role} {channel.peer_id}", "forbidden")
            self.log.warning("refused %s from %s %s (%s): needs role %s", request.command, channel.peer_role,
                             channel.peer_id, channel.name, needed)
            return
        try:
            messages.validate_args(request.command, request.args)
            error = jsonschema.exceptions.best_match(
                jsonschema.Draft202012Validator(command.schema).iter_errors(request.args))
            if error is not None:
                where = ".".join(str(p) for p in error.absolute_path)
                raise UsageError(f"{request.command}: {'args.' + where if where else 'args'}: {error.message}")
            with self.handler_stat.timed(request):
                if request.command in TRANSFERS:
                    with self.metrics.transfer(request.command, "received", channel.wire_bytes):
                        result = await command.handler(request)
                else:
                    result = await command.handler(request)
        except Refused as exc:
            await self._refuse(request, str(exc), exc.reason)
        except RemoteError as exc:
            await self._refuse(request, str(exc), exc.reason)
        except ProtocolError as exc:
            if channel.closed:
                raise  # the request's own connection broke (the channel closes itself then)
            # Another connection the handler made broke (an archive, a proxy): answer with why.
            await self._refuse(request, f"{request.command}: {exc}", "peer-failed")
        except WalbopsError as exc:
            await self._refuse(request, str(exc), "bad-args" if isinstance(exc, UsageError) else None)
        except OSError as exc:
            self.log.error("%s: %s", request.command, exc)
            await self._refuse(request, f"{request.command}: {exc.strerror or exc}", "io-error")
        except Exception as exc:
            # A bug, not the peer's fault: keep the traceback for us, answer the peer, keep serving.
            self.metrics.errors.labels(type(exc).__name__).inc()
            self.log.exception("%s: internal error", request.command)
            await self._refuse(request, f"{request.command}: internal error in the {self.host_type} agent "
                               f"{self.config.id} (its log has the traceback)", "internal-error")
        else:
            if not request.answered:
                await channel.respond(request.id, result)

    async def _refuse(self, request: Request, error: str, reason: str | None) -> None:
        self.metrics.refusals.labels(request.command, reason or ProtocolError.reason).inc()
        if request.answered:
            # An accepted transfer: its handler already told the peer with abort.
            self.log.warning("%s failed after it was accepted: %s", request.command, error)
            return
        await request.channel.refuse(request.id, error[: messages.MAX_TEXT], reason)

    # ------------------------------------------------------------------ built-in commands

    async def cmd_status(self, request: Request) -> Any:
        vol = request.args.get("vol")
        if vol is not None:
            return self.volume_status(vol)
        return {"host_type": self.host_type, "id": self.config.id, "pid": os.getpid(), "version": __version__,
                "uptime": round(time.time() - self.started_at, 1), "auth": self.auth_status(),
                "volumes": {vol: self._status_or_broken(vol) for vol in self.volume_ids()}}

    def _status_or_broken(self, vol: str) -> dict[str, Any]:
        try:
            return self.volume_status(vol)
        except Refused as exc:
            if exc.reason != "broken-volume":
                raise
            return {"vol": vol, "state": BROKEN, "error": self.broken.get(vol, str(exc))}

    def auth_status(self) -> dict[str, Any]:
        """How this agent authenticates: key mode, or TLS with its certificate's role and expiry."""
        if not (isinstance(self.key, Credentials) and self.key.tls):
            return {"mode": "key"}
        from ..pki import certificate_info  # cryptography, only where TLS is on

        try:
            return {"mode": "tls", "certificate": certificate_info(self.key.tls.cert).as_dict()}
        except (WalbopsError, OSError) as exc:
            return {"mode": "tls", "certificate": None, "error": str(exc)}

    async def cmd_get(self, request: Request) -> Any:
        target = request.args["target"]
        getter = self.getters.get(target)
        if getter is None:
            raise UsageError(f"get: unknown target {target!r} for the {self.host_type} agent "
                             f"(known: {', '.join(sorted(self.getters))})")
        return getter(request.args)

    async def cmd_shutdown(self, request: Request) -> Any:
        self.handle_exit()
        if request.args.get("mode") == "force":
            self.force_exit = True
        return messages.ACCEPTED

    async def cmd_version(self, request: Request) -> Any:
        return {"version": __version__, "protocol": messages.PROTOCOL_VERSION, "pid": os.getpid(),
                "host_type": self.host_type, "id": self.config.id}


def lock_base_dir(base_dir: str, holder: str) -> int:
    """Take ``<base_dir>/.lock`` for this process (flock, released when the process ends, even by
    SIGKILL) and write ``holder`` and our pid into it; returns the descriptor to keep open.

    Raises:
        OperationError: another process holds it: two agents on one base dir would each think
            they own its volumes.
    """
    path = os.path.join(base_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise OperationError(f"{base_dir} is in use by {owner} (it holds {path}); "
                             "one agent per base directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder} (pid {os.getpid()})\n".encode(), 0)
    return fd


def run(agent: Agent) -> int:
    """Run an agent until it is told to stop; the process's exit code."""
    try:
        asyncio.run(agent.serve())
    except (WalbopsError, OSError) as exc:
        agent.log.error("%s", exc)
        return getattr(exc, "exit_code", 1)
    return 0
