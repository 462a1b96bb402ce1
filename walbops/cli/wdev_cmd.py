"""``walbops wdev``: the userspace walb device (WalB's wdevc)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..blockdev import size_of_path
from ..device.control import DeviceClient
from ..device.lifecycle import format_checked, resize_device, start_device, stop_device
from ..device.policy import OverflowPolicy
from ..device.registry import DevicePaths, check_name, running_devices
from ..diff import bhash
from ..diff.logs import LdevLogReader, WlogWriter, read_super
from ..errors import OperationError, UsageError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wlog import WlogHeader
from ._common import add_json_flag, atomic_output, emit, parse_size


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
    create.add_argument("--metrics-listen", default="", metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (docs/operations.md)")
    add_json_flag(create)
    create.set_defaults(handler=cmd_create)

    delete = sub.add_parser("delete", help="final checkpoint, detach and stop")
    delete.add_argument("name")
    delete.add_argument("--force", action="store_true", help="even if the device is mounted or open")
    add_json_flag(delete)
    delete.set_defaults(handler=cmd_delete)

    for action, text, flag, flag_text, handler in (
            ("up", "after a boot: attach its files, start it (redoing its logs), mount it (a device spec: "
                   "docs/operations.md)", "--mount", "also mount its filesystem as the spec says", cmd_up),
            ("down", "before a shutdown: unmount it, stop it (a final checkpoint), detach its files", "--unmount",
             "also unmount its filesystem", cmd_down)):
        boot = sub.add_parser(action, help=text)
        boot.add_argument("name")
        boot.add_argument("--config", required=True, help="the device's spec file (/etc/walbops/devices/NAME.yml)")
        boot.add_argument(flag, action="store_true", help=flag_text)
        add_json_flag(boot)
        boot.set_defaults(handler=handler)

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

    hashing = sub.add_parser("bhash", help="stream hash of a device or image, as an archive's bhash computes it")
    hashing.add_argument("device", help="a walb device name (/dev/walbops/NAME), or any device or image path")
    hashing.add_argument("--bulk", type=parse_size, default=bhash.DEFAULT_BULK,
                         help="bulk size (default 256K; must equal the archive's)")
    hashing.add_argument("--size", type=parse_size, help="hash only the first SIZE bytes")
    add_json_flag(hashing)
    hashing.set_defaults(handler=cmd_bhash)

    cat = sub.add_parser("cat-wlog", help="extract permanent logs as a wlog file (WalB's wlog-cat)")
    cat.add_argument("name")
    cat.add_argument("--begin", type=int, required=True, metavar="LSID")
    cat.add_argument("--end", type=int, metavar="LSID", help="default: the permanent lsid")
    cat.add_argument("-o", "--output", default="-", help="output file (default stdout)")
    add_json_flag(cat)
    cat.set_defaults(handler=cmd_cat_wlog)


def cmd_bhash(args: argparse.Namespace) -> int:
    path = args.device if os.sep in args.device else DevicePaths(check_name(args.device)).link
    hasher = bhash.hash_image(path, args.bulk, args.size)
    emit({"device": path, "hash": hasher.hexdigest(), "bulk": args.bulk, "size": hasher.size}, args.json,
         lambda result: str(result["hash"]))
    return 0


def cmd_format_ldev(args: argparse.Namespace) -> int:
    sector = format_checked(args.ldev, args.ddev, args.name, args.pbs, not args.no_discard)
    emit({"ldev": args.ldev, "ddev": args.ddev, "name": sector.name, "pbs": sector.physical_bs,
          "uuid": sector.uuid.hex(), "salt": sector.log_checksum_salt, "ring_buffer_size": sector.ring_buffer_size,
          "device_size_lb": sector.device_size}, args.json)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    started = start_device(args.name, args.ldev, args.ddev, OverflowPolicy(args.overflow), args.checkpoint_interval_ms,
                           args.flush_interval_ms, args.metrics_listen)
    if args.json:
        emit({"name": started.name, "path": started.path, "loop": started.loop, "pid": started.pid}, True)
    else:
        print(started.path)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ..converge.boot import DeviceSpec, device_up

    emit(device_up(DeviceSpec.load(args.config, args.name), mount=args.mount), args.json)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ..converge.boot import DeviceSpec, device_down

    emit(device_down(DeviceSpec.load(args.config, args.name), unmount=args.unmount), args.json)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    stopped = stop_device(args.name, args.force)
    result: dict[str, Any] = {"name": stopped.name, "deleted": True}
    if not stopped.was_running:
        result["was_running"] = False
    emit(result, args.json)
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
    emit(resize_device(args.name, args.size // LOGICAL_BLOCK_SIZE), args.json)
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
            with atomic_output(args.output, [status["ldev"], status["ddev"]]) as out:
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

