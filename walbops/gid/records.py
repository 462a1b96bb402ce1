"""The records of the gid model: MetaSnap, MetaDiff, MetaState, MetaLsidGid (WalB ``src/meta.hpp``).

They are values: frozen, validated on construction, parsed from and printed to WalB's
text forms. The rules that relate them live in :mod:`.rules`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadField
from .timestamps import format_compact_time, format_pretty_time, parse_compact_time, parse_pretty_time

UINT64_MAX = 0xFFFF_FFFF_FFFF_FFFF  # gids, lsids and timestamps are u64 in WalB

_DIGITS = "[0-9]+"
_SNAP_RE = re.compile(rf"\|({_DIGITS})(?:,({_DIGITS}))?\|", re.ASCII)
SNAP_TEXT = r"\|[0-9]+(?:,[0-9]+)?\|"
_DIFF_RE = re.compile(rf"({SNAP_TEXT})-->({SNAP_TEXT}) ([M-])([C-]) (\S+) ({_DIGITS})", re.ASCII)
_STATE_RE = re.compile(rf"<({SNAP_TEXT})(?:-->({SNAP_TEXT}))?>(?:-([0-9]{{14}}))?", re.ASCII)


def _check_u64(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise BadField(f"{what} {value!r} is not a u64")



@dataclass(frozen=True, order=True, init=False)
class MetaSnap:
    """A snapshot ``|gid_b|`` (clean) or ``|gid_b,gid_e|`` (dirty).

    ``MetaSnap(5)`` is the clean ``|5|``.

    Raises:
        BadField: a gid is not a u64 or gid_b > gid_e.
    """

    gid_b: int
    gid_e: int

    def __init__(self, gid_b: int, gid_e: int | None = None) -> None:
        if gid_e is None:
            gid_e = gid_b
        _check_u64(gid_b, "snapshot gid_b")
        _check_u64(gid_e, "snapshot gid_e")
        if gid_b > gid_e:
            raise BadField(f"snapshot |{gid_b},{gid_e}| has gid_b > gid_e")
        object.__setattr__(self, "gid_b", gid_b)
        object.__setattr__(self, "gid_e", gid_e)

    @property
    def is_clean(self) -> bool:
        return self.gid_b == self.gid_e

    @property
    def is_dirty(self) -> bool:
        return self.gid_b != self.gid_e

    def __str__(self) -> str:
        if self.is_clean:
            return f"|{self.gid_b}|"
        return f"|{self.gid_b},{self.gid_e}|"

    @classmethod
    def parse(cls, text: str) -> MetaSnap:
        """Parse ``|B|`` or ``|B,E|``.

        Raises:
            BadField: malformed text or gids.
        """
        match = _SNAP_RE.fullmatch(text)
        if match is None:
            raise BadField(f"bad snapshot {text!r}")
        gid_b = int(match[1])
        return cls(gid_b, int(match[2]) if match[2] is not None else gid_b)


def _snap(value: MetaSnap | int) -> MetaSnap:
    return value if isinstance(value, MetaSnap) else MetaSnap(value)


@dataclass(frozen=True, init=False)
class MetaDiff:
    """A diff ``snap_b-->snap_e`` with its flags, timestamp and file size.

    Ints are accepted for clean snapshots: ``MetaDiff(0, 1)`` is ``|0|-->|1|``.
    ``timestamp`` is the unix time of the snapshot after applying the diff;
    ``data_size`` is the wdiff file size in bytes (WalB takes it from stat()).

    Equality compares every field. WalB identifies a diff by its two snapshots only;
    :attr:`key` gives that identity.

    Raises:
        BadField: the progress constraint is broken or a field is out of range.
    """

    snap_b: MetaSnap
    snap_e: MetaSnap
    is_mergeable: bool
    is_comp_diff: bool
    timestamp: int
    data_size: int

    def __init__(self, snap_b: MetaSnap | int, snap_e: MetaSnap | int, is_mergeable: bool = False,
                 is_comp_diff: bool = False, timestamp: int = 0, data_size: int = 0) -> None:
        snap_b = _snap(snap_b)
        snap_e = _snap(snap_e)
        if snap_b.gid_b >= snap_e.gid_b or snap_b.gid_e > snap_e.gid_e:
            raise BadField(f"diff {snap_b}-->{snap_e} breaks the progress constraint")
        _check_u64(timestamp, "diff timestamp")
        _check_u64(data_size, "diff data size")
        object.__setattr__(self, "snap_b", snap_b)
        object.__setattr__(self, "snap_e", snap_e)
        object.__setattr__(self, "is_mergeable", bool(is_mergeable))
        object.__setattr__(self, "is_comp_diff", bool(is_comp_diff))
        object.__setattr__(self, "timestamp", timestamp)
        object.__setattr__(self, "data_size", data_size)

    @property
    def key(self) -> tuple[MetaSnap, MetaSnap]:
        """The diff's identity in WalB: its two snapshots."""
        return (self.snap_b, self.snap_e)

    @property
    def is_clean(self) -> bool:
        return self.snap_b.is_clean and self.snap_e.is_clean

    @property
    def is_dirty(self) -> bool:
        return not self.is_clean

    @property
    def flags_str(self) -> str:
        return ("M" if self.is_mergeable else "-") + ("C" if self.is_comp_diff else "-")

    def range_str(self) -> str:
        """``|B|-->|E|``, WalB's MetaDiff::str()."""
        return f"{self.snap_b}-->{self.snap_e}"

    def __str__(self) -> str:
        """The ``get diff`` line: ``|B|-->|E| MC 2017-05-24T04:49:40 4128``."""
        return f"{self.range_str()} {self.flags_str} {format_pretty_time(self.timestamp)} {self.data_size}"

    @classmethod
    def parse(cls, text: str) -> MetaDiff:
        """Parse the :meth:`__str__` form.

        Raises:
            BadField: malformed text or fields.
        """
        match = _DIFF_RE.fullmatch(text)
        if match is None:
            raise BadField(f"bad diff {text!r}")
        return cls(MetaSnap.parse(match[1]), MetaSnap.parse(match[2]), is_mergeable=match[3] == "M",
                   is_comp_diff=match[4] == "C", timestamp=parse_pretty_time(match[5]), data_size=int(match[6]))


