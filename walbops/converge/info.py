"""Facts about the agents of a layout (the ``walb_info`` module, ``walbops info``).

For each agent: whether it answers, and per volume its state; on a storage, log usage,
overflow, the logs no proxy has acknowledged and how old they are (its view of the recovery
point); on a proxy, diffs waiting per archive (a synchronizing secondary's lag); on an
archive, the explicit restorable snapshots with their ages, the age of the newest restorable
point, implicit snapshots included (the recovery point), what is restored, and the archives it
replicated the volume to with how far behind each is (``get ts-delta``). An agent that does not
answer is reported, not raised, so a fleet report shows every host.
"""

from __future__ import annotations

import time
from typing import Any

from ..controller import Controller, Server
from ..errors import WalbopsError


def _storage_volume(status: dict[str, Any], now: float) -> dict[str, Any]:
    facts: dict[str, Any] = {"wdev": status.get("wdev"), "uuid": status.get("uuid")}
    done, lsids = status.get("done") or {}, status.get("lsids")
    if lsids is not None and done:
        # The storage's view of the recovery point: how old the writes are that no proxy has
        # acknowledged (0 when every write is; an idle volume is not stale).
        facts["unshipped_pb"] = max(0, lsids["latest"] - done["lsid"])
        facts["rpo_seconds"] = (round(max(0.0, now - done["timestamp"]), 1)
                                if facts["unshipped_pb"] and done["timestamp"] else 0.0)
    if "device_error" in status:
        facts["device_error"] = status["device_error"]
    elif "log_usage_pb" in status:
        # The agent's status carries its device's status already: no more requests for these.
        facts["log_usage_pb"] = status["log_usage_pb"]
        facts["log_capacity_pb"] = status["log_capacity_pb"]
        facts["log_usage_percent"] = round(100.0 * status["log_usage_pb"] / max(status["log_capacity_pb"], 1), 2)
        facts["overflow"] = bool(status["overflow"])
    return facts


def _proxy_volume(status: dict[str, Any]) -> dict[str, Any]:
    return {"archives": [info["name"] for info in status.get("archives", [])],
            "pending": {name: len(diffs) for name, diffs in status.get("pending", {}).items()},
            "send_error": status.get("send_error", {})}


def _archive_volume(controller: Controller, server: Server, vol: str, status: dict[str, Any],
                    now: float) -> dict[str, Any]:
    facts: dict[str, Any] = {"num_diff": status.get("num_diff"), "total_diff_size": status.get("total_diff_size"),
                             "restored": status.get("restored", []), "restorable": [],
                             "implicit_restorable_count": 0, "latest_restorable": None,
                             "latest_restorable_any": None, "rpo_seconds": None, "replicas": []}
    if status["state"] in ("Archived", "Stopped"):
        # Where this archive replicated the volume to, and how far behind each is (get ts-delta).
        facts["replicas"] = [{"destination": entry["destination"], "latest": entry["latest"],
                              "gid_delta": entry["gid_delta"], "time_delta": entry["time_delta"]}
                             for entry in controller.get(server, "ts-delta", vol)]
        entries = controller.get(server, "restorable", vol, "all")
        points = [{"gid": int(entry["gid"]), "timestamp": int(entry["timestamp"]),
                   "age_seconds": round(now - int(entry["timestamp"]), 1), "explicit": bool(entry["explicit"])}
                  for entry in entries]
        facts["restorable"] = [point for point in points if point["explicit"]]
        facts["implicit_restorable_count"] = len(points) - len(facts["restorable"])
        if facts["restorable"]:
            facts["latest_restorable"] = max(point["gid"] for point in facts["restorable"])
        if points:
            # Any restorable point, implicit ones included, is where a restore could start.
            newest = max(points, key=lambda point: point["gid"])
            facts["latest_restorable_any"] = newest["gid"]
            facts["rpo_seconds"] = newest["age_seconds"]
    return facts


def server_info(controller: Controller, server: Server, vol: str | None = None) -> dict[str, Any]:
    """What one agent reports; ``reachable: false`` with the error when it does not answer."""
    now = time.time()
    facts: dict[str, Any] = {"role": server.role, "address": server.address, "port": server.port}
    try:
        status = controller.run(server, "status")
    except WalbopsError as exc:
        return {**facts, "reachable": False, "error": str(exc), "volumes": {}}
    except OSError as exc:
        return {**facts, "reachable": False, "error": exc.strerror or str(exc), "volumes": {}}
    volumes: dict[str, Any] = {}
    for name, volume in sorted(status["volumes"].items()):
        if vol is not None and name != vol:
            continue
        entry = {"state": volume["state"]}
        if "error" in volume:  # a broken volume: its metadata does not load (docs/agents.md)
            entry["error"] = volume["error"]
        elif server.role == "storage":
            entry.update(_storage_volume(volume, now))
        elif server.role == "proxy":
            entry.update(_proxy_volume(volume))
        else:
            entry.update(_archive_volume(controller, server, name, volume, now))
        volumes[name] = entry
    return {**facts, "reachable": True, "version": status.get("version"), "uptime": status.get("uptime"),
            "auth": status.get("auth"), "volumes": volumes}


def cluster_info(controller: Controller, servers: list[Server], vol: str | None = None) -> dict[str, Any]:
    return {"time": int(time.time()),
            "servers": {server.name: server_info(controller, server, vol) for server in servers}}
