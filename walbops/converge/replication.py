"""Replication of a volume to another archive (the ``walb_replication`` module), and replacing a
host (the ``walb_replace`` module).

``once``: the destination can restore the source's newest snapshot (or ``gid``); otherwise one
replication brings it there, of the kind the destination decides (full, resync, hash or diff;
walb.md §6.7). A destination the proxies feed already (synchronizing) is waited for instead.
``synchronizing``: every proxy of the volume sends each diff to the destination too
(Controller.synchronize); present once they all do. ``stopped``: no proxy sends to the
destination; what it holds stays, and ``once`` can bring it up to date later.

The lag, reported before and after, is how far the destination's newest restorable snapshot
(implicit ones included) is behind the source's: in gids and in seconds of snapshot time.
"""

from __future__ import annotations

from typing import Any

from ..controller import Controller, Server
from ..errors import OperationError, UsageError
from . import Outcome
from .cluster import volume_status

REPLICATION_MODES = ("once", "synchronizing", "stopped")
HOLDS_BACKUP = {"Archived", "Stopped"}


def _restorable(controller: Controller, archive: Server, vol: str, state: str) -> dict[int, int]:
    """gid -> timestamp of every restorable snapshot (implicit ones too); empty without a backup."""
    if state not in HOLDS_BACKUP:
        return {}
    return {int(entry["gid"]): int(entry["timestamp"]) for entry in controller.get(archive, "restorable", vol, "all")}


def replication_status(controller: Controller, source: Server, vol: str, destination: Server) -> dict[str, Any]:
    """The destination against the source: states, newest restorable gids, lag, synchronizing."""
    source_state = volume_status(controller, source, vol)["state"]
    if source_state not in HOLDS_BACKUP:
        raise OperationError(f"{vol}: source archive {source.name} holds no backup of it ({source_state})")
    destination_state = volume_status(controller, destination, vol)["state"]
    here = _restorable(controller, source, vol, source_state)
    there = _restorable(controller, destination, vol, destination_state)
    status: dict[str, Any] = {
        "state": destination_state, "gid": max(there, default=None), "source_gid": max(here, default=None),
        "synchronizing": destination_state != "Clear" and controller.is_synchronizing(destination, vol),
        "lag_gids": None, "lag_seconds": None, "restorable": sorted(there)}
    if here and there:
        status["lag_gids"] = max(0, status["source_gid"] - status["gid"])
        status["lag_seconds"] = max(0, here[status["source_gid"]] - there[status["gid"]])
    return status


def ensure_replicated(controller: Controller, source: Server, vol: str, destination: Server, *, mode: str = "once",
                      gid: int | None = None, do_resync: bool = False, timeout: float = 3600.0,
                      check: bool = False) -> Outcome:
    """Make ``destination`` hold ``vol`` as ``mode`` says (see the module's text).

    Args:
        gid: with ``once`` (and ``synchronizing``), the snapshot the destination must be able to
            restore; default the source's newest.
        do_resync: a destination of another lineage (after a new full backup on the source) is
            resynced rather than refused.

    Raises:
        UsageError: a bad mode, or the source as its own destination.
        OperationError: the source holds no backup; a replication failed (the destination is
            rolled back; run again).
    """
    if mode not in REPLICATION_MODES:
        raise UsageError(f"mode must be one of {', '.join(REPLICATION_MODES)}, not {mode!r}")
    if source.name == destination.name:
        raise UsageError(f"{vol}: {source.name} cannot replicate to itself")
    before = replication_status(controller, source, vol, destination)
    target = gid if gid is not None else before["source_gid"]
    if target is None:
        raise OperationError(f"{vol}: source archive {source.name} has no restorable snapshot yet")
    has_target = target in before.pop("restorable")
    values: dict[str, Any] = {"vol": vol, "source": source.name, "destination": destination.name, "mode": mode,
                              "kind": None}
    if mode == "stopped":
        changed = before["synchronizing"]
        if changed and not check:
            controller.stop_synchronizing(destination, vol)
    elif mode == "synchronizing":
        changed = not before["synchronizing"]
        if changed and not check:
            controller.synchronize(source, vol, destination, timeout=timeout)
            values["kind"] = "synchronize"
        if not check and gid is not None:
            controller.wait_for_replicated(source, vol, destination, gid, timeout)
    elif before["synchronizing"]:
        changed = False  # the proxies feed it: the snapshot arrives by itself
        if not check and not has_target:
            controller.wait_for_replicated(source, vol, destination, target, timeout)
    else:
        changed = not has_target
        if changed and not check:
            controller.replicate_once(source, vol, destination, gid=target, do_resync=do_resync, timeout=timeout)
            values["kind"] = controller.get(source, "action-result", vol, "ReplSyncAsClient")["kind"]
    if not check:
        after = replication_status(controller, source, vol, destination)
        del after["restorable"]
    elif changed:  # the prediction
        after = {**before, "synchronizing": mode == "synchronizing",
                 **({"gid": target, "lag_gids": 0} if mode == "once" else {})}
    else:
        after = before
    return Outcome(changed, before, after, {**values, **{key: after[key] for key in (
        "gid", "source_gid", "synchronizing", "lag_gids", "lag_seconds")}})


