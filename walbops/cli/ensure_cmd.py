"""``walbops ensure KIND ...``: desired state, idempotent, with ``--check`` (what the modules run)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..converge import Outcome
from ._common import add_json_flag, emit, parse_size
from .ensure_device import register_agent, register_device, register_ldev
from .ensure_lvm import register_lv, register_vg


def add_ensure_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="only tell what would change")
    add_json_flag(parser)


def report(outcome: Outcome, as_json: bool) -> int:
    result = outcome.as_json()
    if as_json:
        emit(result, True)
    else:
        diff = result.pop("diff", None)
        print("changed" if outcome.changed else "unchanged")
        for key, value in result.items():
            if key != "changed":
                print(f"{key}: {value}")
        if diff and outcome.changed:
            print(f"before: {diff['before']}\nafter: {diff['after']}")
    return 0


def _loop(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("loop", help="a file attached as a loop device (present|absent)")
    parser.add_argument("file")
    parser.add_argument("--state", choices=("present", "absent"), default="present")
    parser.add_argument("--size", type=parse_size, help="create the file sparse, or grow it, to SIZE")
    parser.add_argument("--read-only", action="store_true", help="attach read-only")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_loop)


def cmd_loop(args: argparse.Namespace) -> int:
    from ..converge.loopdev import ensure_loopdev

    return report(ensure_loopdev(args.file, args.state, args.size, args.read_only, args.check), args.json)


# Each kind registers its own subcommand; the list is the order ``walbops ensure -h`` shows.
KINDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _loop, register_vg, register_lv, register_ldev, register_device, register_agent)


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("ensure", help="desired state of loop devices, LVM, devices, agents, volumes")
    sub = group.add_subparsers(dest="kind", required=True, metavar="KIND")
    from . import ensure_cluster  # imported here: it builds on this module's helpers

    for add in (*KINDS, *ensure_cluster.KINDS):
        add(sub)
