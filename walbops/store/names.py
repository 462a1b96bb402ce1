"""Names in an archive store: volume ids, gids, and WalB's image names built from them.

WalB names the archive's LVs ``wb_<vol>`` (base), ``wr_<vol>_<gid>`` (restored
snapshot) and ``wr_<vol>_<gid>_tmp`` (restore in progress) (walb-tools
``src/archive_vol_info.cpp``). A volume id is 1..64 characters of ``[0-9A-Za-z-]``,
so it never holds ``_`` and a name splits back into its volume and gid unambiguously.
"""

from __future__ import annotations

import re

from ..errors import UsageError

VOLUME_ID_RE = re.compile(r"[0-9A-Za-z-]{1,64}")  # walb-tools src/command_param_parser.cpp
UINT64_MAX = (1 << 64) - 1

BASE_PREFIX = "wb_"
RESTORED_PREFIX = "wr_"
TMP_SUFFIX = "_tmp"

_RESTORED_RE = re.compile(r"wr_(?P<vol>[0-9A-Za-z-]{1,64})_(?P<gid>[0-9]{1,20})(?P<tmp>_tmp)?")


def check_volume_id(vol: str) -> str:
    """Return ``vol`` if it is a WalB volume id.

    Raises:
        UsageError: it is not 1..64 characters of ``[0-9A-Za-z-]``.
    """
    if not isinstance(vol, str) or VOLUME_ID_RE.fullmatch(vol) is None:
        raise UsageError(f"volume id {vol!r} is not 1..64 characters of [0-9A-Za-z-]")
    return vol


def check_gid(gid: int) -> int:
    """Return ``gid`` if it is a u64.

    Raises:
        UsageError: it is not an integer in [0, 2^64).
    """
    if isinstance(gid, bool) or not isinstance(gid, int) or not 0 <= gid <= UINT64_MAX:
        raise UsageError(f"gid {gid!r} is not an integer in [0, 2^64)")
    return gid


def check_size_lb(size_lb: int) -> int:
    """Return ``size_lb`` if it is a positive number of logical blocks.

    Raises:
        UsageError: it is not a positive integer.
    """
    if isinstance(size_lb, bool) or not isinstance(size_lb, int) or size_lb <= 0:
        raise UsageError(f"size {size_lb!r} LB is not a positive integer")
    return size_lb


def base_name(vol: str) -> str:
    """``wb_<vol>``: the base image."""
    return BASE_PREFIX + check_volume_id(vol)


def restored_name(vol: str, gid: int, tmp: bool = False) -> str:
    """``wr_<vol>_<gid>``, or ``wr_<vol>_<gid>_tmp`` while the restore is in progress."""
    name = f"{RESTORED_PREFIX}{check_volume_id(vol)}_{check_gid(gid)}"
    return name + TMP_SUFFIX if tmp else name


def parse_restored_name(name: str) -> tuple[str, int, bool] | None:
    """``(vol, gid, is_tmp)`` of a restored image name, or None if ``name`` is not one."""
    match = _RESTORED_RE.fullmatch(name)
    if match is None or int(match["gid"]) > UINT64_MAX:
        return None
    return match["vol"], int(match["gid"]), match["tmp"] is not None
