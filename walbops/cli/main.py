"""Entry point of the ``walbops`` command.

Exit codes: 0 success; 1 an operating-system error (a missing file, a full disk);
2 bad usage; 3 a format error in the input; 4 a missing optional dependency; 5 an
operation refused in the current state; 6 a conversation with a peer failed (protocol,
authentication, a closed or silent connection); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys

from .. import __version__
from ..allocator import tune_for_streaming
from ..errors import UsageError, WalbopsError
from ..logs import new_request_id, printable, request_id_var

# Each top-level command and the module that defines it. Only the module of the command given
# is imported (all of them for --help or a mistake): importing every one costs about 0.3 s, paid
# by each of the many short commands the Ansible modules run.
COMMAND_MODULES = {
    "wlog": "wlog_cmd", "wdiff": "wdiff_cmd", "wdev": "wdev_cmd", "keygen": "keygen_cmd", "pki": "pki_cmd",
    "agent": "agent_cmd", "ctl": "ctl_cmd", "retention": "retention_cmd", "worker": "worker_cmd",
    "demo": "demo_cmd", "ensure": "ensure_cmd", "info": "info_cmd", "check": "info_cmd",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walbops", description="Continuous block-level backup in the manner of WalB.")
    parser.add_argument("--version", action="version", version=f"walbops {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    given = sys.argv[1:] if argv is None else argv
    words = [word for word in given if not word.startswith("-")]
    wanted = COMMAND_MODULES.get(words[0]) if words else None
    modules = list(dict.fromkeys(COMMAND_MODULES.values())) if wanted is None else [wanted]
    if not words and "--version" in given and not {"-h", "--help"} & set(given):
        modules = []  # ``walbops --version`` alone, which the roles run on every host and run
    for name in modules:
        importlib.import_module(f"{__package__}.{name}").register(commands)
    return parser


REQUEST_ID = re.compile("[0-9a-f]{1,32}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    tune_for_streaming()
    # One id for everything this command asks of agents: their log lines name it. A caller may
    # give its own (WALBOPS_REQUEST_ID, 1 to 32 hex digits), to follow several commands as one.
    request_id = os.environ.get("WALBOPS_REQUEST_ID") or new_request_id()
    if not REQUEST_ID.fullmatch(request_id):
        print(f"walbops: WALBOPS_REQUEST_ID={printable(request_id)!r} is not 1 to 32 hex digits", file=sys.stderr)
        return UsageError.exit_code
    request_id_var.set(request_id)
    try:
        return int(args.handler(args))
    except WalbopsError as exc:
        return _failed(args, str(exc), type(exc).__name__, exc.exit_code, request_id)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _failed(args, where + str(exc.strerror or exc), type(exc).__name__, 1, request_id)
    except KeyboardInterrupt:
        print("walbops: interrupted", file=sys.stderr)
        return 130


def _failed(args: argparse.Namespace, message: str, kind: str, code: int, request_id: str) -> int:
    """Say why a command failed: on stderr, and with --json also as JSON on stdout, so that a
    script reading stdout gets an object either way (with the request id the agents logged)."""
    print(f"walbops: {printable(message)}", file=sys.stderr)
    if getattr(args, "json", False):
        json.dump({"ok": False, "error": message, "kind": kind, "exit_code": code, "rid": request_id}, sys.stdout,
                  sort_keys=True)
        sys.stdout.write("\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
