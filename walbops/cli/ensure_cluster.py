"""``walbops ensure volume|backup|snapshot|restored|resized|replicated|replaced`` and ``walbops info``:
through a layout's agents."""

from __future__ import annotations

import argparse

from ..converge.cluster import DEFAULT_LAYOUT, open_controller, server_of
from ._common import add_ensure_flags, parse_size, report


def add_cluster_flags(parser: argparse.ArgumentParser, server_help: str) -> None:
    parser.add_argument("--layout", default=DEFAULT_LAYOUT, help=f"layout file (default {DEFAULT_LAYOUT})")
    parser.add_argument("--server", required=True, help=server_help)
    parser.add_argument("--timeout", type=float, default=3600.0, help="longest wait for the operation [s]")


def _archive_target(text: str) -> object:
    """NAME=HOST:PORT[:TYPE/LEVEL/CPUS] (the compression's colons written as slashes)."""
    from ..agents.proxy_volume import ArchiveInfo

    name, _, rest = text.partition("=")
    fields = rest.split(":")
    if not name or len(fields) not in (2, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=HOST:PORT[:TYPE/LEVEL/CPUS]")
    try:
        port = int(fields[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number") from None
    if len(fields) == 3:
        return ArchiveInfo(name, fields[0], port, fields[2].replace("/", ":"))
    return ArchiveInfo(name, fields[0], port)


def _volume(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("volume", help="a volume's state on one agent")
    parser.add_argument("vol")
    add_cluster_flags(parser, "the agent (its name in the layout)")
    parser.add_argument("--state", choices=("initialized", "started", "stopped", "cleared"), default="started")
    parser.add_argument("--start-as", choices=("target", "standby"), help="storage: how to start")
    parser.add_argument("--wdev", help="storage: the walb device's name (to initialise)")
    parser.add_argument("--archive", dest="archives", action="append", type=_archive_target,
                        help="proxy: NAME=HOST:PORT[:TYPE/LEVEL/CPUS], repeated: exactly these archives")
    parser.add_argument("--no-archives", action="store_true", help="proxy: no archive at all")
    parser.add_argument("--stop-mode", choices=("graceful", "force", "empty"), default="graceful")
    parser.add_argument("--force", action="store_true", help="clear even where data would be dropped")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_volume)


def cmd_volume(args: argparse.Namespace) -> int:
    from ..converge.volume import ensure_volume

    controller = open_controller(args.layout)
    archives = [] if args.no_archives else args.archives
    outcome = ensure_volume(controller, server_of(controller, args.server), args.vol, args.state,
                            start_as=args.start_as, wdev=args.wdev, archives=archives, force=args.force,
                            stop_mode=args.stop_mode, check=args.check)
    return report(outcome, args.json)


def _backup(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("backup", help="a backup of a volume on the primary archive (full or hash)")
    parser.add_argument("vol")
    add_cluster_flags(parser, "the storage (its name in the layout)")
    parser.add_argument("--archive", help="the archive the storage sends to (default: the layout's first)")
    parser.add_argument("--bulk-size", type=parse_size, help="bytes per bulk (default: the storage's)")
    parser.add_argument("--method", choices=("auto", "full", "hash"), default="auto",
                        help="auto (default): hash when the archive holds the volume, else full")
    parser.add_argument("--force", action="store_true", help="replace an existing backup with a new full one")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    from ..converge.backup import ensure_backup

    controller = open_controller(args.layout)
    archive = server_of(controller, args.archive, "archive") if args.archive else None
    outcome = ensure_backup(controller, server_of(controller, args.server, "storage"), args.vol, archive=archive,
                            method=args.method, force=args.force, timeout=args.timeout, bulk_size=args.bulk_size,
                            check=args.check)
    return report(outcome, args.json)


def _replicated(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("replicated", help="a volume's copy on a second archive (once, synchronizing, stopped)")
    parser.add_argument("vol")
    parser.add_argument("--layout", default=DEFAULT_LAYOUT, help=f"layout file (default {DEFAULT_LAYOUT})")
    parser.add_argument("--server", help="the source archive (default: the layout's first)")
    parser.add_argument("--to", required=True, help="the destination archive (its name in the layout)")
    parser.add_argument("--mode", choices=("once", "synchronizing", "stopped"), default="once",
                        help="once (default): up to the source's newest snapshot (or --gid); synchronizing: the "
                             "proxies send every diff there too; stopped: they do not")
    parser.add_argument("--gid", type=int, help="the snapshot the destination must be able to restore")
    parser.add_argument("--resync", action="store_true", help="resync a destination of another lineage")
    parser.add_argument("--timeout", type=float, default=3600.0, help="longest wait for the operation [s]")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_replicated)


def cmd_replicated(args: argparse.Namespace) -> int:
    from ..converge.replication import ensure_replicated

    controller = open_controller(args.layout)
    source = server_of(controller, args.server, "archive") if args.server else controller.layout.primary_archive
    outcome = ensure_replicated(controller, source, args.vol, server_of(controller, args.to, "archive"),
                                mode=args.mode, gid=args.gid, do_resync=args.resync, timeout=args.timeout,
                                check=args.check)
    return report(outcome, args.json)


def _replaced(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("replaced", help="a host replaced by another for a volume (WalB's r1-r4)")
    parser.add_argument("kind", choices=("storage", "proxy", "archive"))
    parser.add_argument("vol")
    parser.add_argument("--layout", default=DEFAULT_LAYOUT, help=f"layout file (default {DEFAULT_LAYOUT})")
    parser.add_argument("--old", required=True, help="the host's agent that gives the volume up")
    parser.add_argument("--new", required=True, help="the agent that takes it over")
    parser.add_argument("--wdev", help="storage: the new host's walb device holding the volume's data")
    parser.add_argument("--source", help="archive: the primary, when --old is a secondary (r4)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="longest wait for the operation [s]")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_replaced)


def cmd_replaced(args: argparse.Namespace) -> int:
    from ..converge.replication import ensure_replaced

    controller = open_controller(args.layout)
    source = server_of(controller, args.source) if args.source else None
    outcome = ensure_replaced(controller, args.kind, args.vol, server_of(controller, args.old),
                              server_of(controller, args.new), wdev=args.wdev, source=source, timeout=args.timeout,
                              check=args.check)
    return report(outcome, args.json)


def _snapshot(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("snapshot", help="take a snapshot (always a change)")
    parser.add_argument("vol")
    add_cluster_flags(parser, "the storage (its name in the layout)")
    parser.add_argument("--no-wait", action="store_true", help="do not wait until it is restorable")
    parser.add_argument("--archive", dest="archives", action="append",
                        help="wait on this archive (repeatable; default: the primary)")
    parser.add_argument("--digest", action="store_true",
                        help="freeze the device, snapshot, sha256 the device, melt")
    parser.add_argument("--bhash", action="store_true",
                        help="the same with the bhash of the device (what an archive's bhash at the gid must equal)")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_snapshot)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from ..converge.backup import take_snapshot

    controller = open_controller(args.layout)
    archives = [server_of(controller, name, "archive") for name in args.archives or []]
    outcome = take_snapshot(controller, server_of(controller, args.server, "storage"), args.vol,
                            wait=not args.no_wait, archives=archives or None, digest=args.digest,
                            block_hash=args.bhash, timeout=args.timeout, check=args.check)
    return report(outcome, args.json)


def _resized(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("resized", help="a volume grown on an archive or a storage (and its filesystem)")
    parser.add_argument("vol")
    add_cluster_flags(parser, "the archive or storage (its name in the layout)")
    parser.add_argument("--size", type=parse_size, required=True, help="the size it must have at least")
    parser.add_argument("--zeroclear", action="store_true", help="archive: zero the new range of a thick LV")
    parser.add_argument("--grow-fs", choices=("no", "online", "offline"), default="no",
                        help="storage: grow the filesystem mounted on it too, mounted (online) or unmounted for the "
                             "time it takes (offline, ext only)")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_resized)


def cmd_resized(args: argparse.Namespace) -> int:
    from ..converge.resize import ensure_resized

    controller = open_controller(args.layout)
    outcome = ensure_resized(controller, server_of(controller, args.server), args.vol, args.size,
                             zeroclear=args.zeroclear, grow_fs=args.grow_fs, check=args.check)
    return report(outcome, args.json)


def _restored(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("restored", help="a restored snapshot on an archive (present|absent)")
    parser.add_argument("vol")
    parser.add_argument("gid", help="a gid, latest, or (absent) all")
    add_cluster_flags(parser, "the archive (its name in the layout)")
    parser.add_argument("--state", choices=("present", "absent"), default="present")
    parser.add_argument("--include-implicit", action="store_true", help="latest may be an implicit snapshot")
    parser.add_argument("--digest", action="store_true", help="sha256 of the restored image")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_restored)


def cmd_restored(args: argparse.Namespace) -> int:
    from ..converge.restore import ensure_restored

    controller = open_controller(args.layout)
    outcome = ensure_restored(controller, server_of(controller, args.server, "archive"), args.vol, args.gid,
                              args.state, include_implicit=args.include_implicit, digest=args.digest,
                              timeout=args.timeout, check=args.check)
    return report(outcome, args.json)


KINDS = (_volume, _backup, _snapshot, _restored, _resized, _replicated, _replaced)
