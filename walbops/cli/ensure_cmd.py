"""``walbops ensure KIND ...``: desired state, idempotent, with ``--check`` (what the modules run)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from ..errors import UsageError
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


def _credentials(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("credentials", help="a directory of certificates and keys, handed over on stdin",
                            epilog='stdin: {"public": {NAME: TEXT}, "secret": {NAME: TEXT}} (modes 0644, 0600)')
    parser.add_argument("dir")
    parser.add_argument("--dir-mode", type=_mode, default=0o750, help="the directory's mode (octal)")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_credentials)


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mode between 0000 and 0777")
    return mode


def cmd_credentials(args: argparse.Namespace) -> int:
    from ..converge.credentials import MAX_FILE_BYTES, MAX_FILES, ensure_credentials, parse_bundle

    bound = 2 * MAX_FILES * MAX_FILE_BYTES  # [bytes] JSON escapes at most double a PEM's size
    text = sys.stdin.read(bound + 1)
    if len(text) > bound:
        raise UsageError(f"the credentials on stdin are larger than {bound} bytes")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"the credentials on stdin are not JSON ({exc})") from None
    return report(ensure_credentials(args.dir, parse_bundle(document), args.dir_mode, args.check), args.json)


# Each kind registers its own subcommand; the list is the order ``walbops ensure -h`` shows.
KINDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _loop, _credentials, register_vg, register_lv, register_ldev, register_device, register_agent,
    *ensure_cluster.KINDS)


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("ensure", help="desired state of loop devices, LVM, devices, agents, volumes")
    sub = group.add_subparsers(dest="kind", required=True, metavar="KIND")
    for add in KINDS:
        add(sub)
