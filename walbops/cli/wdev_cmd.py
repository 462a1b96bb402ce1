"""``walbops wdev``: the userspace walb device (WalB's wdevc)."""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from typing import Any

from ..blockdev import is_block_device, size_of
from ..device.control import DeviceClient
from ..device.core import OverflowPolicy, format_ldev
from ..device.registry import DevicePaths, check_name, device_using, pid_alive, read_info, running_devices
from ..device.system import clear_stale
from ..diff.logs import LdevLogReader, WlogWriter, read_super
from ..errors import OperationError, UsageError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wlog import WlogHeader
from ._common import add_json_flag, atomic_output, emit, parse_size

START_TIMEOUT = 60.0  # [s] for a new device to become usable
STOP_TIMEOUT = 60.0  # [s] for a deleted device's daemon to exit


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("wdev", help="the walb device: format, create, control, extract logs")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    fmt = sub.add_parser("format-ldev", help="write a fresh super sector on a log device")
    fmt.add_argument("ldev", help="log device (block device or file)")
    fmt.add_argument("ddev", help="data device (block device or file)")
    fmt.add_argument("--name", default="", help="device name stored in the super sector")
    fmt.add_argument("--pbs", type=int, choices=(512, 4096), help="physical block size (default: the ldev's)")
    fmt.add_argument("--no-discard", action="store_true", help="do not discard the whole ldev first")
    add_json_flag(fmt)
    fmt.set_defaults(handler=cmd_format_ldev)

    create = sub.add_parser("create", help="start the device; prints /dev/walbops/NAME once usable")
    create.add_argument("ldev")
    create.add_argument("ddev")
    create.add_argument("--name", required=True)
    create.add_argument("--overflow", choices=[p.value for p in OverflowPolicy], default="overwrite",
                        help="when the ring is full: keep writing and flag overflow (default), or fail writes")
    create.add_argument("--checkpoint-interval-ms", type=int, default=10_000)
    create.add_argument("--flush-interval-ms", type=int, default=100,
                        help="longest time a write waits to become permanent")
    add_json_flag(create)
    create.set_defaults(handler=cmd_create)

    delete = sub.add_parser("delete", help="final checkpoint, detach and stop")
    delete.add_argument("name")
    delete.add_argument("--force", action="store_true", help="even if the device is mounted or open")
    add_json_flag(delete)
    delete.set_defaults(handler=cmd_delete)

    listing = sub.add_parser("list", help="running devices")
    add_json_flag(listing)
    listing.set_defaults(handler=cmd_list)

    status = sub.add_parser("status", help="lsids, log usage, overflow, uuid, paths")
    status.add_argument("name")
    add_json_flag(status)
    status.set_defaults(handler=cmd_status)

    simple = {
        "get-lsids": ("lsids", "print every lsid"),
        "log-usage": ("log_usage", "log usage and capacity [PB]"),
        "is-overflow": ("is_overflow", "whether the ring overflowed"),
        "reset-wal": ("reset_wal", "new uuid and salt, lsids to 0, clear overflow"),
        "melt": ("melt", "let writes through again"),
        "is-frozen": ("is_frozen", "whether writes are held"),
        "get-checkpoint-interval": ("get_checkpoint_interval", "checkpoint interval [ms]"),
        "force-checkpoint": ("force_checkpoint", "make everything permanent, apply it and checkpoint now"),
    }
    for action, (op, help_text) in simple.items():
        parser = sub.add_parser(action, help=help_text)
        parser.add_argument("name")
        add_json_flag(parser)
        parser.set_defaults(handler=cmd_simple, op=op, op_args={})

    oldest = sub.add_parser("set-oldest-lsid", help="let the ring reuse space below LSID (at most prev_written)")
    oldest.add_argument("name")
    oldest.add_argument("lsid", type=int)
    add_json_flag(oldest)
    oldest.set_defaults(handler=cmd_simple, op="set_oldest_lsid", op_args={"lsid": "lsid"})

    freeze = sub.add_parser("freeze", help="hold every write until melt (or the timeout)")
    freeze.add_argument("name")
    freeze.add_argument("timeout", type=float, nargs="?", help="melt by itself after this many seconds")
    add_json_flag(freeze)
    freeze.set_defaults(handler=cmd_simple, op="freeze", op_args={"timeout": "timeout"})

    interval = sub.add_parser("set-checkpoint-interval", help="checkpoint interval [ms]")
    interval.add_argument("name")
    interval.add_argument("interval_ms", type=int)
    add_json_flag(interval)
    interval.set_defaults(handler=cmd_simple, op="set_checkpoint_interval", op_args={"interval_ms": "interval_ms"})

    resize = sub.add_parser("resize", help="grow the device (0: to the whole ddev)")
    resize.add_argument("name")
    resize.add_argument("size", type=parse_size, help="new size in bytes (suffixes k/m/g/t), 0 for the whole ddev")
    add_json_flag(resize)
    resize.set_defaults(handler=cmd_resize)

    wait = sub.add_parser("wait-permanent", help="wait until logs past LSID are permanent")
    wait.add_argument("name")
    wait.add_argument("--after", type=int, required=True, metavar="LSID")
    wait.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    add_json_flag(wait)
    wait.set_defaults(handler=cmd_wait)

    cat = sub.add_parser("cat-wlog", help="extract permanent logs as a wlog file (WalB's wlog-cat)")
    cat.add_argument("name")
    cat.add_argument("--begin", type=int, required=True, metavar="LSID")
    cat.add_argument("--end", type=int, metavar="LSID", help="default: the permanent lsid")
    cat.add_argument("-o", "--output", default="-", help="output file (default stdout)")
    add_json_flag(cat)
    cat.set_defaults(handler=cmd_cat_wlog)


