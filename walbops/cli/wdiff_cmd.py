"""``walbops wdiff``: show, verify, merge, redo, full."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..diff.chain import DiffDirectory
from ..diff.engine import BlockTarget, full_image, merge_ios, verify_then_apply, write_sorted
from ..diff.files import iter_diff, merged_ios
from ..diff.indexed_file import IndexedDiffReader
from ..diff.io import DiffIo, IoKind, Stats
from ..diff.sorted_file import SortedDiffWriter
from ..errors import FormatError
from ..formats.compression import Compression, CompressOpt
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wdiff import DiffType
from ..gid import MetaState
from ._common import (
    add_json_flag,
    atomic_output,
    diff_type,
    diff_uuid,
    emit,
    parse_lb_size,
    require,
)
from .wlog_cmd import add_diff_writer_flags, add_target_flags, open_target


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("wdiff", help="inspect, verify, merge and apply wdiff files")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    show = sub.add_parser("show", help="print a wdiff's header and what it holds")
    show.add_argument("wdiff")
    show.add_argument("--records", action="store_true", help="also list every record")
    add_json_flag(show)
    show.set_defaults(handler=cmd_show)

    verify = sub.add_parser("verify", help="check every checksum and decompress every record")
    verify.add_argument("wdiffs", nargs="+")
    add_json_flag(verify)
    verify.set_defaults(handler=cmd_verify)

    merge = sub.add_parser("merge", help="merge wdiffs (oldest first) into one sorted wdiff")
    merge.add_argument("wdiffs", nargs="+", help="inputs, oldest first")
    merge.add_argument("-o", "--output", required=True, help="output wdiff, or - for stdout")
    add_diff_writer_flags(merge)
    add_json_flag(merge)
    merge.set_defaults(handler=cmd_merge)

    redo = sub.add_parser("redo", help="apply wdiffs (oldest first) to an image file or block device")
    redo.add_argument("wdiffs", nargs="+", help="inputs, oldest first")
    add_target_flags(redo)
    add_json_flag(redo)
    redo.set_defaults(handler=cmd_redo)

    full = sub.add_parser("full", help="write the full image of a base plus wdiffs (discards read as zeros)")
    full.add_argument("wdiffs", nargs="*", help="diffs applied to the base, oldest first")
    full.add_argument("--size", type=parse_lb_size, required=True, metavar="SIZE", help="image size")
    full.add_argument("--base", help="base image (default: zeros)")
    full.add_argument("--diff-dir", metavar="DIR",
                      help="pick the diffs from the WalB-named wdiffs in DIR by the gid model (with --gid)")
    full.add_argument("--gid", type=int, help="the clean snapshot to build (with --diff-dir)")
    full.add_argument("--base-state", default="<|0|>", metavar="STATE",
                      help="the base image's MetaState, e.g. '<|0|>' or '<|0,5|>' (default <|0|>)")
    full.add_argument("-o", "--output", required=True, help="output image, or - for stdout")
    add_json_flag(full)
    full.set_defaults(handler=cmd_full)


def cmd_show(args: argparse.Namespace) -> int:
    kind = diff_type(args.wdiff)
    stats = Stats()
    records: list[dict[str, Any]] = []
    data_bytes = 0
    for io in iter_diff(args.wdiff):
        stats.count(io)
        if io.kind == IoKind.NORMAL and io.image is not None:
            data_bytes += io.image.size if io.whole_image() is not None or kind == DiffType.SORTED else 0
        if args.records:
            records.append(_record_dict(io))
    result: dict[str, Any] = {
        "type": kind.name.lower(), "version": 2, "uuid": diff_uuid(args.wdiff).hex(),
        "file_size": os.path.getsize(args.wdiff), **stats.as_dict(),
    }
    del result["padding_pb"], result["packs"]
    if kind == DiffType.SORTED:
        result["data_bytes"] = data_bytes
    else:
        fd = os.open(args.wdiff, os.O_RDONLY)
        try:
            index = IndexedDiffReader(fd, args.wdiff).index
        finally:
            os.close(fd)
        result.update(index_offset=index.index_offset, n_records=index.n_records, n_data=index.n_data)
    if args.records:
        result["records"] = records
    emit(result, args.json)
    return 0


def _record_dict(io: DiffIo) -> dict[str, Any]:
    entry: dict[str, Any] = {"address": io.address, "blocks": io.blocks, "kind": io.kind.name.lower()}
    if io.image is not None:
        entry.update(compression=Compression(io.image.compression).name.lower(), data_size=io.image.size,
                     checksum=io.image.checksum, image_offset=io.image_offset)
    return entry


def cmd_verify(args: argparse.Namespace) -> int:
    results = []
    failed = 0
    for path in args.wdiffs:
        stats = Stats()
        try:
            for io in iter_diff(path):
                if io.kind == IoKind.NORMAL:
                    io.data()
                stats.count(io)
            results.append({"path": path, "ok": True, **stats.as_dict()})
        except FormatError as exc:
            failed += 1
            results.append({"path": path, "ok": False, "error": str(exc)})
            if not args.json:
                raise
    emit({"ok": not failed, "files": results}, args.json,
         lambda result: "\n".join(f"{entry['path']}: ok" for entry in result["files"]))
    return 3 if failed else 0


def cmd_merge(args: argparse.Namespace) -> int:
    opt: CompressOpt = args.compression
    with atomic_output(args.output, args.wdiffs) as out:
        writer = SortedDiffWriter(out, diff_uuid(args.wdiffs[-1]), opt.kind, opt.level, args.max_io_size)
        stats = write_sorted(merge_ios([iter_diff(path) for path in args.wdiffs]), writer)
    if args.output != "-":
        emit({"output": args.output, "inputs": len(args.wdiffs), **stats.as_dict()}, args.json)
    return 0


def cmd_redo(args: argparse.Namespace) -> int:
    target: BlockTarget
    with open_target(args) as target:
        stats = verify_then_apply(lambda: merged_ios(args.wdiffs), target)
    emit({"target": args.target, "discard": args.discard, **stats.as_dict()}, args.json)
    return 0


def cmd_full(args: argparse.Namespace) -> int:
    require((args.diff_dir is None) == (args.gid is None), "--diff-dir and --gid go together")
    require(not (args.diff_dir and args.wdiffs), "give diff files or --diff-dir, not both")
    if args.diff_dir is not None:
        args.wdiffs = DiffDirectory.scan(args.diff_dir).restore_paths(MetaState.parse(args.base_state), args.gid)
    base_fd = os.open(args.base, os.O_RDONLY) if args.base else None
    try:
        # Verify every diff completely first: no partial image from a corrupt chain.
        for path in args.wdiffs:
            for io in iter_diff(path):
                if io.kind == IoKind.NORMAL:
                    io.data()
        ios = merged_ios(args.wdiffs) if args.wdiffs else iter(())
        written = 0
        with atomic_output(args.output, [*args.wdiffs, *([args.base] if args.base else [])]) as out:
            for chunk in full_image(ios, args.size, base_fd):
                out.write(chunk)
                written += len(chunk)
    finally:
        if base_fd is not None:
            os.close(base_fd)
    if args.output != "-":
        emit({"output": args.output, "size_lb": written // LOGICAL_BLOCK_SIZE, "diffs": args.wdiffs}, args.json)
    return 0
