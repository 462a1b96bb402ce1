"""``walbops keygen``: write a new cluster key file (docs/protocol.md §4.1)."""

from __future__ import annotations

import argparse
import os

from ..net.auth import write_key
from ._common import add_json_flag, emit


def register(commands: argparse._SubParsersAction) -> None:
    keygen = commands.add_parser("keygen", help="write a new random cluster key file (mode 0600)")
    keygen.add_argument("path", help="key file to create")
    keygen.add_argument("--force", action="store_true", help="replace the file if it exists")
    add_json_flag(keygen)
    keygen.set_defaults(handler=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    # The key itself is never printed: it is a secret, and output ends up in logs.
    write_key(args.path, force=args.force)
    path = os.path.abspath(args.path)
    emit({"path": path, "mode": "0600"}, args.json, human=lambda result: result["path"])
    return 0
