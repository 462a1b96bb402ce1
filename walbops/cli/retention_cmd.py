"""``walbops retention``: keep the snapshots a policy names on an archive, and free the rest (docs/retention.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..controller import Controller
from ..errors import UsageError
from ..retention import Duration, Policy, enforce
from ._common import emit
from .ctl_cmd import add_where_flags, resolve_server


def _duration(text: str) -> Duration:
    try:
        return Duration.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "retention", help="keep the snapshots a policy names (borg/restic prune rules) and free the rest",
        description="Decide which restorable snapshots of each volume stay (the newest always does, and every "
                    "gid a restore uses), then apply, disable-snapshot, enable-snapshot and merge on the "
                    "archive so that exactly those stay restorable.")
    add_where_flags(parser, role="archive")
    parser.add_argument("volumes", nargs="*", metavar="VOL", help="volumes (default: every volume of the archive)")
    rules = parser.add_argument_group("policy (at least one)")
    rules.add_argument("--keep-last", type=int, default=0, metavar="N", help="the N newest snapshots")
    rules.add_argument("--keep-within", type=_duration, metavar="DURATION",
                       help="every snapshot within DURATION of the newest (7d, 36h, 2w, 1y6m; m is a month)")
    for name in ("hourly", "daily", "weekly", "monthly", "yearly"):
        rules.add_argument(f"--keep-{name}", type=int, default=0, metavar="N",
                           help=f"the newest snapshot of each of the N newest {name} periods (UTC)")
    rules.add_argument("--keep-gid", type=int, action="append", default=[], metavar="GID",
                       help="keep this gid (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be kept and removed; change nothing")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument("--wait-timeout", type=float, default=3600.0, help="longest wait for an apply or merge [s]")
    parser.set_defaults(handler=cmd_retention)


def policy_from_args(args: argparse.Namespace) -> Policy:
    return Policy(keep_last=args.keep_last, keep_within=args.keep_within, keep_hourly=args.keep_hourly,
                  keep_daily=args.keep_daily, keep_weekly=args.keep_weekly, keep_monthly=args.keep_monthly,
                  keep_yearly=args.keep_yearly, keep_gids=frozenset(args.keep_gid))


def cmd_retention(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    layout, server = resolve_server(args)
    ctl = Controller(layout, timeout=args.timeout)
    volumes = args.volumes or [str(vol) for vol in ctl.get(server, "vol")]
    notes = logging.getLogger("walbops.retention")
    if not args.json:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    outcomes: list[dict[str, Any]] = []
    for vol in volumes:
        outcome = enforce(ctl, server, vol, policy, dry_run=args.dry_run, timeout=args.wait_timeout,
                          log=notes.info)
        outcomes.append(outcome.as_dict())
    result = {"policy": policy.as_dict(), "dry_run": args.dry_run, "volumes": outcomes,
              "changed": any(entry["changed"] for entry in outcomes),
              "bytes_freed": None if args.dry_run else sum(entry["bytes_freed"] for entry in outcomes),
              "diff": {"before": {entry["vol"]: sorted([*(k["gid"] for k in entry["kept"]), *entry["removed"]])
                                  for entry in outcomes},
                       "after": {entry["vol"]: [k["gid"] for k in entry["kept"]] for entry in outcomes}}}
    emit(result, args.json, _human)
    return 0


def _human(result: dict[str, Any]) -> str:
    lines = []
    for entry in result["volumes"]:
        kept = ", ".join(f"{k['gid']} ({'/'.join(k['reasons'])})" for k in entry["kept"])
        lines.append(f"{entry['vol']}: keep {kept}")
        lines.append(f"{entry['vol']}: {'would remove' if result['dry_run'] else 'removed'} "
                     f"{entry['removed'] or 'nothing'}")
        if not result["dry_run"]:
            lines.append(f"{entry['vol']}: freed {entry['bytes_freed']} bytes")
        lines += [f"{entry['vol']}: left out: {note}" for note in entry["skipped"]]
    return "\n".join(lines)
