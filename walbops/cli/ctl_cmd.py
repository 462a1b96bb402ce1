"""``walbops ctl``: walbc's commands against one agent, positional arguments as walbc takes them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..agents.transfers import receive_image
from ..blockdev import pwrite_all, size_of, zero_range
from ..controller import POLL, Controller, Layout, Server, call, connect
from ..durable import atomic_file
from ..errors import OperationError, UsageError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..net import messages
from ..net.ssh import DEFAULT_KNOWN_HOSTS, SshRoute
from ..net.tls import Secret, TlsFiles
from ..units import parse_size
from ._common import emit, human_result

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
    "hash-bkp": (("vol",), ("bulk_size",)),
    "snapshot": (("vol",), ()),
    "apply": (("vol", "gid"), ()),
    "gc-diff": (("vol",), ()),
    "bhash": (("vol", "gid"), ("bulk", "size")),
    "kick": ((), ("vol", "archive")),
    "shutdown": ((), ("mode",)),
    "version": ((), ()),
}
INTEGER_ARGS = {"gid"}
SIZE_ARGS = {"bulk_size", "bulk", "size"}  # sizes in bytes, with k/m/g suffixes as walbc takes them
# Commands whose --wait follows a background action on the archive to its end: its action name.
ARCHIVE_WAITS = {"apply": "Apply", "merge": "Merge", "restore": "Restore", "replicate": "ReplSyncAsClient"}
REPLICATE_USAGE = "replicate: expected VOL (gid GID | size MAX_MB) HOST:PORT [doResync]"
MERGE_USAGE = "merge: expected VOL GIDB (gid GIDE | size MAX_MB) or VOL GIDB GIDE [MAX_SIZE]"


def add_where_flags(parser: argparse.ArgumentParser, role: str = "?") -> None:
    """--layout/--server, or --address/--port/--key: which agent a command talks to."""
    where = parser.add_argument_group("where")
    where.add_argument("--layout", help="layout file (servers and key_file)")
    where.add_argument("-s", "--server", help="server name from the layout")
    where.add_argument("-a", "--address", help="server address (without a layout)")
    where.add_argument("-p", "--port", type=int, help="server port (without a layout)")
    where.add_argument("--key", help="cluster key file (key mode, without a layout)")
    where.add_argument("--tls-cert", help="TLS mode: the controller certificate (without a layout)")
    where.add_argument("--tls-key", help="TLS mode: its private key")
    where.add_argument("--tls-ca", help="TLS mode: the CA certificates to trust")
    where.add_argument("--ssh", metavar="[USER@]HOST[:PORT]",
                       help="reach the agent through SSH to this host (the address is then as that host sees "
                            "it, e.g. 127.0.0.1)")
    where.add_argument("--ssh-key", help="SSH: the private key to log in with (default: the ssh agent and "
                                         "~/.ssh/id_*)")
    where.add_argument("--known-hosts", help="SSH: the known_hosts file that must hold the host's key "
                                             f"(default {DEFAULT_KNOWN_HOSTS})")
    parser.add_argument("--timeout", type=float, default=30.0, help="socket timeout [s]")
    parser.set_defaults(server_role=role)


def resolve_server(args: argparse.Namespace) -> tuple[Layout, Server]:
    """The layout and the server that --layout/--server or --address/--port/--key name.

    Raises:
        UsageError: neither form is complete.
    """
    if args.layout:
        layout = Layout.load(args.layout)
        if not args.server:
            raise UsageError("--server NAME is needed with --layout")
        server = ssh_flags(args, layout.get(args.server))
        if args.key or tls_flags(args):
            layout = Layout(layout.servers, args.key, tls_flags(args))
        return layout, server
    if not (args.address and args.port and (args.key or tls_flags(args))):
        raise UsageError("give --layout and --server, or --address, --port and --key (or --tls-cert, --tls-key "
                         "and --tls-ca)")
    server = ssh_flags(args, Server("-", args.address, args.port, args.server_role))
    return Layout((server,), args.key, tls_flags(args)), server


def ssh_flags(args: argparse.Namespace, server: Server) -> Server:
    """``server`` reached through --ssh, or through its layout's ssh host with --ssh-key and
    --known-hosts overriding the layout's."""
    if args.ssh:
        return replace(server, ssh=SshRoute.parse(args.ssh, args.known_hosts, args.ssh_key))
    if server.ssh is not None and (args.known_hosts or args.ssh_key):
        return replace(server, ssh=replace(server.ssh, known_hosts=args.known_hosts or server.ssh.known_hosts,
                                           key_file=args.ssh_key or server.ssh.key_file))
    if args.known_hosts or args.ssh_key:
        raise UsageError("--ssh-key and --known-hosts go with --ssh (or a layout entry with ssh)")
    return server


