"""A volume's state on one storage, proxy or archive agent (the ``walb_volume`` module).

Wanted states, whatever the role: ``initialized`` (the agent holds the volume),
``started`` (it works on it: a storage ships logs as target or standby, a proxy
forwards, an archive takes diffs), ``stopped`` and ``cleared``. The operation plans the
agent commands that lead from the current state (WalB's state machines, reference §3)
to the wanted one, runs them unless checking, and refuses where WalB needs another
operation first (a full backup) or where data would be dropped without ``force``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..agents.proxy_volume import ArchiveInfo
from ..controller import Controller, Server
from ..errors import OperationError, UsageError
from . import Outcome
from .cluster import volume_status

WANTED = ("initialized", "started", "stopped", "cleared")


@dataclass
class Plan:
    """Agent commands leading to the wanted state, and the state each leaves."""

    server: Server
    vol: str
    state: str
    steps: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    def add(self, command: str, args: dict[str, Any], result_state: str) -> None:
        self.steps.append((command, {"vol": self.vol, **args}, result_state))
        self.state = result_state

    def run(self, controller: Controller) -> None:
        for command, args, _ in self.steps:
            controller.run(self.server, command, **args)

    def describe(self) -> list[str]:
        return [" ".join([command, *(f"{k}={v}" for k, v in args.items() if k != "vol")])
                for command, args, _ in self.steps]


def _refuse(server: Server, vol: str, state: str, why: str) -> OperationError:
    return OperationError(f"{vol} on {server.role} {server.name} is {state}: {why}")


def _plan_storage(plan: Plan, wanted: str, start_as: str | None, wdev: str | None, force: bool,
                  stop_mode: str) -> None:
    server, vol, state = plan.server, plan.vol, plan.state
    if wanted == "cleared":
        if state in ("Target", "Stopped") and not force:
            raise _refuse(server, vol, state, "clearing ends its backup (a new full backup would be needed); "
                          "set force: true")
        if state in ("Target", "Standby"):
            plan.add("stop", {"mode": "force"}, "Stopped" if state == "Target" else "SyncReady")
        if plan.state == "Stopped":
            plan.add("reset-vol", {}, "SyncReady")
        if plan.state == "SyncReady":
            plan.add("clear-vol", {}, "Clear")
        return
    if state == "Clear":
        if wdev is None:
            raise _refuse(server, vol, state, "wdev (the walb device) is needed to initialise it")
        plan.add("init-vol", {"wdev": wdev}, "SyncReady")
    if wanted == "initialized":
        return
    if wanted == "stopped":
        if plan.state in ("Target", "Standby"):
            plan.add("stop", {"mode": stop_mode}, "Stopped" if plan.state == "Target" else "SyncReady")
        return
    # started: as it was (Stopped after a backup -> Target; SyncReady -> Standby) unless start_as says
    role = start_as or ("target" if plan.state in ("Stopped", "Target") else "standby")
    current = {"Target": "target", "Standby": "standby"}.get(plan.state)
    if current == role:
        return
    if role == "target":
        if plan.state != "Stopped":
            raise _refuse(server, vol, plan.state, "start_as=target needs a full backup first (walb_backup), "
                          "which leaves the volume in Target")
        plan.add("start", {"role": "target"}, "Target")
    else:
        if plan.state in ("Target", "Stopped"):
            if not force:
                raise _refuse(server, vol, plan.state, "it ships its logs; standby drops them (another storage "
                              "takes over with a hash backup: ansible/playbooks/switch.yml); set force: true")
            if plan.state == "Target":
                plan.add("stop", {"mode": "force"}, "Stopped")
            plan.add("reset-vol", {}, "SyncReady")
        plan.add("start", {"role": "standby"}, "Standby")


def _plan_proxy(plan: Plan, wanted: str, status: dict[str, Any], archives: list[ArchiveInfo] | None,
                force: bool, stop_mode: str) -> None:
    server, vol, state = plan.server, plan.vol, plan.state
    if wanted == "cleared":
        pending = sum(len(diffs) for diffs in status.get("pending", {}).values())
        if pending and not force:
            raise _refuse(server, vol, state, f"{pending} diffs are not yet sent; stop with stop_mode=empty "
                          "first, or set force: true to drop them")
        if state == "Started":
            plan.add("stop", {"mode": "force"}, "Stopped")
        if plan.state == "Stopped":
            plan.add("clear-vol", {}, "Clear")
        return
    have = {info["name"]: info for info in status.get("archives", [])}
    want = {target.name: target.as_dict() for target in archives or []}
    changes: list[tuple[str, dict[str, Any]]] = []
    if archives is not None:
        for name, info in want.items():
            if name not in have:
                changes.append(("add", info))
            elif any(have[name].get(key) != value for key, value in info.items()):
                changes.append(("update", info))
        changes.extend(("delete", {"name": name}) for name in have if name not in want)
    if state == "Clear" and not want:
        if wanted == "stopped":
            return
        raise _refuse(server, vol, state, "archives (where to send its diffs) are needed to initialise it")
    was_started = state == "Started"
    if changes and was_started:
        plan.add("stop", {"mode": "graceful"}, "Stopped")
    registered = set(have)
    for cmd, info in changes:
        args = {"cmd": cmd, "archive": info["name"], **{k: v for k, v in info.items() if k != "name"}}
        if cmd == "delete":
            registered.discard(info["name"])
        else:
            registered.add(info["name"])
        # The proxy forgets a volume whose last archive is deleted.
        plan.add("archive-info", args, "Stopped" if registered else "Clear")
    if wanted == "started" and plan.state == "Stopped":
        plan.add("start", {}, "Started")
    elif wanted == "stopped" and plan.state == "Started":
        plan.add("stop", {"mode": stop_mode}, "Stopped")
    elif wanted == "initialized" and was_started and plan.state == "Stopped":
        plan.add("start", {}, "Started")  # only stopped to change archive-info


def _plan_archive(plan: Plan, wanted: str, force: bool) -> None:
    server, vol, state = plan.server, plan.vol, plan.state
    if wanted == "cleared":
        if state in ("Archived", "Stopped") and not force:
            raise _refuse(server, vol, state, "clearing deletes its base image and every diff; set force: true")
        if state == "Archived":
            plan.add("stop", {}, "Stopped")
        if plan.state in ("Stopped", "SyncReady"):
            plan.add("clear-vol", {}, "Clear")
        return
    if state == "Clear":
        plan.add("init-vol", {}, "SyncReady")
    if wanted == "started":
        if plan.state == "Stopped":
            plan.add("start", {}, "Archived")
        elif plan.state == "SyncReady":
            raise _refuse(server, vol, plan.state, "it has no base image yet: run a full backup (walb_backup)")
    elif wanted == "stopped" and plan.state == "Archived":
        plan.add("stop", {}, "Stopped")


def ensure_volume(controller: Controller, server: Server, vol: str, wanted: str, *, start_as: str | None = None,
                  wdev: str | None = None, archives: list[ArchiveInfo] | None = None, force: bool = False,
                  stop_mode: str = "graceful", check: bool = False) -> Outcome:
    """Bring ``vol`` on ``server`` to ``wanted`` (one of WANTED)."""
    if wanted not in WANTED:
        raise UsageError(f"state must be one of {', '.join(WANTED)}, not {wanted!r}")
    if start_as is not None and server.role != "storage":
        raise UsageError(f"start_as applies to a storage, not to {server.role} {server.name}")
    if archives is not None and server.role != "proxy":
        raise UsageError(f"archives apply to a proxy, not to {server.role} {server.name}")
    status = volume_status(controller, server, vol)
    plan = Plan(server, vol, status["state"])
    planners: dict[str, Callable[[], None]] = {
        "storage": lambda: _plan_storage(plan, wanted, start_as, wdev, force, stop_mode),
        "proxy": lambda: _plan_proxy(plan, wanted, status, archives, force, stop_mode),
        "archive": lambda: _plan_archive(plan, wanted, force),
    }
    planners[server.role]()
    before: dict[str, Any] = {"state": status["state"]}
    after: dict[str, Any] = {"state": plan.state}
    if server.role == "proxy":
        before["archives"] = sorted(info["name"] for info in status.get("archives", []))
        after["archives"] = sorted(t.name for t in archives) if archives is not None else before["archives"]
        if plan.state == "Clear":
            after["archives"] = []
    if not check and plan.steps:
        plan.run(controller)
        after = {**after, "state": volume_status(controller, server, vol)["state"]}
    return Outcome(bool(plan.steps), before, after,
                   {"vol": vol, "server": server.name, "role": server.role, "state": after["state"],
                    "commands": plan.describe()})
