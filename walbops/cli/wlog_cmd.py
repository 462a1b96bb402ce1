"""``walbops wlog``: show, gen, to-wdiff, redo."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..blockdev import size_of
from ..diff.engine import (
    DEFAULT_MEMORY_BUDGET,
    BlockTarget,
    DiscardPolicy,
    convert_to_indexed,
    convert_to_sorted,
    log_ios,
    verify_then_apply,
)
from ..diff.gen import GenConfig, generate_wlog
from ..diff.io import DiffIo, Stats
from ..diff.logs import LogPack, WlogReader
from ..errors import BadField
from ..formats.compression import CompressOpt
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wdiff import DEFAULT_MAX_IO_LB
from ._common import (
    add_json_flag,
    atomic_output,
    emit,
    open_input,
    parse_compression,
    parse_lb_size,
    parse_size,
    require,
)


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("wlog", help="inspect, generate, convert and redo wlog files")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    show = sub.add_parser("show", help="verify a wlog and print its header and what it holds")
    show.add_argument("wlog", help="wlog file, or - for stdin")
    show.add_argument("--packs", action="store_true", help="also list every log pack and record")
    add_json_flag(show)
    show.set_defaults(handler=cmd_show)

    gen = sub.add_parser("gen", help="write a random but valid wlog")
    gen.add_argument("output", help="output file, or - for stdout")
    gen.add_argument("--device-size", type=parse_lb_size, required=True, metavar="SIZE",
                     help="size of the device the IOs address (e.g. 16M)")
    gen.add_argument("--log-size", type=parse_size, required=True, metavar="SIZE",
                     help="amount of log to write (e.g. 32M)")
    gen.add_argument("--pbs", type=int, choices=(512, 4096), default=512, help="physical block size")
    gen.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    gen.add_argument("--min-io-size", type=parse_lb_size, default=1, metavar="SIZE", help="smallest IO (default 512)")
    gen.add_argument("--max-io-size", type=parse_lb_size, default=128, metavar="SIZE", help="largest IO (default 64K)")
    gen.add_argument("--discard-pct", type=int, default=10, help="percent of IOs that are discards")
    gen.add_argument("--max-discard-size", type=parse_lb_size, default=256, metavar="SIZE",
                     help="largest discard (default 128K)")
    gen.add_argument("--allzero-pct", type=int, default=5, help="percent of writes that are all zeros")
    gen.add_argument("--compressible", action="store_true", help="half of each write is zeros")
    gen.add_argument("--ring-size", type=int, metavar="PB",
                     help="pad at the end of a ring buffer of this many PB, as the driver does")
    gen.add_argument("--begin-lsid", type=int, default=0, help="lsid of the first pack")
    add_json_flag(gen)
    gen.set_defaults(handler=cmd_gen)

    to_wdiff = sub.add_parser("to-wdiff", help="convert wlogs (consecutive, oldest first) to one wdiff")
    to_wdiff.add_argument("wlogs", nargs="+", help="wlog files in lsid order, or - for stdin")
    to_wdiff.add_argument("-o", "--output", required=True, help="output wdiff, or - for stdout")
    to_wdiff.add_argument("--indexed", action="store_true", help="write an indexed wdiff (as the proxy does)")
    add_diff_writer_flags(to_wdiff)
    to_wdiff.add_argument("--memory", type=parse_size, default=DEFAULT_MEMORY_BUDGET, metavar="SIZE",
                          help="IO data kept in memory while sorting before spilling to temporary files")
    add_json_flag(to_wdiff)
    to_wdiff.set_defaults(handler=cmd_to_wdiff)

    redo = sub.add_parser("redo", help="write the IOs of wlogs onto an image file or block device")
    redo.add_argument("wlogs", nargs="+", help="wlog files, applied in order")
    add_target_flags(redo)
    add_json_flag(redo)
    redo.set_defaults(handler=cmd_redo)


def add_diff_writer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compression", type=parse_compression, default=CompressOpt(), metavar="TYPE[:LEVEL[:CPUS]]",
                        help="none|gzip|snappy|lzma|lz4|zstd (default lz4:0:1)")
    parser.add_argument("--max-io-size", type=parse_lb_size, default=DEFAULT_MAX_IO_LB, metavar="SIZE",
                        help="split larger IOs (default 1M)")


def add_target_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="image file or block device to write")
    parser.add_argument("--size", type=parse_lb_size, metavar="SIZE",
                        help="create (or grow) the target image file to this size first")
    parser.add_argument("--discard", choices=[policy.value for policy in DiscardPolicy], default="ignore",
                        help="what discards do: ignore (default), zero, passdown")


@contextlib.contextmanager
def open_target(args: argparse.Namespace) -> Iterator[BlockTarget]:
    """Open (and if asked, size) the redo/apply target."""
    flags = os.O_RDWR | (os.O_CREAT if args.size else 0)
    fd = os.open(args.target, flags, 0o644)
    try:
        if args.size and size_of(fd) < args.size * LOGICAL_BLOCK_SIZE:
            os.ftruncate(fd, args.size * LOGICAL_BLOCK_SIZE)
        yield BlockTarget(fd, size_of(fd) // LOGICAL_BLOCK_SIZE, DiscardPolicy(args.discard))
    finally:
        os.close(fd)


def cmd_show(args: argparse.Namespace) -> int:
    stats = Stats()
    packs: list[dict[str, Any]] = []
    with open_input(args.wlog) as stream:
        reader = WlogReader(stream, args.wlog)

        def listed() -> Iterator[LogPack]:
            for pack in reader:
                if args.packs:
                    packs.append(_pack_dict(pack))
                yield pack

        for _io in log_ios(listed(), stats):
            pass
    head = reader.header
    result: dict[str, Any] = {
        "version": 2, "pbs": head.physical_bs, "salt": head.log_checksum_salt, "uuid": head.uuid.hex(),
        "begin_lsid": head.begin_lsid, "end_lsid": reader.end_lsid, "header_end_lsid": head.end_lsid,
        **stats.as_dict(),
    }
    # A log has no ALLZERO records; zero writes are normal IOs until converted.
    del result["allzero_ios"], result["allzero_lb"]
    if args.packs:
        result["packs_list"] = packs
    emit(result, args.json)
    return 0


def _pack_dict(pack: LogPack) -> dict[str, Any]:
    header = pack.header
    return {
        "lsid": header.logpack_lsid, "total_io_size": header.total_io_size, "n_records": header.n_records,
        "n_padding": header.n_padding,
        "records": [
            {"lsid": rec.lsid, "offset": rec.offset, "io_size": rec.io_size,
             "kind": "padding" if rec.is_padding else "discard" if rec.is_discard else "normal",
             "checksum": rec.checksum}
            for rec in header.records
        ],
    }


def cmd_gen(args: argparse.Namespace) -> int:
    config = GenConfig(
        device_lb=args.device_size, log_pb=-(-args.log_size // args.pbs), pbs=args.pbs, seed=args.seed,
        min_io_lb=args.min_io_size, max_io_lb=args.max_io_size, discard_pct=args.discard_pct,
        max_discard_lb=args.max_discard_size, allzero_pct=args.allzero_pct, compressible=args.compressible,
        ring_buffer_size=args.ring_size, begin_lsid=args.begin_lsid,
    )
    config.check()
    with atomic_output(args.output) as out:
        stats = generate_wlog(out, config)
    if args.output != "-":
        emit({"output": args.output, **stats.as_dict()}, args.json)
    return 0


def consecutive_ios(readers: list[WlogReader], stats: Stats, in_file: bool) -> Iterator[DiffIo]:
    """The IOs of wlogs of one device, each continuing where the one before ended."""
    next_lsid: int | None = None
    for reader in readers:
        if reader.header.uuid != readers[0].header.uuid:
            raise BadField(f"uuid {reader.header.uuid.hex()} differs from the first wlog's", 24, reader.source)
        if next_lsid is not None and reader.header.begin_lsid != next_lsid:
            raise BadField(f"begin lsid {reader.header.begin_lsid} does not continue the previous wlog "
                           f"(ending at lsid {next_lsid})", 40, reader.source)
        yield from log_ios(reader, stats, reader.stream.fileno() if in_file else None)
        next_lsid = reader.end_lsid


def cmd_to_wdiff(args: argparse.Namespace) -> int:
    require(args.wlogs == ["-"] or "-" not in args.wlogs, "stdin cannot be mixed with wlog files")
    # From files, IOs refer to their data in the wlogs instead of copying it, so every
    # input stays open until the output is written.
    in_file = args.wlogs != ["-"]
    source = Stats()
    opt: CompressOpt = args.compression
    with contextlib.ExitStack() as inputs:
        readers = [WlogReader(inputs.enter_context(open_input(path)), path, reuse_buffer=in_file)
                   for path in args.wlogs]
        ios = consecutive_ios(readers, source, in_file)
        uuid = readers[0].header.uuid
        with atomic_output(args.output, args.wlogs) as out:
            tmp_dir = os.path.dirname(os.path.abspath(args.output)) if args.output != "-" else None
            if args.indexed:
                written = convert_to_indexed(ios, out, uuid, opt.kind, opt.level, args.max_io_size, tmp_dir)
            else:
                written = convert_to_sorted(ios, out, uuid, opt.kind, opt.level, args.max_io_size, args.memory,
                                            tmp_dir)
    if args.output != "-":
        emit({"input": source.as_dict(), "output": written.as_dict(), "type": "indexed" if args.indexed else "sorted",
              "compression": str(args.compression), "inputs": len(args.wlogs)}, args.json)
    return 0


def cmd_redo(args: argparse.Namespace) -> int:
    def ios() -> Iterator[DiffIo]:
        for path in args.wlogs:
            with open(path, "rb", buffering=1 << 20) as stream:
                yield from log_ios(WlogReader(stream, path))

    with open_target(args) as target:
        stats = verify_then_apply(ios, target)
    emit({"target": args.target, "discard": args.discard, **stats.as_dict()}, args.json)
    return 0