@dataclass(frozen=True)
class MetaState:
    """The archive's base state ``<snap_b>``, or ``<snap_b-->snap_e>`` while applying.

    Raises:
        BadField: applying without progress (snap_b.gid_b >= snap_e.gid_b) or a bad timestamp.
    """

    snap_b: MetaSnap
    snap_e: MetaSnap | None = None  # set iff applying
    timestamp: int = 0

    def __post_init__(self) -> None:
        if self.snap_e is not None and self.snap_b.gid_b >= self.snap_e.gid_b:
            raise BadField(f"applying state <{self.snap_b}-->{self.snap_e}> breaks the progress constraint")
        _check_u64(self.timestamp, "state timestamp")

    @property
    def is_applying(self) -> bool:
        return self.snap_e is not None

    def to_str(self, with_timestamp: bool = True) -> str:
        """``<|10|>-20180101123456``; without the timestamp, WalB's MetaState::str()."""
        text = f"<{self.snap_b}>" if self.snap_e is None else f"<{self.snap_b}-->{self.snap_e}>"
        if with_timestamp:
            text += "-" + format_compact_time(self.timestamp)
        return text

    def __str__(self) -> str:
        return self.to_str()

    @classmethod
    def parse(cls, text: str, default_timestamp: int = 0) -> MetaState:
        """Parse ``<S>``, ``<S-->S>``, optionally followed by ``-YYYYMMDDhhmmss``.

        Args:
            text: the state string.
            default_timestamp: used when the text has no timestamp (WalB uses the current
                time there; this module does not read clocks).

        Raises:
            BadField: malformed text or fields.
        """
        match = _STATE_RE.fullmatch(text)
        if match is None:
            raise BadField(f"bad base state {text!r}")
        snap_e = MetaSnap.parse(match[2]) if match[2] is not None else None
        timestamp = parse_compact_time(match[3]) if match[3] is not None else default_timestamp
        return cls(MetaSnap.parse(match[1]), snap_e, timestamp)


@dataclass(frozen=True)
class MetaLsidGid:
    """The storage's record that snapshot ``gid`` was cut at log position ``lsid``.

    Raises:
        BadField: a field is not a u64.
    """

    lsid: int
    gid: int
    is_mergeable: bool = False
    timestamp: int = 0

    def __post_init__(self) -> None:
        _check_u64(self.lsid, "lsid")
        _check_u64(self.gid, "gid")
        _check_u64(self.timestamp, "timestamp")