def cmd_format_ldev(args: argparse.Namespace) -> int:
    for path in (args.ldev, args.ddev):
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such device or file")
        user = device_using(path)
        if user is not None:
            raise OperationError(f"{path} is in use by walb device {user!r}; delete it first")
    if os.path.realpath(args.ldev) == os.path.realpath(args.ddev):
        raise UsageError("the ldev and the ddev must be different devices")
    _refuse_if_busy(args.ldev)
    sector = format_ldev(args.ldev, args.ddev, args.name, args.pbs, not args.no_discard)
    emit({"ldev": args.ldev, "ddev": args.ddev, "name": sector.name, "pbs": sector.physical_bs,
          "uuid": sector.uuid.hex(), "salt": sector.log_checksum_salt, "ring_buffer_size": sector.ring_buffer_size,
          "device_size_lb": sector.device_size}, args.json)
    return 0


def _refuse_if_busy(path: str) -> None:
    """A block device that is mounted or held open exclusively is in use."""
    fd = os.open(path, os.O_RDONLY)
    try:
        block = is_block_device(fd)
    finally:
        os.close(fd)
    if block:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_EXCL))
        except OSError:
            raise OperationError(f"{path} is in use (mounted or held open)") from None


def cmd_create(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    if read_info(name) is not None:
        raise OperationError(f"walb device {name!r} is already running")
    for path in (args.ldev, args.ddev):
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such device or file")
        user = device_using(path)
        if user is not None:
            raise OperationError(f"{path} is in use by walb device {user!r}")
    paths = DevicePaths(name)
    os.makedirs(paths.run_dir, exist_ok=True)
    ready_read, ready_write = os.pipe()
    command = [sys.executable, "-m", "walbops.device.daemon", "--name", name, "--ldev", os.path.abspath(args.ldev),
               "--ddev", os.path.abspath(args.ddev), "--overflow", args.overflow,
               "--checkpoint-interval-ms", str(args.checkpoint_interval_ms),
               "--flush-interval-ms", str(args.flush_interval_ms), "--ready-fd", str(ready_write)]
    with open(paths.log, "ab") as log_file:
        process = subprocess.Popen(command, pass_fds=(ready_write,), start_new_session=True, stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=subprocess.STDOUT, cwd="/")
    os.close(ready_write)
    try:
        reply = _await_ready(ready_read, process)
    finally:
        os.close(ready_read)
    if not reply.get("ok"):
        raise OperationError(f"walb device {name!r} did not start: {reply.get('error', 'unknown error')} "
                             f"(log: {paths.log})")
    if args.json:
        emit({"name": name, "path": reply["path"], "loop": reply["loop"], "pid": process.pid}, True)
    else:
        print(reply["path"])
    return 0


def _await_ready(fd: int, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.terminate()
            return {"ok": False, "error": f"not ready within {START_TIMEOUT:.0f} s"}
        readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
    if b"\n" not in buffer:
        code = process.wait(timeout=10)
        return {"ok": False, "error": f"the daemon exited with status {code}"}
    result: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return result


def cmd_delete(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    info = read_info(name)
    paths = DevicePaths(name)
    if info is None:
        if not os.path.exists(paths.info) and not os.path.lexists(paths.link):
            raise OperationError(f"walb device {name!r} is not running")
        if not args.force:
            raise OperationError(f"walb device {name!r} is not running but its daemon left files behind; "
                                 "--force cleans them up")
        clear_stale(paths)  # a dead daemon's loop device, FUSE mount and files
        emit({"name": name, "deleted": True, "was_running": False}, args.json)
        return 0
    with DeviceClient(name) as client:
        client.call("stop", force=args.force)
    deadline = time.monotonic() + STOP_TIMEOUT
    pid = int(info["pid"])
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    else:
        raise OperationError(f"walb device {name!r} (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s")
    emit({"name": name, "deleted": True}, args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    devices = running_devices()
    emit({"devices": devices}, args.json,
         lambda result: "\n".join(f"{d['name']}\t{d['path']}\t{d['loop']}\t{d['ldev']}\t{d['ddev']}"
                                  for d in result["devices"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with DeviceClient(check_name(args.name)) as client:
        emit(client.call("status"), args.json)
    return 0


def cmd_simple(args: argparse.Namespace) -> int:
    arguments = {key: getattr(args, attribute) for key, attribute in args.op_args.items()}
    with DeviceClient(check_name(args.name)) as client:
        emit(client.call(args.op, **arguments), args.json)
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    if args.size % LOGICAL_BLOCK_SIZE:
        raise UsageError(f"size {args.size} is not a multiple of 512")
    name = check_name(args.name)
    with DeviceClient(name) as client:
        result = client.call("resize", size_lb=args.size // LOGICAL_BLOCK_SIZE)
    info = read_info(name)
    if info is not None and info.get("loop"):
        # The loop device learns the FUSE file's new size only when asked.
        subprocess.run(["losetup", "--set-capacity", info["loop"]], capture_output=True, check=False)
    emit(result, args.json)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    with DeviceClient(check_name(args.name)) as client:
        emit(client.wait_permanent(args.after, args.timeout), args.json)
    return 0


def cmd_cat_wlog(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    with DeviceClient(name) as client:
        status = client.call("status")
        if status["overflow"]:
            raise OperationError(f"{name}: the log ring overflowed; its logs are incomplete until reset-wal")
        lsids = status["lsids"]
        end = lsids["permanent"] if args.end is None else args.end
        if not lsids["oldest"] <= args.begin <= lsids["permanent"]:
            raise OperationError(f"begin lsid {args.begin} is out of [oldest {lsids['oldest']}, permanent "
                                 f"{lsids['permanent']}]")
        if end > lsids["permanent"] or end < args.begin:
            raise OperationError(f"end lsid {end} is out of [begin {args.begin}, permanent {lsids['permanent']}]")
        fd = os.open(status["ldev"], os.O_RDONLY)
        packs = 0
        try:
            sector = read_super(fd)
            with atomic_output(args.output) as out:
                writer = WlogWriter(out, WlogHeader(sector.physical_bs, sector.log_checksum_salt, sector.uuid,
                                                    args.begin))
                lsid = args.begin
                for pack in LdevLogReader(fd, sector).packs(args.begin, end):
                    writer.write_pack(pack.header, pack.data)
                    lsid = pack.header.next_lsid
                    packs += 1
                if lsid < end:
                    raise OperationError(f"{name}: valid logs end at lsid {lsid}, before {end}")
                writer.close()
                if client.call("is_overflow")["overflow"]:
                    raise OperationError(f"{name}: the ring overflowed while its logs were read")
        finally:
            os.close(fd)
    if args.output != "-":
        emit({"name": name, "output": args.output, "begin": args.begin, "end": lsid, "packs": packs,
              "size": size_of_path(args.output)}, args.json)
    return 0


def size_of_path(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return size_of(fd)
    finally:
        os.close(fd)
