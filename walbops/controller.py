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