def tls_flags(args: argparse.Namespace) -> TlsFiles | None:
    """--tls-cert, --tls-key and --tls-ca, all or none."""
    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise UsageError("TLS mode needs all of --tls-cert, --tls-key and --tls-ca")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ctl", help="send a command to an agent (walbc)")
    add_where_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--wait", action="store_true",
                        help="full-bkp, hash-bkp, restore, apply, merge, replicate: wait until done (a progress bar "
                             "on a terminal for full-bkp); a failure exits non-zero with the agent's reason")
    parser.add_argument("command", help="walbc command: " + ", ".join(sorted(
        [*POSITIONAL, "merge", "replicate", "disable-snapshot", "enable-snapshot", "virt-full-scan", "archive-info",
         "set-full-scan-bps", "resize"])) + ", get")
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
    if command == "merge":
        return merge_args(words)
    if command == "replicate":
        return replicate_args(words)
    if command in ("disable-snapshot", "enable-snapshot"):
        if len(words) < 2:
            raise UsageError(f"{command}: expected VOL GID...")
        return {"vol": words[0], "gids": [_integer(command, "gid", word) for word in words[1:]]}
    if command == "virt-full-scan":
        return virt_full_scan_args(words)
    if command == "resize":
        # walbc: resize VOL SIZE [zeroclear]
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] not in ("zeroclear", "1", "0")):
            raise UsageError("resize: expected VOL SIZE [zeroclear]")
        return {"vol": words[0], "size": _size(command, "size", words[1]),
                **({"zeroclear": words[2] in ("zeroclear", "1")} if len(words) == 3 else {})}
    if command == "set-full-scan-bps":
        # WalB's form is `set-full-scan-bps BPS` (the storage's limit); `VOL BPS` names a volume too.
        if len(words) not in (1, 2):
            raise UsageError("set-full-scan-bps: expected [VOL] BYTES_PER_SECOND")
        return {"bps": _size(command, "bps", words[-1]), **({"vol": words[0]} if len(words) == 2 else {})}
    if command not in POSITIONAL:
        return {}
    required, optional = POSITIONAL[command]
    if not len(required) <= len(words) <= len(required) + len(optional):
        names = " ".join(required) + "".join(f" [{name}]" for name in optional)
        raise UsageError(f"{command}: expected {names}")
    result: dict[str, Any] = {}
    for name, word in zip(required + optional, words, strict=False):
        if name in INTEGER_ARGS:
            result[name] = _integer(command, name, word)
        elif name in SIZE_ARGS:
            result[name] = _size(command, name, word)
        else:
            result[name] = word
    return result


def _integer(command: str, name: str, word: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise UsageError(f"{command}: {name} must be an integer, not {word!r}") from None


def _size(command: str, name: str, word: str) -> int:
    try:
        return parse_size(word)
    except UsageError as exc:
        raise UsageError(f"{command}: {name}: {exc}") from None


def replicate_args(words: list[str]) -> dict[str, Any]:
    """walbc's ``replicate VOL gid GID HOST:PORT [doResync]`` and ``replicate VOL size MAX_MB HOST:PORT
    [doResync]`` (size 0: everything); doResync is 0 or 1."""
    if not 4 <= len(words) <= 5 or words[1] not in ("gid", "size"):
        raise UsageError(REPLICATE_USAGE)
    host, _, port = words[3].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"replicate: the destination must be HOST:PORT, not {words[3]!r}")
    args: dict[str, Any] = {"vol": words[0], "host": host.strip("[]"), "port": int(port)}
    if words[1] == "gid":
        args["gid"] = _integer("replicate", "GID", words[2])
    else:
        args["size"] = _size("replicate", "size", words[2] + ("" if words[2][-1:].isalpha() else "M"))
    if len(words) == 5:
        if words[4] not in ("0", "1"):
            raise UsageError(f"replicate: doResync must be 0 or 1, not {words[4]!r}")
        args["do_resync"] = words[4] == "1"
    return args


def merge_args(words: list[str]) -> dict[str, Any]:
    """walbc's ``merge VOL GIDB gid GIDE`` / ``merge VOL GIDB size MAX_MB``, or ``merge VOL GIDB GIDE [MAX_SIZE]``."""
    if not 3 <= len(words) <= 4:
        raise UsageError(MERGE_USAGE)
    args: dict[str, Any] = {"vol": words[0], "gid_b": _integer("merge", "GIDB", words[1])}
    if words[2] in ("gid", "size"):
        if len(words) != 4:
            raise UsageError(MERGE_USAGE)
        if words[2] == "gid":
            args["gid_e"] = _integer("merge", "GIDE", words[3])
        else:
            # walbc's size is in MiB; a suffix gives another unit.
            args["max_size"] = _size("merge", "size", words[3] + ("" if words[3][-1:].isalpha() else "M"))
        return args
    args["gid_e"] = _integer("merge", "GIDE", words[2])
    if len(words) == 4:
        args["max_size"] = _size("merge", "MAX_SIZE", words[3])
    return args


