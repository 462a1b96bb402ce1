"""The controller: talk to agents, one request per call, with walblib's names where they exist.

A layout file (YAML) names the servers::

    servers:
      - {name: s0, address: 127.0.0.1, port: 10000, role: storage}
      - {name: p0, address: 127.0.0.1, port: 10100, role: proxy}
      - {name: a0, address: 127.0.0.1, port: 10200, role: archive}
    key_file: /etc/walbops/cluster.key      # key mode, or TLS mode:
    # tls: {cert: /etc/walbops/tls/ctl.crt, key: /etc/walbops/tls/ctl.key, ca: /etc/walbops/tls/ca.crt}

The first archive is the primary one. Blocking waits poll ``get`` every 0.3 s, as walblib does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from dataclasses import dataclass
from typing import Any

import yaml

from .agents.state import ARCHIVE_ACTIVE
from .errors import OperationError, RemoteError, UsageError, WalbopsError
from .gid import MetaDiff, MetaSnap, MetaState
from .net.auth import Keys, load_keys
from .net.ssh import SshRoute, open_tunnel
from .net.tls import Credentials, Secret, TlsFiles
from .net.transport import Channel, open_connection

POLL = 0.3  # [s] between polls of a blocking wait (walblib's interval)
DEFAULT_WAIT = 600.0  # [s]


@dataclass(frozen=True)
class Server:
    """One agent of a layout (walblib's ServerConnectionParam); ``address`` is as seen from its
    ``ssh`` host when it is reached through SSH."""

    name: str
    address: str
    port: int
    role: str
    ssh: SshRoute | None = None


@dataclass(frozen=True)
class Layout:
    """The servers of one backup group, and how to authenticate to them: the cluster key, or a
    controller certificate (TLS mode)."""

    servers: tuple[Server, ...]
    key_file: str | None = None
    tls: TlsFiles | None = None

    def credentials(self) -> Secret:
        """The loaded key or the checked TLS files.

        Raises:
            UsageError: neither is given; OperationError, OSError: the key file is unusable.
        """
        if self.tls is not None:
            return Credentials(tls=self.tls.check())
        if self.key_file is None:
            raise UsageError("the layout gives neither key_file nor tls")
        keys = load_keys(self.key_file)
        if isinstance(keys, Keys) and not keys.holds_role("controller"):
            raise UsageError(f"{self.key_file}: the key file holds no controller key ({keys.describe_roles()}); "
                             "make one with walbops keygen --from CLUSTER_KEY --role controller")
        return keys

    @classmethod
    def load(cls, path: str) -> "Layout":
        try:
            with open(path) as stream:
                data = yaml.safe_load(stream)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror}") from None
        if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
            raise UsageError(f"{path}: expected a mapping with a 'servers' list")
        ssh_options = data.get("ssh") or {}
        if not isinstance(ssh_options, dict) or not set(ssh_options) <= {"known_hosts", "key_file"}:
            raise UsageError(f"{path}: ssh takes known_hosts and key_file")
        servers = []
        for index, entry in enumerate(data["servers"]):
            try:
                route = None
                if entry.get("ssh"):
                    route = SshRoute.parse(str(entry["ssh"]), ssh_options.get("known_hosts"),
                                           ssh_options.get("key_file"))
                servers.append(Server(str(entry["name"]), str(entry["address"]), int(entry["port"]),
                                      str(entry["role"]), route))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise UsageError(f"{path}: servers[{index}] needs name, address, port and role") from None
            except UsageError as exc:
                raise UsageError(f"{path}: servers[{index}]: {exc}") from None
            if servers[-1].role not in ("storage", "proxy", "archive"):
                raise UsageError(f"{path}: servers[{index}].role must be storage, proxy or archive")
        tls = data.get("tls")
        if tls is not None:
            if not isinstance(tls, dict) or not {"cert", "key", "ca"} <= set(tls):
                raise UsageError(f"{path}: tls needs cert, key and ca")
            return cls(tuple(servers), None, TlsFiles(str(tls["cert"]), str(tls["key"]), str(tls["ca"])))
        if "key_file" not in data:
            raise UsageError(f"{path}: key 'key_file' (or tls) is required")
        return cls(tuple(servers), str(data["key_file"]))

    def resolve(self, server: Server | str) -> Server:
        """``server`` itself, or the server of that name."""
        return self.get(server) if isinstance(server, str) else server

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


async def connect(server: Server, key: Secret, timeout: float = 30.0, client_id: str | None = None,
                  role: str = "controller") -> Channel:
    """An authenticated connection to ``server``, directly or through its SSH host."""
    sock = None
    if server.ssh is not None:
        sock = await asyncio.to_thread(open_tunnel, server.ssh, server.address, server.port)
    return await open_connection(server.address, server.port, key, client_id or f"ctl-{socket.gethostname()}",
                                 role, timeout=timeout, sock=sock)


async def call(server: Server, key: Secret, command: str, args: dict[str, Any] | None = None,
               timeout: float = 30.0, client_id: str | None = None, role: str = "controller") -> Any:
    """Send one request to ``server`` and return its result (a fresh connection, as walbc does)."""
    channel = await connect(server, key, timeout, client_id, role)
    async with channel:
        return await channel.request(command, args or {})


HASH_BACKUP_ATTEMPTS = 3  # a hash backup that fails is started again this many times in all


def replicated_up_to(gid: int, restorable: list[int]) -> bool:
    """Whether an archive whose restorable gids are ``restorable`` holds a volume up to ``gid``: its
    newest is ``gid`` or later (walblib's ``gid <= gidL[-1]``)."""
    return bool(restorable) and max(restorable) >= gid


class Controller:
    """Blocking calls to the agents of a layout (walblib's Controller)."""

    def __init__(self, layout: Layout, timeout: float = 30.0) -> None:
        self.layout = layout
        self.key = layout.credentials()
        self.timeout = timeout

    def run(self, server: Server | str, command: str, **args: Any) -> Any:
        target = self.layout.resolve(server)
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
        """Restore snapshot gid and wait for it; returns a loop device of the restored image.

        An apply or merge running on the volume makes the archive refuse a restore (``busy``):
        the restore is tried again until it starts or ``timeout`` passes.

        Raises:
            OperationError: the restore failed on the archive (its reason), or timed out.
        """
        deadline = time.monotonic() + timeout
        accepted = self._run_when_idle(archive, "restore", deadline, vol=vol, gid=gid)
        self.wait_for_action(archive, vol, "Restore", accepted, deadline)
        return self.get_restored_path(archive, vol, gid)

    def _run_when_idle(self, server: Server | str, command: str, deadline: float, **args: Any) -> Any:
        """Run a command the archive refuses while a conflicting action runs (reason ``busy``):
        retry until it is taken or the deadline passes."""
        while True:
            try:
                return self.run(server, command, **args)
            except RemoteError as exc:
                if exc.reason != "busy" or time.monotonic() > deadline:
                    raise
            time.sleep(POLL)

    def wait_for_action(self, archive: Server | str, vol: str, action: str, accepted: Any,
                        deadline: float = math.inf) -> Any:
        """Wait until the background ``action`` that ``accepted`` started on ``vol`` has ended (by
        ``deadline``, monotonic time; none by default); its outcome.

        Raises:
            OperationError: the action failed (with the archive's reason) or is still running at the deadline.
        """
        started = accepted.get("started") if isinstance(accepted, dict) else None
        pause = POLL / 16  # short actions are seen ending soon; long ones are polled at walblib's pace
        while True:
            outcome = self.get(archive, "action-result", vol, action)
            if outcome is not None and (started is None or outcome["started"] >= started) \
                    and self.get_num_action(archive, vol, action) == 0:
                if not outcome["ok"]:
                    raise OperationError(f"{vol}: {action.lower()} failed on the archive: {outcome['error']}")
                return outcome
            if time.monotonic() > deadline:
                raise OperationError(f"{vol}: {action.lower()} still running at the deadline")
            time.sleep(pause)
            pause = min(POLL, pause * 2)

    def get_num_action(self, server: Server | str, vol: str, action: str) -> int:
        return int(self.get(server, "num-action", vol, action))

    def get_all_actions(self, archive: Server | str) -> dict[str, dict[str, Any]]:
        """``{vol: {action: {"running": n, "last": "YYYY-MM-DDThh:mm:ss" | "---"}}}``."""
        return {entry.pop("name"): entry for entry in self.get(archive, "all-actions")}

    def get_vol_dict_without_running_actions(self, archive: Server | str) -> dict[str, dict[str, Any]]:
        return {vol: actions for vol, actions in self.get_all_actions(archive).items()
                if not any(action["running"] for action in actions.values())}

    # Archive maintenance (walblib's names) -----------------------------------------

    def get_base(self, archive: Server | str, vol: str) -> MetaState:
        return MetaState.parse(str(self.get(archive, "base", vol)))

    def get_diff_list(self, archive: Server | str, vol: str, gid0: int = 0, gid1: int | None = None) -> list[MetaDiff]:
        """Diffs whose start gid is in [gid0, gid1), with their flags, timestamps and sizes."""
        entries = self.get(archive, "diff", vol, [gid0] + ([gid1] if gid1 is not None else []))
        return [MetaDiff.parse(entry["text"]) for entry in entries]

    def get_applicable_diff_list(self, archive: Server | str, vol: str, gid: int | None = None) -> list[MetaDiff]:
        return [MetaDiff.parse(text) for text in self.get(archive, "applicable-diff", vol, gid)]

    def get_num_diff(self, archive: Server | str, vol: str, gid0: int = 0, gid1: int | None = None) -> int:
        return int(self.get(archive, "num-diff", vol, [gid0] + ([gid1] if gid1 is not None else [])))

    def get_total_diff_size(self, archive: Server | str, vol: str, gid0: int = 0, gid1: int | None = None) -> int:
        return int(self.get(archive, "total-diff-size", vol, [gid0] + ([gid1] if gid1 is not None else [])))

    def exists_diff(self, archive: Server | str, vol: str, gid_b: int, gid_e: int) -> bool:
        """Whether the clean diff |gid_b|-->|gid_e| is stored."""
        return bool(self.get(archive, "exists-diff", vol, [gid_b, gid_b, gid_e, gid_e]))

    def get_meta_snap(self, archive: Server | str, vol: str, gid: int | None = None) -> MetaSnap:
        return MetaSnap.parse(str(self.get(archive, "meta-snap", vol, gid)))

    def get_meta_state(self, archive: Server | str, vol: str, is_applying: bool, gid: int | None = None) -> MetaState:
        return MetaState.parse(str(self.get(archive, "meta-state", vol,
                                            [int(is_applying)] + ([gid] if gid is not None else []))))

    def apply(self, archive: Server | str, vol: str, gid: int, timeout: float = DEFAULT_WAIT) -> MetaState:
        """Apply every diff up to restorable snapshot ``gid`` into the base and wait; the new base state.

        Snapshots before ``gid`` are no longer restorable afterwards.
        """
        deadline = time.monotonic() + timeout
        accepted = self._run_when_idle(archive, "apply", deadline, vol=vol, gid=gid)
        if isinstance(accepted, dict) and accepted.get("accepted"):
            self.wait_for_action(archive, vol, "Apply", accepted, deadline)
        return self.get_base(archive, vol)

    def merge(self, archive: Server | str, vol: str, gid_b: int, gid_e: int | None = None,
              max_size: int | None = None, timeout: float = DEFAULT_WAIT) -> str:
        """Merge the mergeable diffs from snapshot ``gid_b`` (up to ``gid_e``, at most ``max_size``
        bytes) into one and wait; the merged diff's range, e.g. ``|3|-->|9|``."""
        deadline = time.monotonic() + timeout
        args: dict[str, Any] = {"vol": vol, "gid_b": gid_b}
        if gid_e is not None:
            args["gid_e"] = gid_e
        if max_size is not None:
            args["max_size"] = max_size
        accepted = self._run_when_idle(archive, "merge", deadline, **args)
        self.wait_for_action(archive, vol, "Merge", accepted, deadline)
        return str(accepted["merged"])

    def replicate_once(self, source: Server | str, vol: str, destination: Server | str, gid: int | None = None,
                       do_resync: bool = False, timeout: float = DEFAULT_WAIT) -> int:
        """Replicate ``vol`` from archive ``source`` to archive ``destination`` (both in the layout)
        until the destination can restore ``gid`` (default: the source's latest restorable
        snapshot) and wait; the gid replicated (walblib's replicate_once: the destination is
        initialized when Clear and grown when smaller first)."""
        deadline = time.monotonic() + timeout
        target = self._prepare_replica(source, vol, destination)
        if gid is None:
            gid = max(self.get_restorable(source, vol, include_implicit=True))
        self._replicate(source, vol, target, deadline, gid=gid, do_resync=do_resync)
        self.wait_for_replicated(source, vol, target, gid, max(1.0, deadline - time.monotonic()))
        return gid

    def replicate(self, source: Server | str, vol: str, destination: Server | str, synchronizing: bool,
                  timeout: float = DEFAULT_WAIT, do_resync: bool = False) -> None:
        """walblib's replicate: :meth:`synchronize` when ``synchronizing``, else :meth:`replicate_once`
        up to the source's newest snapshot."""
        if synchronizing:
            self.synchronize(source, vol, destination, timeout)
        else:
            self.replicate_once(source, vol, destination, do_resync=do_resync, timeout=timeout)

    def copy_archive_info(self, source_proxy: Server | str, vol: str, destination_proxy: Server | str) -> list[str]:
        """Give ``destination_proxy`` the archives ``source_proxy`` sends ``vol`` to (walblib's
        copy_archive_info, the first step of replacing a proxy); the names copied."""
        source = self.layout.resolve(source_proxy)
        target = self.layout.resolve(destination_proxy)
        known = set(self.run(target, "archive-info", cmd="list", vol=vol)) \
            if self._state_or_clear(target, vol) != "Clear" else set()
        copied = []
        for info in self.get(source, "archive-info", vol):
            if info["name"] not in known:
                self.run(target, "archive-info", cmd="add", vol=vol, archive=info["name"], host=info["host"],
                         port=info["port"], compression=info["compression"], delay=info["delay"])
                copied.append(info["name"])
        return copied

    def _prepare_replica(self, source: Server | str, vol: str, destination: Server | str) -> Server:
        """init-vol on a Clear destination; grow it to the source's size."""
        target = self.layout.resolve(destination)
        state = self._state_or_clear(target, vol)
        if state == "Clear":
            self.run(target, "init-vol", vol=vol)
        elif state != "SyncReady":  # a full replication sizes a SyncReady volume itself
            size_lb = int(self.get(source, "vol-size", vol))
            if int(self.get(target, "vol-size", vol)) < size_lb:
                self.run(target, "resize", vol=vol, size=size_lb * 512)
        return target

    def _replicate(self, source: Server | str, vol: str, target: Server, deadline: float, **args: Any) -> Any:
        accepted = self._run_when_idle(source, "replicate", deadline, vol=vol, host=target.address,
                                       port=target.port, **args)
        return self.wait_for_action(source, vol, "ReplSyncAsClient", accepted, deadline)

    def synchronize(self, source: Server | str, vol: str, destination: Server | str,
                    timeout: float = DEFAULT_WAIT, compression: str = "lz4:0:1", do_resync: bool = False) -> None:
        """Keep ``destination`` up to date continuously (walblib's synchronize): the proxies send
        what they hold and stop, learn ``destination`` as an archive of the volume, ``source``
        replicates everything it has (resyncing a destination of another lineage with
        ``do_resync``), and the proxies start again: from then on each diff goes to both archives."""
        deadline = time.monotonic() + timeout
        target = self._prepare_replica(source, vol, destination)
        proxies = self.layout.by_role("proxy")
        for proxy in proxies:
            self._stop_proxy(proxy, vol, "empty", deadline)
        for proxy in proxies:
            if self._state_or_clear(proxy, vol) != "Clear":  # a proxy that never carried the volume stays out
                self._add_archive_to_proxy(proxy, vol, target, compression)
        self._replicate(source, vol, target, deadline, size=0, do_resync=do_resync)  # everything the source has
        for proxy in proxies:
            if self._state_or_clear(proxy, vol) == "Stopped":
                self.run(proxy, "start", vol=vol)
        self._kick_storages(vol)

    def _kick_storages(self, vol: str) -> None:
        """Kick every storage shipping ``vol`` (Target): best effort, as a kick only hurries it; a
        storage that is down or not set up yet ships when it is back."""
        for storage in self.layout.by_role("storage"):
            with contextlib.suppress(OSError, WalbopsError):
                if self._state_or_clear(storage, vol) == "Target":
                    self.kick(storage, vol)

    def _stop_proxy(self, proxy: Server, vol: str, mode: str, deadline: float) -> None:
        """Stop the volume on ``proxy`` (``empty``: after it sent everything), waiting out a wlog
        being received (WlogRecv) or another stop; nothing when it is Stopped or Clear."""
        while (state := self._state_or_clear(proxy, vol)) not in ("Stopped", "Clear"):
            if state == "Started":
                try:
                    self.run(proxy, "stop", vol=vol, mode=mode)
                    continue
                except RemoteError as exc:
                    if exc.reason not in ("bad-state", None):
                        raise
            if time.monotonic() > deadline:
                raise OperationError(f"{vol}: {proxy.name} is still {state}; it did not stop in time")
            time.sleep(POLL / 4)

    def is_synchronizing(self, archive: Server | str, vol: str) -> bool:
        """Whether every proxy of the volume sends it to ``archive`` (walblib's is_synchronizing).

        Raises:
            OperationError: some proxies do and others do not.
        """
        target = self.layout.resolve(archive)
        lists = {proxy.name: target.name in self.run(proxy, "archive-info", cmd="list", vol=vol)
                 for proxy in self.layout.by_role("proxy") if self._state_or_clear(proxy, vol) != "Clear"}
        if len(set(lists.values())) > 1:
            raise OperationError(f"{vol}: the proxies disagree about {target.name}: "
                                 + ", ".join(f"{name} {'sends' if on else 'does not send'}" for name, on in
                                             sorted(lists.items())))
        return bool(lists) and all(lists.values())

    def stop_synchronizing(self, archive: Server | str, vol: str) -> None:
        """The proxies stop sending the volume to ``archive`` (walblib's stop_synchronizing)."""
        target = self.layout.resolve(archive)
        for proxy in self.layout.by_role("proxy"):
            state = self._state_or_clear(proxy, vol)
            if state == "Clear" or target.name not in self.run(proxy, "archive-info", cmd="list", vol=vol):
                continue
            self._stop_proxy(proxy, vol, "graceful", time.monotonic() + DEFAULT_WAIT)
            self.run(proxy, "archive-info", cmd="delete", vol=vol, archive=target.name)
            if self._state_or_clear(proxy, vol) == "Stopped":
                self.run(proxy, "start", vol=vol)

    def wait_for_replicated(self, source: Server | str, vol: str, destination: Server | str, gid: int,
                            timeout: float = DEFAULT_WAIT) -> None:
        """Wait until ``destination`` holds the volume up to ``gid`` or later (walblib's
        wait_for_replicated): its newest restorable snapshot, implicit ones included, is at least
        ``gid``. Not ``gid`` itself: a synchronizing destination may have gone past it by a diff
        the proxy merged over it, and then never lists it."""
        deadline = time.monotonic() + timeout
        while not replicated_up_to(gid, self.get_restorable(destination, vol, include_implicit=True)):
            if time.monotonic() > deadline:
                raise OperationError(f"{vol}: {self.layout.resolve(destination).name} has not reached snapshot {gid} "
                                     f"after {timeout:.0f} s")
            time.sleep(POLL)

    def gc_diff(self, archive: Server | str, vol: str) -> list[str]:
        return list(self.run(archive, "gc-diff", vol=vol)["removed"])

    def disable_snapshot(self, archive: Server | str, vol: str, gids: list[int]) -> None:
        """Make explicit snapshots implicit: a merge may then remove them."""
        self._run_when_idle(archive, "disable-snapshot", time.monotonic() + DEFAULT_WAIT, vol=vol, gids=list(gids))

    def enable_snapshot(self, archive: Server | str, vol: str, gids: list[int]) -> None:
        """Make implicit snapshots explicit."""
        self._run_when_idle(archive, "enable-snapshot", time.monotonic() + DEFAULT_WAIT, vol=vol, gids=list(gids))

    def get_block_hash(self, archive: Server | str, vol: str, gid: int, bulk_size: int | None = None,
                       scan_size: int | None = None, timeout: float = DEFAULT_WAIT) -> str:
        """bhash of the image at ``gid``, read from base + diffs (walbops.diff.bhash)."""
        args: dict[str, Any] = {"vol": vol, "gid": gid}
        if bulk_size is not None:
            args["bulk"] = bulk_size
        if scan_size is not None:
            args["size"] = scan_size
        return str(self._run_when_idle(archive, "bhash", time.monotonic() + timeout, **args)["hash"])

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

    def go_standby(self, storage: Server | str, vol: str) -> None:
        """walblib's go_standby: the storage stops shipping and discards its logs until a backup.

        From Target: stopped (force), its logs reset, then Standby; from SyncReady: Standby.
        """
        state = self.get_state(storage, vol)
        if state == "Target":
            self.run(storage, "stop", vol=vol, mode="force")
            state = self.get_state(storage, vol)
        if state == "Stopped":
            self.run(storage, "reset-vol", vol=vol)
            state = self.get_state(storage, vol)
        if state == "SyncReady":
            self.run(storage, "start", vol=vol, role="standby")
        elif state != "Standby":
            raise OperationError(f"{vol}: storage is {state}; go_standby needs Target, Stopped or SyncReady")

    def recover(self, storage: Server | str, vol: str, timeout: float = DEFAULT_WAIT,
                archive: Server | str | None = None) -> int | None:
        """Bring a volume whose backup stopped back: a log that overflowed, or a storage left Stopped or
        SyncReady. A hash backup when ``archive`` holds the volume (its history stays), a full backup
        only when it holds none; returns the new restorable gid, or None when nothing was wrong
        (Target and not overflowed, or Standby on purpose)."""
        target = self._archive(archive)
        state = self.get_state(storage, vol)
        overflowed = state in ("Target", "Stopped") and bool(int(self.get(storage, "is-overflow", vol)))
        if state in ("Target", "Standby") and not overflowed:
            return None
        if self._state_or_clear(target, vol) in ("Archived", "Stopped"):
            if self.get_state(target, vol) == "Stopped":
                self.run(target, "start", vol=vol)
            return self.hash_backup(storage, vol, timeout, archive=target)
        return self.full_backup(storage, vol, timeout, archive=target)

    def switch_target(self, vol: str, storage: Server | str, timeout: float = DEFAULT_WAIT,
                      archive: Server | str | None = None) -> int:
        """Make ``storage`` the volume's target (WalB's n12): every other storage that ships the volume
        goes standby, then ``storage`` catches the archive up with a hash backup; returns the new
        restorable gid. The archive's history stays whole."""
        target = self.layout.resolve(storage)
        for other in self.layout.by_role("storage"):
            if other.name != target.name and self._state_or_clear(other, vol) in ("Target", "Stopped"):
                self.go_standby(other, vol)
        return self.hash_backup(target, vol, timeout, archive=archive)

    # Replacing a host (WalB's r1-r4, docs/replication.md): each keeps the volume's history.

    def replace_storage(self, vol: str, old: Server | str, new: Server | str, wdev: str,
                        timeout: float = DEFAULT_WAIT) -> int:
        """r1: ``new``, whose walb device ``wdev`` holds the volume's data, becomes its target by a
        hash backup (``old`` goes standby first), and ``old`` is cleared; the new restorable gid."""
        if self._state_or_clear(new, vol) == "Clear":
            self.init_storage(new, vol, wdev)
        gid = self.switch_target(vol, new, timeout)
        self.clear(old, vol)
        return gid

    def replace_proxy(self, vol: str, old: Server | str, new: Server | str, timeout: float = DEFAULT_WAIT) -> None:
        """r2: ``new`` sends the volume to the archives ``old`` sends it to (copy_archive_info), and
        ``old`` is emptied (everything it holds sent) and cleared. The storages must list ``new``
        among their proxies: they ship to it once ``old`` is gone."""
        deadline = time.monotonic() + timeout
        self.copy_archive_info(old, vol, new)
        if self._state_or_clear(new, vol) == "Stopped":
            self.run(new, "start", vol=vol)
        self._stop_proxy(self.layout.resolve(old), vol, "empty", deadline)
        self.clear(old, vol)
        self._kick_storages(vol)

    def replace_archive(self, vol: str, old: Server | str, new: Server | str, source: Server | str | None = None,
                        timeout: float = DEFAULT_WAIT) -> int:
        """r3 and r4: ``new`` takes over the volume's copy on ``old``, which is then cleared; the
        newest gid ``new`` can restore.

        r3, the primary (``source`` None: ``old`` is the source): ``new`` is synchronized from
        ``old``, then the proxies stop sending to ``old``; the storages must then send their
        backups to ``new`` (their ``archive`` setting). r4, a secondary (``source``: the
        primary): ``new`` is filled from the primary, synchronizing when ``old`` was.
        """
        deadline = time.monotonic() + timeout
        source = old if source is None else source
        if self.is_synchronizing(old, vol):
            self.synchronize(source, vol, new, timeout=timeout)
            self.stop_synchronizing(old, vol)
        else:
            self.replicate_once(source, vol, new, timeout=timeout)
        gid = max(self.get_restorable(new, vol, include_implicit=True))
        self.clear(old, vol)
        self.wait_for_restorable(new, vol, gid, max(1.0, deadline - time.monotonic()))
        return gid

    def start_synchronizing(self, archive: Server | str, vol: str, compression: str = "lz4:0:1") -> None:
        """Make every proxy send the volume's diffs to ``archive``."""
        target = self.layout.resolve(archive)
        for proxy in self.layout.by_role("proxy"):
            self._stop_proxy(proxy, vol, "graceful", time.monotonic() + DEFAULT_WAIT)
            self._add_archive_to_proxy(proxy, vol, target, compression)
            self.run(proxy, "start", vol=vol)

    def _add_archive_to_proxy(self, proxy: Server, vol: str, archive: Server, compression: str) -> None:
        """``proxy`` (stopped, or not carrying the volume yet) sends the volume to ``archive`` too."""
        known = self.run(proxy, "archive-info", cmd="list", vol=vol) if self._state_or_clear(proxy, vol) != "Clear" \
            else []
        if archive.name not in known:
            self.run(proxy, "archive-info", cmd="add", vol=vol, archive=archive.name, host=archive.address,
                     port=archive.port, compression=compression)

    def _state_or_clear(self, server: Server | str, vol: str) -> str:
        try:
            return self.get_state(server, vol)
        except OperationError:
            return "Clear"

    def _archive(self, archive: Server | str | None) -> Server:
        if archive is None:
            return self.layout.primary_archive
        return self.layout.resolve(archive)

    def _prepare_backup(self, storage: Server | str, vol: str, archive: Server) -> None:
        """walblib's _prepare_backup: the storage brought to SyncReady (its logs reset), the proxies
        told to send to ``archive``."""
        state = self.get_state(storage, vol)
        if state == "Standby":
            self.run(storage, "stop", vol=vol)
        elif state in ("Target", "Stopped"):
            if state == "Target":
                self.run(storage, "stop", vol=vol, mode="force")
            self.run(storage, "reset-vol", vol=vol)
        self.start_synchronizing(archive, vol)

    def _run_backup(self, storage: Server | str, vol: str, command: str, bulk_size: int | None,
                    timeout: float) -> None:
        self.run(storage, command, vol=vol, **({"bulk_size": bulk_size} if bulk_size else {}))
        state = self.wait_for_state(storage, vol, {"Target", "SyncReady"}, timeout)
        if state != "Target":
            raise OperationError(f"{vol}: the {command.split('-')[0]} backup failed (storage back in SyncReady; "
                                 "see its log)")

    def _wait_for_restorable_after(self, archive: Server, vol: str, gid: int, timeout: float, what: str) -> int:
        """The first restorable gid after ``gid``, once there is one (proxies kicked meanwhile)."""
        deadline = time.monotonic() + timeout
        while not (later := [g for g in self.get_restorable(archive, vol, include_implicit=True) if g > gid]):
            if time.monotonic() > deadline:
                raise OperationError(f"{vol}: the {what} finished but nothing new is restorable after "
                                     f"{timeout:.0f} s (see the proxies' and archive's logs)")
            self.kick_proxies(vol)
            time.sleep(POLL)
        return later[0]

    def full_backup(self, storage: Server | str, vol: str, timeout: float = DEFAULT_WAIT,
                    bulk_size: int | None = None, archive: Server | str | None = None) -> int:
        """Back the volume up in full to ``archive``; returns the first restorable gid.

        ``archive`` must be the one the storage is configured to send to (default: the
        layout's primary). As walblib's _prepare_backup: the storage is brought to
        SyncReady, the archive initialised if it has no volume, and the proxies told to
        send to it.
        """
        target = self._archive(archive)
        if self._state_or_clear(target, vol) == "Clear":
            self.run(target, "init-vol", vol=vol)
        deadline = time.monotonic() + timeout
        self._prepare_backup(storage, vol, target)
        self._run_backup(storage, vol, "full-bkp", bulk_size, timeout)
        # Writes during the copy leave the base dirty: it becomes restorable once the
        # diff of those writes (shipped as soon as the storage is Target) is applied.
        gid = self._wait_for_restorable_after(target, vol, -1, timeout, "full backup")
        for other in self._synchronizing_archives(vol, target):
            # A new lineage began on ``target``: the others follow it by a resync (their own base
            # kept, only what differs sent), or a full replication when they hold nothing.
            self.synchronize(target, vol, other, timeout=max(1.0, deadline - time.monotonic()), do_resync=True)
        return gid

    def hash_backup(self, storage: Server | str, vol: str, timeout: float = DEFAULT_WAIT,
                    bulk_size: int | None = None, archive: Server | str | None = None) -> int:
        """Bring ``archive``'s copy of the volume up to the device by a hash backup; returns the new
        restorable gid (walblib's hash_backup).

        Only the bulks the archive's latest image lacks travel, and the result is one more diff:
        every snapshot restorable before stays restorable. It recovers a volume whose log
        overflowed, whose proxy lost diffs, or whose storage host changed.

        Raises:
            OperationError: the archive does not hold the volume (take a full backup), or the
                backup failed (the storage is back in SyncReady and a retry starts over).
        """
        target = self._archive(archive)
        deadline = time.monotonic() + timeout
        state = self._state_or_clear(target, vol)
        if state in ARCHIVE_ACTIVE:
            # Receiving a diff or a replication is a moment of Archived: wait it out.
            state = self.wait_for_state(target, vol, {"Archived"}, timeout)
        if state != "Archived":
            raise OperationError(f"{vol}: archive {target.name} is {state}; a hash backup needs the volume "
                                 "archived there (a full backup first)")
        for attempt in range(1, HASH_BACKUP_ATTEMPTS + 1):
            latest = MetaSnap.parse(str(self.get(target, "latest-snap", vol)))
            self._prepare_backup(storage, vol, target)
            try:
                self._run_backup(storage, vol, "hash-bkp", bulk_size, max(1.0, deadline - time.monotonic()))
                break
            except OperationError:
                # Nothing of a failed one stays (storage back in SyncReady, archive as it was): an apply
                # or merge the archive was running refuses it (busy), and a cut connection ends it.
                if attempt == HASH_BACKUP_ATTEMPTS or time.monotonic() > deadline:
                    raise
                time.sleep(POLL)
        gid = self._wait_for_restorable_after(target, vol, latest.gid_e, timeout, "hash backup")
        for other in self._synchronizing_archives(vol, target):
            # Its diff and the device's new uuid reached ``target`` only: the proxies would drop
            # what follows for the others (another uuid). Each catches up by replication.
            self.synchronize(target, vol, other, timeout=max(1.0, deadline - time.monotonic()))
        return gid

    def _synchronizing_archives(self, vol: str, primary: Server) -> list[str]:
        """The archives other than ``primary`` that the proxies send ``vol`` to."""
        names = {name for proxy in self.layout.by_role("proxy") if self._state_or_clear(proxy, vol) != "Clear"
                 for name in self.run(proxy, "archive-info", cmd="list", vol=vol)}
        return sorted(names - {primary.name})

    def resize_archive(self, archive: Server | str, vol: str, size: int, zeroclear: bool = False) -> int:
        """Grow the volume on an archive to ``size`` bytes (its base; never shrinks); the size [LB]."""
        return int(self.run(archive, "resize", vol=vol, size=size, zeroclear=zeroclear)["size_lb"])

    def resize_storage(self, storage: Server | str, vol: str, size: int = 0) -> int:
        """Grow the volume's walb device online to ``size`` bytes (0: its whole ddev); the size [LB]."""
        return int(self.run(storage, "resize", vol=vol, size=size)["size_lb"])

    def resize(self, vol: str, size: int, zeroclear: bool = False) -> None:
        """walblib's resize: every archive first, then every storage that holds the volume, so that no
        archive refuses the larger volume's diffs."""
        for archive in self.layout.by_role("archive"):
            if self._state_or_clear(archive, vol) != "Clear":
                self.resize_archive(archive, vol, size, zeroclear)
        for storage in self.layout.by_role("storage"):
            if self._state_or_clear(storage, vol) != "Clear":
                self.resize_storage(storage, vol, size)

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
        target = self.layout.resolve(server)
        if target.role == "storage":
            self.run(target, "start", vol=vol, role="target")
        else:
            self.run(target, "start", vol=vol)

    def clear(self, server: Server | str, vol: str) -> None:
        """Bring a volume to Clear on one server, stopping or resetting it first as needed."""
        target = self.layout.resolve(server)
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
