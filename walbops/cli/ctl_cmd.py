"""``walbops ctl``: walbc's commands against one agent, positional arguments as walbc takes them."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..controller import POLL, Layout, Server, call
from ..errors import OperationError, UsageError
from ..net.auth import load_key
from ._common import emit

# walbc's positional arguments, by command: (required names, optional names).
POSITIONAL: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "status": ((), ("vol",)),
    "init-vol": (("vol",), ("wdev",)),
    "clear-vol": (("vol",), ()),
    "reset-vol": (("vol",), ("gid",)),
    "start": (("vol",), ("role",)),
    "stop": (("vol",), ("mode",)),
    "restore": (("vol", "gid"), ()),
    "del-restored": (("vol", "gid"), ()),
    "full-bkp": (("vol",), ("bulk_size",)),
    "snapshot": (("vol",), ()),
    "kick": ((), ("vol", "archive")),
    "shutdown": ((), ("mode",)),
    "version": ((), ()),
}
INTEGER_ARGS = {"gid", "bulk_size"}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ctl", help="send a command to an agent (walbc)")
    where = parser.add_argument_group("where")
    where.add_argument("--layout", help="layout file (servers and key_file)")
    where.add_argument("-s", "--server", help="server name from the layout")
    where.add_argument("-a", "--address", help="server address (without a layout)")
    where.add_argument("-p", "--port", type=int, help="server port (without a layout)")
    where.add_argument("--key", help="cluster key file (without a layout)")
    parser.add_argument("--timeout", type=float, default=30.0, help="socket timeout [s]")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--wait", action="store_true",
                        help="full-bkp, restore: wait until done, with a progress bar on a terminal")
    parser.add_argument("command", help="walbc command: " + ", ".join(sorted(POSITIONAL)) + ", get")
    parser.add_argument("args", nargs="*", help="its arguments, as walbc takes them")
    parser.set_defaults(handler=cmd_ctl)


def request_args(command: str, words: list[str]) -> dict[str, Any]:
    """walbc's positional words as the request's named arguments."""
    if command == "get":
        if not words:
            raise UsageError("get: which target? (state, restorable, base, ...)")
        args: dict[str, Any] = {"target": words[0]}
        if len(words) > 1:
            args["vol"] = words[1]
        if len(words) > 2:
            rest: Any = words[2:] if len(words) > 3 else words[2]
            args["args"] = rest
        return args
    if command == "archive-info":
        return archive_info_args(words)
    if command not in POSITIONAL:
        return {}
    required, optional = POSITIONAL[command]
    if not len(required) <= len(words) <= len(required) + len(optional):
        names = " ".join(required) + "".join(f" [{name}]" for name in optional)
        raise UsageError(f"{command}: expected {names}")
    result: dict[str, Any] = {}
    for name, word in zip(required + optional, words, strict=False):
        if name in INTEGER_ARGS:
            try:
                result[name] = int(word)
            except ValueError:
                raise UsageError(f"{command}: {name} must be an integer, not {word!r}") from None
        else:
            result[name] = word
    return result


def archive_info_args(words: list[str]) -> dict[str, Any]:
    """walbc's ``archive-info list|add|update|get|delete vol [archiveId [addr:port [T:L:N [delaySec]]]]``."""
    usage = "archive-info: expected list|add|update|get|delete VOL [ARCHIVE [ADDR:PORT [TYPE:LEVEL:CPUS [DELAY]]]]"
    if len(words) < 2 or words[0] not in ("list", "add", "update", "get", "delete") or len(words) > 6:
        raise UsageError(usage)
    cmd, vol, rest = words[0], words[1], words[2:]
    args: dict[str, Any] = {"cmd": cmd, "vol": vol}
    needed = {"list": 0, "get": 1, "delete": 1, "add": 2, "update": 2}[cmd]
    if len(rest) < needed or (cmd in ("list", "get", "delete") and len(rest) > needed):
        raise UsageError(usage)
    if rest:
        args["archive"] = rest[0]
    if len(rest) > 1:
        host, _, port = rest[1].rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"archive-info: {rest[1]!r} is not ADDR:PORT")
        args.update(host=host, port=int(port))
    if len(rest) > 2:
        args["compression"] = rest[2]
    if len(rest) > 3:
        try:
            args["delay"] = float(rest[3])
        except ValueError:
            raise UsageError(f"archive-info: delay must be a number of seconds, not {rest[3]!r}") from None
    return args


def wait_until_done(server: Server, key: bytes, command: str, arguments: dict[str, Any], timeout: float) -> Any:
    """Poll until a full backup reaches Target or a restore shows up; draw progress on a terminal."""
    vol = arguments["vol"]

    def get(target: str, extra: Any = None) -> Any:
        request: dict[str, Any] = {"target": target, "vol": vol}
        if extra is not None:
            request["args"] = extra
        return asyncio.run(call(server, key, "get", request, timeout))

    total = 0
    while True:
        if command == "full-bkp":
            state = get("state")
            if state == "Target":
                break
            if state == "SyncReady":
                raise OperationError(f"{vol}: the full backup failed (the storage is back in SyncReady)")
            total = total or int(get("vol-size"))
            done = int(get("progress"))
        else:
            if arguments["gid"] in get("restored"):
                break
            done = 0
        progress_bar(done, total)
        time.sleep(POLL)
    progress_bar(total, total, final=True)
    return {"done": True, "state": "Target"} if command == "full-bkp" else {"restored": arguments["gid"]}


def progress_bar(done: int, total: int, final: bool = False) -> None:
    """A one-line bar on stderr when it is a terminal (scripts use get progress)."""
    if not sys.stderr.isatty() or not total:
        return
    width = 40
    filled = min(width, width * done // total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done // total:3d}%")
    if final:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_ctl(args: argparse.Namespace) -> int:
    if args.layout:
        layout = Layout.load(args.layout)
        server = layout.get(args.server) if args.server else None
        if server is None:
            raise UsageError("--server NAME is needed with --layout")
        key_file = args.key or layout.key_file
    else:
        if not (args.address and args.port and args.key):
            raise UsageError("give --layout and --server, or --address, --port and --key")
        server = Server("-", args.address, args.port, "?")
        key_file = args.key
    key = load_key(key_file)
    arguments = request_args(args.command, args.args)
    result = asyncio.run(call(server, key, args.command, arguments, args.timeout))
    if args.wait and args.command in ("full-bkp", "restore"):
        result = wait_until_done(server, key, args.command, arguments, args.timeout)
    if args.json:
        emit({"result": result}, True)
    elif isinstance(result, (dict, list)):
        print(json.dumps(result, indent=1, sort_keys=True))
    elif result is not None:
        print(result)
    return 0
