"""The controller: talk to agents, one request per call, with walblib's names where they exist.

A layout file (YAML) names the servers::

    servers:
      - {name: s0, address: 127.0.0.1, port: 10000, role: storage}
      - {name: p0, address: 127.0.0.1, port: 10100, role: proxy}
      - {name: a0, address: 127.0.0.1, port: 10200, role: archive}
    key_file: /etc/walbops/cluster.key

The first archive is the primary one. Blocking waits poll ``get`` every 0.3 s, as walblib does.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import OperationError, UsageError
from .net.auth import load_key
from .net.transport import open_connection

POLL = 0.3  # [s] between polls of a blocking wait (walblib's interval)
DEFAULT_WAIT = 600.0  # [s]


@dataclass(frozen=True)
class Server:
    """One agent of a layout (walblib's ServerConnectionParam)."""

    name: str
    address: str
    port: int
    role: str


@dataclass(frozen=True)
class Layout:
    """The servers of one backup group, and the cluster key."""

    servers: tuple[Server, ...]
    key_file: str

    @classmethod
    def load(cls, path: str) -> "Layout":
        try:
            with open(path) as stream:
                data = yaml.safe_load(stream)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror}") from None
        if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
            raise UsageError(f"{path}: expected a mapping with a 'servers' list")
        servers = []
        for index, entry in enumerate(data["servers"]):
            try:
                servers.append(Server(str(entry["name"]), str(entry["address"]), int(entry["port"]),
                                      str(entry["role"])))
            except (KeyError, TypeError, ValueError):
                raise UsageError(f"{path}: servers[{index}] needs name, address, port and role") from None
            if servers[-1].role not in ("storage", "proxy", "archive"):
                raise UsageError(f"{path}: servers[{index}].role must be storage, proxy or archive")
        if "key_file" not in data:
            raise UsageError(f"{path}: key 'key_file' is required")
        return cls(tuple(servers), str(data["key_file"]))

    def get(self, name: str) -> Server:
        for server in self.servers:
            if server.name == name:
                return server
        raise UsageError(f"no server named {name!r} in the layout")

    def by_role(self, role: str) -> list[Server]:
        return [server for server in self.servers if server.role == role]

    @property
    def primary_archive(self) -> Server:
        archives = self.by_role("archive")
        if not archives:
            raise UsageError("the layout has no archive")
        return archives[0]


async def call(server: Server, key: bytes, command: str, args: dict[str, Any] | None = None,
               timeout: float = 30.0, client_id: str | None = None) -> Any:
    """Send one request to ``server`` and return its result (a fresh connection, as walbc does)."""
    channel = await open_connection(server.address, server.port, key, client_id or f"ctl-{socket.gethostname()}",
                                    "controller", timeout=timeout)
    async with channel:
        return await channel.request(command, args or {})


