"""Diff file names: WalB names a wdiff after its MetaDiff (``src/meta.cpp: createDiffFileName``)."""

from __future__ import annotations

import re

from ..errors import BadField
from .records import MetaDiff, MetaSnap
from .timestamps import format_compact_time, parse_compact_time

DIFF_FILE_SUFFIX = ".wdiff"

_DIGITS = "[0-9]+"
_FILE_NAME_RE = re.compile(
    rf"([0-9]{{14}})-([M-])([C-])-({_DIGITS})-({_DIGITS})(?:-({_DIGITS})-({_DIGITS}))?{re.escape(DIFF_FILE_SUFFIX)}",
    re.ASCII)


def diff_file_name(diff: MetaDiff) -> str:
    """The wdiff file name, e.g. ``20170524050210-M-2-7.wdiff``.

    ``YYYYMMDDhhmmss`` (UTC) ``-`` M/- C/- then the gids in decimal: snap_b.gid_b and
    snap_e.gid_b for a clean diff, all four for a dirty one. data_size is not kept.

    Raises:
        BadField: the timestamp cannot be printed.
    """
    if diff.is_clean:
        gids: tuple[int, ...] = (diff.snap_b.gid_b, diff.snap_e.gid_b)
    else:
        gids = (diff.snap_b.gid_b, diff.snap_b.gid_e, diff.snap_e.gid_b, diff.snap_e.gid_e)
    return (format_compact_time(diff.timestamp) + "-" + diff.flags_str + "".join(f"-{gid}" for gid in gids)
            + DIFF_FILE_SUFFIX)


def parse_diff_file_name(name: str, data_size: int = 0) -> MetaDiff:
    """Parse a wdiff file name made by :func:`diff_file_name`.

    Only the canonical name of a diff is accepted (no leading zeros, no four-gid form
    for a clean diff): the archive later rebuilds names from the parsed diff to rename
    and delete files, so a name that does not round-trip would point at nothing.

    Args:
        name: the file name, without a directory.
        data_size: the file size to record in the diff.

    Raises:
        BadField: the name is not a canonical wdiff name; the message quotes it.
    """
    match = _FILE_NAME_RE.fullmatch(name)
    if match is None:
        raise BadField(f"{name!r} is not a wdiff file name (YYYYMMDDhhmmss-MC-B-E.wdiff)")
    try:
        timestamp = parse_compact_time(match[1])
        if match[6] is None:
            snap_b, snap_e = MetaSnap(int(match[4])), MetaSnap(int(match[5]))
        else:
            snap_b, snap_e = MetaSnap(int(match[4]), int(match[5])), MetaSnap(int(match[6]), int(match[7]))
        diff = MetaDiff(snap_b, snap_e, is_mergeable=match[2] == "M", is_comp_diff=match[3] == "C",
                        timestamp=timestamp, data_size=data_size)
    except BadField as exc:
        raise BadField(f"bad wdiff file name {name!r}: {exc.message}") from exc
    if diff_file_name(diff) != name:
        raise BadField(f"wdiff file name {name!r} is not canonical; expected {diff_file_name(diff)!r}")
    return diff
