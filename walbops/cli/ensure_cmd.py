"""``walbops ensure KIND ...``: desired state, idempotent, with ``--check`` (what the modules run)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import ensure_cluster
from ._common import add_ensure_flags, parse_size, report
from .ensure_device import register_agent, register_device, register_ldev
from .ensure_lvm import register_lv, register_vg


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
    _loop, register_vg, register_lv, register_ldev, register_device, register_agent, *ensure_cluster.KINDS)


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("ensure", help="desired state of loop devices, LVM, devices, agents, volumes")
    sub = group.add_subparsers(dest="kind", required=True, metavar="KIND")
    for add in KINDS:
        add(sub)
