"""``walbops ensure vg`` and ``walbops ensure lv``: LVM volume groups and logical volumes.

What the ``walb_lvm_vg`` and ``walb_lvm_lv`` modules run (walbops/converge/lvm.py). Sizes
are passed through as text: lvol's forms (``64M``, ``+16M``, ``50%VG``) are parsed there.
"""

from __future__ import annotations

import argparse

from ._common import add_ensure_flags, report


def register_vg(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("vg", help="an LVM volume group on the given PVs (present|absent)")
    parser.add_argument("vg", help="the volume group")
    parser.add_argument("--pvs", nargs="+", action="extend", metavar="DEV",
                        help="exactly the PVs of the VG: missing ones are added, unused others removed")
    parser.add_argument("--state", choices=("present", "absent"), default="present")
    parser.add_argument("--force", action="store_true",
                        help="remove a VG that holds LVs; make a PV of a device that has a signature")
    parser.add_argument("--pesize", metavar="SIZE", help="extent size of a new VG (MiB unless suffixed: 128K, 32M)")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_vg)


def cmd_vg(args: argparse.Namespace) -> int:
    from ..converge.lvm import ensure_vg

    return report(ensure_vg(args.vg, args.pvs, args.state, args.force, args.pesize, args.check), args.json)


def register_lv(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("lv", help="an LVM logical volume, thin pool or thin volume (present|absent)")
    parser.add_argument("vg", help="the volume group")
    parser.add_argument("lv", nargs="?", help="the LV (omit it, with --thinpool, to manage the thin pool)")
    parser.add_argument("--size", help="MiB unless suffixed (64M, 1.5G), +N to grow, -N to shrink, or "
                                       "N%%VG, N%%PVS, N%%FREE; write --size=-N for a negative one")
    parser.add_argument("--state", choices=("present", "absent"), default="present")
    parser.add_argument("--force", action="store_true", help="allow shrinking and removing (data is lost)")
    parser.add_argument("--no-shrink", dest="shrink", action="store_false",
                        help="leave a larger LV as it is instead of shrinking it")
    parser.add_argument("--thinpool", metavar="NAME",
                        help="with LV: a thin volume in pool NAME; without: the thin pool NAME itself")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_lv)


def cmd_lv(args: argparse.Namespace) -> int:
    from ..converge.lvm import ensure_lv

    outcome = ensure_lv(args.vg, args.lv, args.size, args.state, args.force, args.shrink, args.thinpool, args.check)
    return report(outcome, args.json)
