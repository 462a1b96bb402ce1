"""``walbops info`` (facts about every agent of a layout, as a table or JSON) and ``walbops
check`` (a Nagios/Icinga plugin: one line, perfdata, exit 0 OK, 1 WARNING, 2 CRITICAL, 3
UNKNOWN; docs/operations.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..converge.cluster import DEFAULT_LAYOUT, open_controller, server_of
from ..converge.health import Health, Level, Thresholds, assess
from ..errors import WalbopsError
from ..logs import printable
from ..units import format_size
from ._common import add_json_flag, emit, format_table

FAIL_ON = {"none": None, "unreachable": None, "warning": Level.WARNING, "critical": Level.CRITICAL}
UNREACHABLE_EXIT = 1  # walbops info --fail-on unreachable (the default): an agent did not answer
THRESHOLD_FLAGS = (
    ("--rpo-warning", "rpo_warning", "warn when writes no proxy acknowledged are this old [s]"),
    ("--rpo-critical", "rpo_critical", "critical when they are this old [s]"),
    ("--log-warning", "log_warning", "warn when a log ring is this full [%%]"),
    ("--log-critical", "log_critical", "critical when a log ring is this full [%%]"),
)


def register(commands: argparse._SubParsersAction) -> None:
    info = commands.add_parser("info", help="states, restorable snapshots and ages, log usage, of every agent")
    _add_selection(info)
    info.add_argument("--fail-on", choices=sorted(FAIL_ON), default="unreachable",
                      help="exit non-zero when an agent does not answer (default), when the health is at least "
                           "warning or critical (docs/operations.md), or never")
    add_json_flag(info)
    info.set_defaults(handler=cmd_info)

    check = commands.add_parser("check", help="Nagios/Icinga check of a layout: exit 0 OK, 1 WARNING, 2 CRITICAL, "
                                              "3 UNKNOWN; one line with perfdata")
    _add_selection(check)
    add_json_flag(check)
    check.set_defaults(handler=cmd_check)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", default=DEFAULT_LAYOUT, help=f"layout file (default {DEFAULT_LAYOUT})")
    parser.add_argument("--server", action="append", help="only this agent (repeatable; default: all)")
    parser.add_argument("--vol", help="only this volume")
    parser.add_argument("--timeout", type=float, default=10.0, help="per agent [s]")
    defaults = Thresholds()
    for flag, name, text in THRESHOLD_FLAGS:
        parser.add_argument(flag, dest=name, type=float, default=getattr(defaults, name),
                            help=f"{text} (default {getattr(defaults, name):g})")


def _gather(args: argparse.Namespace) -> tuple[dict[str, Any], Health]:
    """The facts of the selected agents, with their health under the given thresholds."""
    from ..converge.info import cluster_info

    controller = open_controller(args.layout, timeout=args.timeout)
    servers = [server_of(controller, name) for name in args.server] if args.server else list(
        controller.layout.servers)
    info = cluster_info(controller, servers, args.vol)
    health = assess(info, Thresholds(**{name: getattr(args, name) for _, name, _ in THRESHOLD_FLAGS}))
    info["health"] = health.as_dict()
    return info, health


def cmd_info(args: argparse.Namespace) -> int:
    info, health = _gather(args)
    emit(info, args.json, human=render_table)
    unreachable = [name for name, server in info["servers"].items() if not server["reachable"]]
    threshold = FAIL_ON[args.fail_on]
    if args.fail_on == "unreachable" and unreachable:
        print(f"walbops: {', '.join(sorted(unreachable))} did not answer", file=sys.stderr)
        return UNREACHABLE_EXIT
    if threshold is not None and health.level >= threshold:
        print(f"walbops: {health.level.name}: " + printable("; ".join(
            problem for level, problem in health.problems if level >= threshold)), file=sys.stderr)
        return int(health.level)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    try:
        info, health = _gather(args)
    except WalbopsError as exc:
        # The plugin cannot tell: UNKNOWN, as Nagios expects, with why.
        if args.json:
            emit({"status": "UNKNOWN", "code": int(Level.UNKNOWN), "error": str(exc)}, True)
        else:
            print(f"WALBOPS UNKNOWN - {printable(str(exc))}")
        return int(Level.UNKNOWN)
    if args.json:
        emit({**health.as_dict(), "perfdata": health.perfdata, "servers": info["servers"]}, True)
    else:
        checked = sum(len(server["volumes"]) for server in info["servers"].values())
        text = health.summary() or f"{len(info['servers'])} agents, {checked} volumes"
        print(f"WALBOPS {health.level.name} - {printable(text)} | {' '.join(health.perfdata)}")
    return int(health.level)


def render_table(info: dict[str, Any]) -> str:
    """One line per agent, one per volume, and the health at the end."""
    rows = [("SERVER", "ROLE", "VOLUME", "STATE", "DETAIL")]
    for name, server in sorted(info["servers"].items()):
        if not server["reachable"]:
            rows.append((name, server["role"], "-", "DOWN", printable(str(server.get("error")))))
            continue
        rows.append((name, server["role"], "-", "up", f"walbops {server.get('version')}, "
                                                      f"{server.get('address')}:{server.get('port')}"))
        for vol, volume in sorted(server["volumes"].items()):
            rows.append((name, server["role"], vol, volume["state"], printable(_detail(server["role"], volume))))
    lines = format_table(rows).splitlines()
    health = info.get("health")
    if health is not None:
        lines.append("")
        lines.append(f"health: {health['status']}" + "".join(
            f"\n  {problem['level']}: {printable(problem['problem'])}" for problem in health["problems"]))
    return "\n".join(line.rstrip() for line in lines)


def _detail(role: str, volume: dict[str, Any]) -> str:
    if "error" in volume:
        return f"broken: {volume['error']}"
    if role == "storage":
        if "device_error" in volume:
            return f"device: {volume['device_error']}"
        parts = []
        if volume.get("log_usage_percent") is not None:
            parts.append(f"log {volume['log_usage_percent']}%")
        if volume.get("overflow"):
            parts.append("OVERFLOW")
        if volume.get("rpo_seconds"):
            parts.append(f"unacknowledged writes {volume['rpo_seconds']:.0f} s old")
        return ", ".join(parts)
    if role == "proxy":
        waiting = ", ".join(f"{count} diffs for {archive}" for archive, count in sorted(volume["pending"].items()))
        errors = [archive for archive, error in volume.get("send_error", {}).items() if error]
        return waiting + (f"; failing: {', '.join(sorted(errors))}" if errors else "")
    parts = []
    if volume.get("rpo_seconds") is not None:
        parts.append(f"newest restorable {volume['rpo_seconds']:.0f} s old (gid {volume['latest_restorable_any']})")
    parts.append(f"{len(volume.get('restorable', []))} explicit + {volume.get('implicit_restorable_count', 0)} "
                 f"implicit restorable")
    if volume.get("num_diff") is not None:
        parts.append(f"{volume['num_diff']} diffs ({format_size(volume.get('total_diff_size') or 0)})")
    for replica in volume.get("replicas", []):
        parts.append(f"replica {replica['destination']} {replica['time_delta']} s behind")
    return ", ".join(parts)