REPLACED_KINDS = ("storage", "proxy", "archive")
TAKEN_OVER = {"storage": {"Target"}, "proxy": {"Started"}, "archive": {"Archived", "Stopped"}}


def ensure_replaced(controller: Controller, kind: str, vol: str, old: Server, new: Server, *,
                    wdev: str | None = None, source: Server | None = None, timeout: float = 3600.0,
                    check: bool = False) -> Outcome:
    """``new`` has taken the volume over from ``old`` (WalB's r1-r4, docs/replication.md): present
    when ``old`` no longer holds it and ``new`` is Target (storage), Started (proxy) or holds its
    copy (archive); otherwise the controller's workflow for ``kind`` runs.

    Raises:
        UsageError: a bad kind, servers of another role, a storage without ``wdev``.
        OperationError: ``old`` holds nothing to take over and ``new`` has not taken it.
    """
    if kind not in REPLACED_KINDS:
        raise UsageError(f"kind must be one of {', '.join(REPLACED_KINDS)}, not {kind!r}")
    for server in (old, new):
        if server.role != kind:
            raise UsageError(f"server {server.name!r} is a {server.role}, not a {kind}")
    if source is not None and (kind != "archive" or source.role != "archive"):
        raise UsageError(f"source {source.name!r}: the primary archive, when a secondary archive is replaced")
    before = {"old": volume_status(controller, old, vol)["state"], "new": volume_status(controller, new, vol)["state"]}
    after = {"old": "Clear", "new": {"storage": "Target", "proxy": "Started", "archive": "Archived"}[kind]}
    values: dict[str, Any] = {"vol": vol, "kind": kind, "old": old.name, "new": new.name, "gid": None}
    if before["old"] == "Clear" and before["new"] in TAKEN_OVER[kind]:
        return Outcome(False, before, before, values)
    if before["old"] == "Clear" and kind != "storage":
        raise OperationError(f"{vol}: {old.name} holds nothing to take over, and {new.name} is {before['new']}")
    if kind == "storage" and wdev is None and before["new"] == "Clear":
        raise UsageError(f"{vol}: the walb device of {new.name} that holds the volume's data is needed (wdev)")
    if check:
        return Outcome(True, before, after, values)
    if kind == "storage":
        values["gid"] = controller.replace_storage(vol, old, new, wdev or "", timeout)
    elif kind == "proxy":
        controller.replace_proxy(vol, old, new, timeout)
    else:
        values["gid"] = controller.replace_archive(vol, old, new, source, timeout)
    after = {"old": volume_status(controller, old, vol)["state"], "new": volume_status(controller, new, vol)["state"]}
    return Outcome(True, before, after, values)