def virt_full_scan_args(words: list[str]) -> dict[str, Any]:
    """walbc's ``virt-full-scan DEVICE|stdout VOL GID [BULK [SIZE]]``; ``VOL DEVICE GID ...`` works too.

    A volume id has no ``/``, so the word that names a path or ``stdout`` is the output.
    """
    usage = "virt-full-scan: expected DEVICE|stdout VOL GID [BULK [SIZE]]"
    if not 3 <= len(words) <= 5:
        raise UsageError(usage)

    def is_output(word: str) -> bool:
        return "/" in word or word in ("stdout", "-")

    first, second = words[0], words[1]
    if is_output(first) or not is_output(second):
        output, vol = first, second
    else:
        output, vol = second, first
    args: dict[str, Any] = {"output": output, "vol": vol, "gid": _integer("virt-full-scan", "gid", words[2])}
    for name, word in zip(("bulk", "size"), words[3:], strict=False):
        args[name] = _size("virt-full-scan", name, word)
    return args


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


def wait_until_done(server: Server, key: Secret, command: str, arguments: dict[str, Any], timeout: float) -> Any:
    """Poll until a full or hash backup reaches Target (a progress bar on a terminal)."""
    vol = arguments["vol"]

    def get(target: str) -> Any:
        return asyncio.run(call(server, key, "get", {"target": target, "vol": vol}, timeout))

    total = 0
    while True:
        state = get("state")
        if state == "Target":
            break
        if state == "SyncReady":
            raise OperationError(f"{vol}: the {command.split('-')[0]} backup failed (the storage is back in "
                                 "SyncReady; see its log)")
        total = total or int(get("vol-size"))
        progress_bar(int(get("progress")), total)
        time.sleep(POLL)
    progress_bar(total, total, final=True)
    return {"done": True, "state": "Target"}


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
    layout, server = resolve_server(args)
    key = layout.credentials()
    arguments = request_args(args.command, args.args)
    if args.command == "virt-full-scan":
        result = asyncio.run(receive_virtual_image(server, key, arguments, args.timeout))
    else:
        result = asyncio.run(call(server, key, args.command, arguments, args.timeout))
    if args.wait and args.command in ("full-bkp", "hash-bkp"):
        result = wait_until_done(server, key, args.command, arguments, args.timeout)
    elif args.wait and args.command in ARCHIVE_WAITS and isinstance(result, dict) and result.get("accepted"):
        result = Controller(layout, args.timeout).wait_for_action(server, arguments["vol"],
                                                                  ARCHIVE_WAITS[args.command], result)
    if args.json:
        emit({"result": result}, True)
    elif result is not None and (text := human_result(result)):
        print(text)
    return 0


async def receive_virtual_image(server: Server, key: Secret, arguments: dict[str, Any], timeout: float) -> Any:
    """virt-full-scan: the archive streams the image at a gid; write it to a device, a file or stdout.

    A file is written under a temporary name and renamed once complete; a block device is
    written in place. Zero ranges become holes in a file and BLKZEROOUT
    on a device.
    """
    output = arguments.pop("output")
    to_stdout = output in ("stdout", "-")
    channel = await connect(server, key, timeout)
    async with channel:
        if await channel.request(messages.VIRT_FULL_SCAN, arguments) != messages.ACCEPTED:
            raise OperationError("virt-full-scan: the archive did not accept")
        begin = await channel.recv_json("begin")
        if "size_lb" not in begin or "bulk_lb" not in begin:
            raise OperationError("virt-full-scan: the archive's begin does not say the image's size")
        size = begin["size_lb"] * LOGICAL_BLOCK_SIZE
        with _image_output(output, size) as fd:
            async def on_data(offset: int, data: bytes) -> None:
                if to_stdout:
                    sys.stdout.buffer.write(data)
                else:
                    pwrite_all(fd, data, offset)

            async def on_zero(offset: int, length: int) -> None:
                if to_stdout:
                    for at in range(0, length, 1 << 20):
                        sys.stdout.buffer.write(bytes(min(1 << 20, length - at)))
                else:
                    zero_range(fd, offset, length)

            await receive_image(channel, begin["size_lb"], begin["bulk_lb"], f"{server.name}: the archive",
                                on_data, on_zero)
    if to_stdout:
        sys.stdout.buffer.flush()
        return None
    return {"output": output, "vol": arguments["vol"], "gid": arguments["gid"], "size": size}


@contextlib.contextmanager
def _image_output(output: str, size: int) -> Iterator[int]:
    if output in ("stdout", "-"):
        yield -1
        return
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.stat(output).st_mode) and not stat.S_ISBLK(os.stat(output).st_mode):
            raise UsageError(f"{output}: an image goes to a file, a block device or stdout")
    with atomic_file(output, 0o600) as stream:
        fd = stream.fileno()
        if stat.S_ISBLK(os.fstat(fd).st_mode):
            if size_of(fd) < size:
                raise OperationError(f"{output} holds {size_of(fd)} bytes, the image needs {size}")
        else:
            os.ftruncate(fd, size)  # a hole: zero ranges cost nothing
        yield fd