class Controller:
    """Blocking calls to the agents of a layout (walblib's Controller)."""

    def __init__(self, layout: Layout, timeout: float = 30.0) -> None:
        self.layout = layout
        self.key = load_key(layout.key_file)
        self.timeout = timeout

    def run(self, server: Server | str, command: str, **args: Any) -> Any:
        target = self.layout.get(server) if isinstance(server, str) else server
        return asyncio.run(call(target, self.key, command, args, self.timeout))

    def get(self, server: Server | str, target: str, vol: str | None = None, args: Any = None) -> Any:
        request: dict[str, Any] = {"target": target}
        if vol is not None:
            request["vol"] = vol
        if args is not None:
            request["args"] = args
        return self.run(server, "get", **request)

    def get_state(self, server: Server | str, vol: str) -> str:
        return str(self.get(server, "state", vol))

    def get_state_all(self, vol: str) -> dict[str, str]:
        states = {}
        for server in self.layout.servers:
            try:
                states[server.name] = self.get_state(server, vol)
            except OperationError as exc:
                states[server.name] = f"error: {exc}"
        return states

    def wait_for_state(self, server: Server | str, vol: str, states: set[str],
                       timeout: float = DEFAULT_WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            state = self.get_state(server, vol)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise OperationError(f"{vol}: still {state} after {timeout:.0f} s (waiting for {sorted(states)})")
            time.sleep(POLL)

    def get_restorable(self, archive: Server | str, vol: str, include_implicit: bool = False) -> list[int]:
        entries = self.get(archive, "restorable", vol, "all" if include_implicit else None)
        return [int(entry["gid"]) for entry in entries]

    def wait_for_restorable(self, archive: Server | str, vol: str, gid: int, timeout: float = DEFAULT_WAIT) -> None:
        deadline = time.monotonic() + timeout
        while gid not in self.get_restorable(archive, vol, include_implicit=True):
            if time.monotonic() > deadline:
                raise OperationError(f"{vol}: snapshot {gid} is not restorable after {timeout:.0f} s")
            time.sleep(POLL)

    def restore(self, archive: Server | str, vol: str, gid: int, timeout: float = DEFAULT_WAIT) -> str:
        """Restore snapshot gid and wait for it; returns a loop device of the restored image."""
        self.run(archive, "restore", vol=vol, gid=gid)
        deadline = time.monotonic() + timeout
        while gid not in self.get(archive, "restored", vol):
            if time.monotonic() > deadline:
                raise OperationError(f"{vol}: snapshot {gid} not restored after {timeout:.0f} s")
            time.sleep(POLL)
        return self.get_restored_path(archive, vol, gid)

    def get_restored_path(self, archive: Server | str, vol: str, gid: int) -> str:
        return str(self.get(archive, "restored-path", vol, gid))

    def del_restored(self, archive: Server | str, vol: str, gid: int) -> None:
        self.run(archive, "del-restored", vol=vol, gid=gid)

    def shutdown(self, server: Server | str, mode: str = "graceful") -> None:
        self.run(server, "shutdown", mode=mode)

    # walblib's workflows -------------------------------------------------------------

    def init_storage(self, storage: Server | str, vol: str, wdev: str) -> None:
        """Bind a volume to a walb device and let it run standby (logs discarded until a backup)."""
        self.run(storage, "init-vol", vol=vol, wdev=wdev)
        self.run(storage, "start", vol=vol, role="standby")

    def start_synchronizing(self, archive: Server | str, vol: str, compression: str = "lz4:0:1") -> None:
        """Make every proxy send the volume's diffs to ``archive``."""
        target = self.layout.get(archive) if isinstance(archive, str) else archive
        for proxy in self.layout.by_role("proxy"):
            state = self._state_or_clear(proxy, vol)
            if state == "Started":
                self.run(proxy, "stop", vol=vol, mode="graceful")
            known = self.run(proxy, "archive-info", cmd="list", vol=vol) if state != "Clear" else []
            if target.name not in known:
                self.run(proxy, "archive-info", cmd="add", vol=vol, archive=target.name, host=target.address,
                         port=target.port, compression=compression)
            self.run(proxy, "start", vol=vol)

    def _state_or_clear(self, server: Server | str, vol: str) -> str:
        try:
            return self.get_state(server, vol)
        except OperationError:
            return "Clear"

    def full_backup(self, storage: Server | str, vol: str, timeout: float = DEFAULT_WAIT,
                    bulk_size: int | None = None, archive: Server | str | None = None) -> int:
        """Back the volume up in full to ``archive``; returns the first restorable gid.

        ``archive`` must be the one the storage is configured to send to (default: the
        layout's primary). As walblib's _prepare_backup: the storage is brought to
        SyncReady, the archive initialised if it has no volume, and the proxies told to
        send to it.
        """
        if archive is None:
            archive = self.layout.primary_archive
        elif isinstance(archive, str):
            archive = self.layout.get(archive)
        state = self.get_state(storage, vol)
        if state == "Standby":
            self.run(storage, "stop", vol=vol)
        elif state == "Target":
            self.run(storage, "stop", vol=vol, mode="force")
            self.run(storage, "reset-vol", vol=vol)
        if self._state_or_clear(archive, vol) == "Clear":
            self.run(archive, "init-vol", vol=vol)
        self.start_synchronizing(archive, vol)
        self.run(storage, "full-bkp", vol=vol, **({"bulk_size": bulk_size} if bulk_size else {}))
        state = self.wait_for_state(storage, vol, {"Target", "SyncReady"}, timeout)
        if state != "Target":
            raise OperationError(f"{vol}: the full backup failed (storage back in SyncReady; see its log)")
        # Writes during the copy leave the base dirty: it becomes restorable once the
        # diff of those writes (shipped as soon as the storage is Target) is applied.
        deadline = time.monotonic() + timeout
        while not (restorable := self.get_restorable(archive, vol, include_implicit=True)):
            if time.monotonic() > deadline:
                raise OperationError(f"{vol}: the full backup finished but nothing is restorable after "
                                     f"{timeout:.0f} s (see the proxies' and archive's logs)")
            self.kick_proxies(vol)
            time.sleep(POLL)
        return restorable[0]

    def snapshot(self, storage: Server | str, vol: str, archives: list[Server | str] | None = None,
                 timeout: float = DEFAULT_WAIT) -> int:
        """Take a snapshot and wait until it is restorable on ``archives`` (default: the primary)."""
        gid = int(self.run(storage, "snapshot", vol=vol)["gid"])
        for archive in archives or [self.layout.primary_archive]:
            self.kick_proxies(vol)
            self.wait_for_restorable(archive, vol, gid, timeout)
        return gid

    def kick_proxies(self, vol: str | None = None) -> None:
        for proxy in self.layout.by_role("proxy"):
            self.run(proxy, "kick", **({"vol": vol} if vol else {}))

    def kick(self, server: Server | str, vol: str | None = None) -> None:
        self.run(server, "kick", **({"vol": vol} if vol else {}))

    def stop(self, server: Server | str, vol: str, mode: str = "graceful") -> None:
        self.run(server, "stop", vol=vol, mode=mode)

    def start(self, server: Server | str, vol: str) -> None:
        """Start a volume; a storage starts as target."""
        target = self.layout.get(server) if isinstance(server, str) else server
        if target.role == "storage":
            self.run(target, "start", vol=vol, role="target")
        else:
            self.run(target, "start", vol=vol)

    def clear(self, server: Server | str, vol: str) -> None:
        """Bring a volume to Clear on one server, stopping or resetting it first as needed."""
        target = self.layout.get(server) if isinstance(server, str) else server
        state = self._state_or_clear(target, vol)
        if state == "Clear":
            return
        if target.role == "storage":
            if state in ("Target", "Standby"):
                self.run(target, "stop", vol=vol, mode="force")
                state = self.get_state(target, vol)
            if state == "Stopped":
                self.run(target, "reset-vol", vol=vol)
        elif target.role == "proxy":
            if state == "Started":
                self.run(target, "stop", vol=vol, mode="force")
        elif state == "Archived":
            self.run(target, "stop", vol=vol)
        self.run(target, "clear-vol", vol=vol)
