"""The gid model: snapshots, diffs, the archive's base state, and how diffs chain.

Vocabulary (WalB ``src/meta.hpp``; walb.md §5.5-5.7):

gid
    generation id, a u64 that numbers the points in time at which the storage cut a
    snapshot. Gids grow but need not be consecutive (§5.7 leaves gaps).
MetaSnap ``|B|`` or ``|B,E|``
    an image whose blocks are all at least as new as gid B and none newer than gid E.
    Clean iff B == E (a consistent image); dirty otherwise (a full or hash backup still
    being caught up).
MetaDiff ``snapB-->snapE``
    a wdiff turning an image at snapB into one at snapE. ``is_mergeable`` says that the
    snapshot at its *start* is implicit and may vanish when the diff is merged with the
    one before it; ``is_comp_diff`` marks a "compared" diff from hash replication, which
    applies only to an image with exactly snapB.gid_b and never merges.
MetaState ``<snapB>`` or ``<snapB-->snapE>``
    the content of the archive's ``base`` file; the second form is "applying": diffs
    were being written onto the base image and must be finished with the same diffs.
MetaLsidGid
    the storage's record of which lsid a gid was cut at.

Rules (WalB's exact ones; B and E below are gid_b of snapB and snapE):

* progress: a diff has snapB.gid_b < snapE.gid_b and snapB.gid_e <= snapE.gid_e.
* relation of diff d to snapshot s: a comp diff applies iff d.B == s.gid_b; otherwise
  d is too new if d.B > s.gid_b, too old if d.E <= s.gid_b, and applicable in between.
* apply: a clean diff gives ``|E, max(E, s.gid_e)|``, a dirty one gives its snapE.
* merge d0 +++ d1 needs d1 mergeable, neither a comp diff, d0.B <= d1.B <= d0.E < d1.E;
  the result keeps d0's start and is_mergeable and takes d1's timestamp.
* chains: from a snapshot, repeatedly take the applicable diff with the largest
  (E, B) and apply it (:class:`DiffChain`).

Everything here is pure: timestamps are unix seconds passed in by the caller, and names
and strings are parsed from and formatted to ``str`` without touching files.
"""

from __future__ import annotations

import bisect
import calendar
import enum
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ..errors import BadField, OperationError

UINT64_MAX = 0xFFFF_FFFF_FFFF_FFFF  # gids, lsids and timestamps are u64 in WalB

# Preambles of the four records on the wire (cybozu serializer, walb.md §5.5); the
# serializer module owns the bytes, they are defined here next to the records.
META_SNAP_PREAMBLE = 0x0311
META_DIFF_PREAMBLE = 0x0312
META_STATE_PREAMBLE = 0x0313
META_LSIDGID_PREAMBLE = 0x0314

DIFF_FILE_SUFFIX = ".wdiff"
# [s] 9999-12-31T23:59:59Z: the last time a four-digit year can print.
MAX_PRINTABLE_TIMESTAMP = 253402300799
# WalB's util::timeToPrintable shows timestamp 0 (never set) as this.
NO_TIMESTAMP_TEXT = "---"

_DIGITS = "[0-9]+"
_SNAP_RE = re.compile(rf"\|({_DIGITS})(?:,({_DIGITS}))?\|", re.ASCII)
_SNAP_TEXT = r"\|[0-9]+(?:,[0-9]+)?\|"
_DIFF_RE = re.compile(rf"({_SNAP_TEXT})-->({_SNAP_TEXT}) ([M-])([C-]) (\S+) ({_DIGITS})", re.ASCII)
_STATE_RE = re.compile(rf"<({_SNAP_TEXT})(?:-->({_SNAP_TEXT}))?>(?:-([0-9]{{14}}))?", re.ASCII)
_FILE_NAME_RE = re.compile(
    rf"([0-9]{{14}})-([M-])([C-])-({_DIGITS})-({_DIGITS})(?:-({_DIGITS})-({_DIGITS}))?{re.escape(DIFF_FILE_SUFFIX)}",
    re.ASCII)
_COMPACT_TIME_FORMAT = "%Y%m%d%H%M%S"  # cybozu::unixTimeToStr, used in names and base files
_PRETTY_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # cybozu::unixTimeToPrettyStr, used in `get` output


def _check_u64(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise BadField(f"{what} {value!r} is not a u64")


def _format_time(timestamp: int, fmt: str) -> str:
    if timestamp > MAX_PRINTABLE_TIMESTAMP:
        raise BadField(f"timestamp {timestamp} is past year 9999 and cannot be printed")
    return datetime.fromtimestamp(timestamp, UTC).strftime(fmt)


def _parse_time(text: str, fmt: str) -> int:
    try:
        when = datetime.strptime(text, fmt)
    except ValueError:
        raise BadField(f"bad timestamp {text!r}") from None
    # strptime tolerates unpadded fields; WalB's forms are fixed-width, so insist on that.
    if when.strftime(fmt) != text:
        raise BadField(f"bad timestamp {text!r}")
    timestamp = calendar.timegm(when.timetuple())
    if timestamp < 0:
        raise BadField(f"timestamp {text!r} is before 1970")
    return timestamp


def format_compact_time(timestamp: int) -> str:
    """Format unix time as ``YYYYMMDDhhmmss`` in UTC (diff file names, base state)."""
    return _format_time(timestamp, _COMPACT_TIME_FORMAT)


def parse_compact_time(text: str) -> int:
    """Parse ``YYYYMMDDhhmmss`` (UTC) into unix time.

    Raises:
        BadField: not 14 digits forming a valid time at or after 1970.
    """
    return _parse_time(text, _COMPACT_TIME_FORMAT)


def format_pretty_time(timestamp: int) -> str:
    """Format unix time as ``YYYY-MM-DDThh:mm:ss`` in UTC, or ``---`` for 0, as WalB prints it."""
    if timestamp == 0:
        return NO_TIMESTAMP_TEXT
    return _format_time(timestamp, _PRETTY_TIME_FORMAT)


def parse_pretty_time(text: str) -> int:
    """Parse the output of :func:`format_pretty_time`.

    Raises:
        BadField: neither ``---`` nor ``YYYY-MM-DDThh:mm:ss``.
    """
    if text == NO_TIMESTAMP_TEXT:
        return 0
    return _parse_time(text, _PRETTY_TIME_FORMAT)


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


class Relation(enum.Enum):
    """How a diff relates to a snapshot (the values are WalB's getRelationStr)."""

    APPLICABLE = "applicable-diff"
    TOO_OLD = "too-old-diff"
    TOO_NEW = "too-new-diff"
    NOT_APPLICABLE = "not-applicable-diff"  # only comp diffs: they need an exact gid_b


def get_relation(snap: MetaSnap, diff: MetaDiff) -> Relation:
    """Classify ``diff`` against ``snap``; only gid_b of either snapshot matters."""
    if diff.is_comp_diff:
        return Relation.APPLICABLE if diff.snap_b.gid_b == snap.gid_b else Relation.NOT_APPLICABLE
    if diff.snap_b.gid_b > snap.gid_b:
        return Relation.TOO_NEW
    if diff.snap_e.gid_b <= snap.gid_b:
        return Relation.TOO_OLD
    return Relation.APPLICABLE


def _apply_one(snap: MetaSnap, diff: MetaDiff) -> MetaSnap:
    relation = get_relation(snap, diff)
    if relation is not Relation.APPLICABLE:
        raise OperationError(f"cannot apply {diff.range_str()} to {snap}: {relation.value}")
    if diff.is_clean:
        # A clean diff brings every block to E, but blocks newer than E in a dirty
        # image stay, so the result is only as clean as the image was.
        return MetaSnap(diff.snap_e.gid_b, max(diff.snap_e.gid_b, snap.gid_e))
    return diff.snap_e


def apply(snap: MetaSnap, *diffs: MetaDiff) -> MetaSnap:
    """Apply ``diffs`` to ``snap`` in order.

    Raises:
        OperationError: a diff is not applicable to the snapshot reached before it.
    """
    for diff in diffs:
        snap = _apply_one(snap, diff)
    return snap


def _applied_or_none(snap: MetaSnap, diffs: Iterable[MetaDiff]) -> MetaSnap | None:
    for diff in diffs:
        if get_relation(snap, diff) is not Relation.APPLICABLE:
            return None
        snap = _apply_one(snap, diff)
    return snap


def can_apply(base: MetaSnap | MetaState, *diffs: MetaDiff) -> bool:
    """True if ``diffs`` apply in order to a snapshot or a base state.

    An applying state <B-->E> also needs the diffs to reach at least E.gid_b: the base
    image already holds part of the data up to E, so stopping short would mix times.
    """
    snap = base.snap_b if isinstance(base, MetaState) else base
    reached = _applied_or_none(snap, diffs)
    if reached is None:
        return False
    if isinstance(base, MetaState) and base.snap_e is not None:
        return base.snap_e.gid_b <= reached.gid_b
    return True


def begin_applying(state: MetaState, *diffs: MetaDiff) -> MetaState:
    """The state to record before writing ``diffs`` onto the base image: ``<B-->applied>``.

    Its timestamp is the last diff's. No diffs leave the state as it is.

    Raises:
        OperationError: the diffs cannot be applied to the state.
    """
    if not can_apply(state, *diffs):
        raise OperationError(f"cannot apply {_ranges(diffs)} to base {state.to_str(False)}")
    if not diffs:
        return state
    return MetaState(state.snap_b, apply(state.snap_b, *diffs), diffs[-1].timestamp)


def end_applying(state: MetaState, *diffs: MetaDiff) -> MetaState:
    """The state to record after writing ``diffs``: ``<applied>``, with the last diff's timestamp.

    Raises:
        OperationError: the diffs cannot be applied to the state (for an applying state:
            they do not reach its snap_e).
    """
    if not can_apply(state, *diffs):
        raise OperationError(f"cannot apply {_ranges(diffs)} to base {state.to_str(False)}")
    if not diffs:
        return state
    return MetaState(apply(state.snap_b, *diffs), None, diffs[-1].timestamp)


def _can_merge_two(d0: MetaDiff, d1: MetaDiff) -> bool:
    if not d1.is_mergeable or d0.is_comp_diff or d1.is_comp_diff:
        return False
    return d0.snap_b.gid_b <= d1.snap_b.gid_b <= d0.snap_e.gid_b < d1.snap_e.gid_b


def _merge_two(d0: MetaDiff, d1: MetaDiff) -> MetaDiff:
    if d1.is_clean:
        snap_e = MetaSnap(d1.snap_e.gid_b, max(d1.snap_e.gid_b, d0.snap_e.gid_e))
    else:
        snap_e = d1.snap_e
    # data_size stays 0: the merged file does not exist yet and its size is unknown.
    return MetaDiff(d0.snap_b, snap_e, is_mergeable=d0.is_mergeable, timestamp=d1.timestamp)


def can_merge(*diffs: MetaDiff) -> bool:
    """True if ``diffs`` (at least one) merge left to right into one diff."""
    if not diffs:
        return False
    merged = diffs[0]
    for diff in diffs[1:]:
        if not _can_merge_two(merged, diff):
            return False
        merged = _merge_two(merged, diff)
    return True


def merge(*diffs: MetaDiff) -> MetaDiff:
    """Merge ``diffs`` left to right: ``merge(d0, d1)`` is WalB's d0 +++ d1.

    The result starts at the first diff's snap_b with its is_mergeable and ends with the
    last diff's timestamp; ``merge(d)`` is ``d``.

    Raises:
        OperationError: no diffs, or a pair that cannot merge.
    """
    if not diffs:
        raise OperationError("merge of no diffs")
    merged = diffs[0]
    for diff in diffs[1:]:
        if not _can_merge_two(merged, diff):
            raise OperationError(f"cannot merge {merged.range_str()} with {diff.range_str()}")
        merged = _merge_two(merged, diff)
    return merged


def contains(container: MetaDiff, diff: MetaDiff) -> bool:
    """True if ``container`` covers ``diff``'s gid range, so ``diff`` may be deleted."""
    return container.snap_b.gid_b <= diff.snap_b.gid_b and diff.snap_e.gid_b <= container.snap_e.gid_b


def get_max_progress_diff(candidates: Iterable[MetaDiff]) -> MetaDiff:
    """The candidate reaching furthest: max snap_e.gid_b, then max snap_b.gid_b; first wins ties.

    Raises:
        OperationError: no candidates.
    """
    best: MetaDiff | None = None
    for diff in candidates:
        if best is None or (diff.snap_e.gid_b, diff.snap_b.gid_b) > (best.snap_e.gid_b, best.snap_b.gid_b):
            best = diff
    if best is None:
        raise OperationError("no candidate diffs")
    return best


def _ranges(diffs: Iterable[MetaDiff]) -> str:
    return "[" + ", ".join(d.range_str() for d in diffs) + "]"


# ---------------------------------------------------------------------------------------
# Diff file names


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


# ---------------------------------------------------------------------------------------
# Sets of diffs (WalB's MetaDiffManager)


@dataclass(frozen=True)
class Restorable:
    """A clean snapshot that can be restored from the base plus diffs.

    ``is_explicit`` is false for implicit snapshots, which a merge may remove.
    """

    gid: int
    timestamp: int
    is_explicit: bool


class DiffChain:
    """The set of diffs an archive or proxy holds for one volume (WalB's MetaDiffManager).

    Diffs are identified by :attr:`MetaDiff.key`; a second diff with the same key is
    refused. Iteration is by snap_b.gid_b, then insertion order. Not thread-safe.

    "The chain" from a snapshot is :meth:`applicable_diffs`: the greedy walk that always
    takes the applicable diff reaching furthest. Anything off the chain from the base is
    garbage (:meth:`gc`).
    """

    def __init__(self, diffs: Iterable[MetaDiff] = ()) -> None:
        self._by_key: dict[tuple[MetaSnap, MetaSnap], MetaDiff] = {}
        self._by_start: dict[int, list[MetaDiff]] = {}
        self._starts: list[int] = []  # sorted distinct snap_b.gid_b
        # Upper bound of snap_e.gid_b - snap_b.gid_b over the diffs. A diff covering gid g
        # starts in (g - span, g], so lookups scan only that window, as WalB's
        # GidRangeManager does with an interval map.
        self._max_span = 0
        for diff in diffs:
            self.add(diff)

    # -- the set ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[MetaDiff]:
        for start in self._starts:
            yield from self._by_start[start]

    def __contains__(self, diff: object) -> bool:
        return isinstance(diff, MetaDiff) and diff.key in self._by_key

    def __repr__(self) -> str:
        return f"DiffChain({_ranges(self)})"

    def get(self, diff: MetaDiff) -> MetaDiff | None:
        """The stored diff with ``diff``'s key (its flags and sizes may differ), if any."""
        return self._by_key.get(diff.key)

    def add(self, diff: MetaDiff) -> None:
        """Add a diff.

        Raises:
            OperationError: a diff with the same snapshots is already there.
        """
        if diff.key in self._by_key:
            raise OperationError(f"diff {diff.range_str()} already exists")
        self._by_key[diff.key] = diff
        start = diff.snap_b.gid_b
        bucket = self._by_start.get(start)
        if bucket is None:
            bucket = self._by_start[start] = []
            bisect.insort(self._starts, start)
        bucket.append(diff)
        self._max_span = max(self._max_span, diff.snap_e.gid_b - start)

    def remove(self, diff: MetaDiff) -> None:
        """Remove the diff with ``diff``'s key.

        Raises:
            OperationError: there is none.
        """
        stored = self._by_key.pop(diff.key, None)
        if stored is None:
            raise OperationError(f"diff {diff.range_str()} not found")
        start = stored.snap_b.gid_b
        bucket = self._by_start[start]
        bucket.remove(stored)
        if not bucket:
            del self._by_start[start]
            del self._starts[bisect.bisect_left(self._starts, start)]
        if not self._by_key:
            self._max_span = 0

    def discard(self, diff: MetaDiff) -> None:
        """Remove the diff with ``diff``'s key if there is one."""
        if diff.key in self._by_key:
            self.remove(diff)

    def in_range(self, gid_b: int = 0, gid_e: int = UINT64_MAX) -> list[MetaDiff]:
        """Diffs with ``gid_b <= snap_b.gid_b < gid_e`` (``get diff vol gid0 gid1``).

        Raises:
            OperationError: gid_b >= gid_e.
        """
        if gid_b >= gid_e:
            raise OperationError(f"empty gid range [{gid_b}, {gid_e})")
        lo = bisect.bisect_left(self._starts, gid_b)
        hi = bisect.bisect_left(self._starts, gid_e)
        return [diff for start in self._starts[lo:hi] for diff in self._by_start[start]]

    def _covering(self, gid: int) -> Iterator[MetaDiff]:
        """Diffs that may cover gid (snap_b.gid_b <= gid < snap_e.gid_b), and a few more."""
        lo = bisect.bisect_left(self._starts, gid - self._max_span + 1)
        hi = bisect.bisect_right(self._starts, gid)
        for start in self._starts[lo:hi]:
            yield from self._by_start[start]

    # -- chains -------------------------------------------------------------------------

    def applicable_diff(self, snap: MetaSnap) -> MetaDiff | None:
        """The max-progress diff applicable to ``snap``, if any."""
        candidates = [d for d in self._covering(snap.gid_b) if get_relation(snap, d) is Relation.APPLICABLE]
        return get_max_progress_diff(candidates) if candidates else None

    def applicable_diffs(self, snap: MetaSnap, max_gid: int | None = None,
                         max_timestamp: int | None = None,
                         pred: Callable[[MetaDiff, MetaSnap], bool] | None = None) -> list[MetaDiff]:
        """The chain from ``snap``: repeatedly apply the max-progress applicable diff.

        Args:
            snap: where to start.
            max_gid: stop before a diff whose result has gid_b > max_gid.
            max_timestamp: stop before a diff whose timestamp is > max_timestamp.
            pred: stop before a diff for which ``pred(diff, snapshot_after)`` is false.
        """
        chain: list[MetaDiff] = []
        while (diff := self.applicable_diff(snap)) is not None:
            after = _apply_one(snap, diff)
            if max_gid is not None and after.gid_b > max_gid:
                break
            if max_timestamp is not None and diff.timestamp > max_timestamp:
                break
            if pred is not None and not pred(diff, after):
                break
            chain.append(diff)
            snap = after
        return chain

    def applicable_mergeable_diffs(self, snap: MetaSnap) -> list[MetaDiff]:
        """The longest prefix of the chain from ``snap`` that merges into one diff (diff-repl)."""
        chain = self.applicable_diffs(snap)
        count = 1 if chain else 0
        while count < len(chain) and can_merge(*chain[:count + 1]):
            count += 1
        return chain[:count]

    def minimal_applying_list(self, state: MetaState) -> list[MetaDiff]:
        """The diffs an applying base must be finished with; empty if not applying."""
        if state.snap_e is None:
            return []
        return self.applicable_diffs(state.snap_b, max_gid=state.snap_e.gid_b)

    def latest_snap(self, state: MetaState) -> MetaSnap:
        """The snapshot at the end of the chain from the base (clean or dirty)."""
        return apply(state.snap_b, *self.applicable_diffs(state.snap_b))

    def latest_state(self, state: MetaState) -> MetaState:
        """The base state with the whole chain applied (timestamp of the last diff).

        Raises:
            OperationError: an applying base cannot be finished with the diffs held.
        """
        return end_applying(state, *self.applicable_diffs(state.snap_b))

    def oldest_clean_state(self, state: MetaState) -> MetaState:
        """The first clean state along the chain, after finishing an applying base.

        Raises:
            OperationError: the chain reaches no clean snapshot.
        """
        current = end_applying(state, *self.minimal_applying_list(state))
        while current.snap_b.is_dirty:
            diff = self.applicable_diff(current.snap_b)
            if diff is None:
                raise OperationError(f"no clean snapshot after base {state.to_str(False)}")
            current = end_applying(current, diff)
        return current

    def restorable_list(self, state: MetaState, include_implicit: bool = False) -> list[Restorable]:
        """Clean snapshots reachable from the base (``get restorable [all]``), oldest first.

        After each chain diff the snapshot is restorable if clean; it is explicit if it
        is the last one or the next diff is not mergeable. The base itself (after
        finishing an applying base) is listed whenever it is clean, even without
        ``include_implicit``, and flagged not explicit, as WalB does.

        Raises:
            OperationError: an applying base cannot be finished with the diffs held.
        """
        chain = self.applicable_diffs(state.snap_b)
        minimal = self.minimal_applying_list(state)
        current = end_applying(state, *minimal)
        found = []
        if current.snap_b.is_clean:
            found.append(Restorable(current.snap_b.gid_b, current.timestamp, False))
        for i in range(len(minimal), len(chain)):
            current = end_applying(current, chain[i])
            is_explicit = i + 1 == len(chain) or not chain[i + 1].is_mergeable
            if current.snap_b.is_clean and (include_implicit or is_explicit):
                found.append(Restorable(current.snap_b.gid_b, current.timestamp, is_explicit))
        return found

    def diffs_to_materialize(self, state: MetaState, gid: int, must_be_clean: bool) -> list[MetaDiff] | None:
        """The diffs that turn the base into the snapshot whose gid_b is ``gid``, or None.

        None when the chain does not land exactly on ``gid``, does not cover the
        diffs an applying base needs, or (with ``must_be_clean``) lands on a dirty one.

        Raises:
            OperationError: an applying base cannot be finished with the diffs held.
        """
        chain = self.applicable_diffs(state.snap_b, max_gid=gid)
        if len(self.minimal_applying_list(state)) > len(chain):
            return None
        reached = end_applying(state, *chain).snap_b
        if reached.gid_b != gid or (must_be_clean and reached.is_dirty):
            return None
        return chain

    def diffs_to_restore(self, state: MetaState, gid: int, max_count: int = 0) -> list[MetaDiff]:
        """The diffs to restore clean snapshot ``gid`` from the base (getDiffListToRestore2).

        Args:
            state: the base state.
            gid: the snapshot to restore.
            max_count: if > 0, return at most this many (a restore may go in batches).

        Raises:
            OperationError: ``gid`` is not a restorable clean snapshot.
        """
        chain = self.diffs_to_materialize(state, gid, must_be_clean=True)
        if chain is None:
            raise OperationError(f"snapshot {gid} is not restorable from base {state.to_str(False)}")
        return chain[:max_count] if max_count > 0 else chain

    def diffs_to_scan(self, state: MetaState, gid: int, max_count: int = 0) -> list[MetaDiff]:
        """The diffs to read snapshot ``gid`` (clean or dirty) virtually (getDiffListToScan2).

        Raises:
            OperationError: no snapshot has gid_b ``gid``, or it needs more than max_count (> 0) diffs.
        """
        chain = self.diffs_to_materialize(state, gid, must_be_clean=False)
        if chain is None:
            raise OperationError(f"snapshot {gid} cannot be reached from base {state.to_str(False)}")
        if 0 < max_count < len(chain):
            raise OperationError(f"snapshot {gid} needs {len(chain)} diffs, more than {max_count}")
        return chain

    def diffs_to_apply(self, state: MetaState, gid: int, max_count: int = 0) -> list[MetaDiff]:
        """The diffs to apply to the base to move it towards ``gid`` (getDiffListToApply2).

        The chain up to gid, cut to max_count (> 0), but never shorter than what an
        applying base needs. Empty when there is nothing to apply.
        """
        chain = self.applicable_diffs(state.snap_b, max_gid=gid)
        if max_count > 0:
            chain = chain[:max_count]
        minimal = self.minimal_applying_list(state)
        return minimal if len(minimal) > len(chain) else chain

    def mergeable_diffs(self, gid_b: int, max_size_bytes: int | None = None, gid_e: int | None = None,
                        max_count: int | None = None) -> list[MetaDiff]:
        """Diffs to merge into one, starting at the first diff with snap_b.gid_b >= gid_b.

        Start with the max-progress diff among those with the smallest such snap_b.gid_b,
        then keep appending the max-progress diff that merges with the accumulated one.

        Args:
            gid_b: where to start looking.
            max_size_bytes: keep the first diff, then add diffs while the total data_size
                stays <= this.
            gid_e: stop at the first diff with snap_b.gid_b >= gid_e.
            max_count: keep at most this many.
        """
        lo = bisect.bisect_left(self._starts, gid_b)
        if lo == len(self._starts):
            return []
        first = get_max_progress_diff(self._by_start[self._starts[lo]])
        found = [first]
        merged = first
        while True:
            end = merged.snap_e.gid_b
            candidates = [d for d in self._covering(end) if d.key != merged.key and _can_merge_two(merged, d)]
            if not candidates:
                break
            diff = get_max_progress_diff(candidates)
            merged = _merge_two(merged, diff)
            found.append(diff)
        if gid_e is not None:
            for i, diff in enumerate(found):
                if diff.snap_b.gid_b >= gid_e:
                    found = found[:i]
                    break
        if max_size_bytes is not None and found:
            total = found[0].data_size
            count = 1
            while count < len(found) and total + found[count].data_size <= max_size_bytes:
                total += found[count].data_size
                count += 1
            found = found[:count]
        if max_count is not None:
            found = found[:max_count]
        return found

    # -- removal ------------------------------------------------------------------------

    def gc(self, base: MetaState | MetaSnap) -> list[MetaDiff]:
        """Remove and return every diff not on the chain from the base snapshot."""
        snap = base.snap_b if isinstance(base, MetaState) else base
        keep = {diff.key for diff in self.applicable_diffs(snap)}
        garbage = [diff for diff in self if diff.key not in keep]
        for diff in garbage:
            self.remove(diff)
        return garbage

    def gc_range(self, gid_b: int, gid_e: int) -> list[MetaDiff]:
        """Remove and return diffs inside [gid_b, gid_e] other than one spanning exactly it.

        Used after a diff-repl received the diff gid_b-->gid_e, which replaces them.
        """
        garbage = [diff for diff in self.in_range(gid_b, gid_e)
                   if diff.snap_e.gid_b <= gid_e and not (diff.snap_b.gid_b == gid_b and diff.snap_e.gid_b == gid_e)]
        for diff in garbage:
            self.remove(diff)
        return garbage

    def erase_before(self, gid: int) -> list[MetaDiff]:
        """Remove and return diffs with snap_b.gid_b < gid and snap_e.gid_b <= gid (applied ones)."""
        erased = [diff for diff in self.in_range(0, gid) if diff.snap_e.gid_b <= gid] if gid > 0 else []
        for diff in erased:
            self.remove(diff)
        return erased

    def set_snapshot_enabled(self, gid: int, enabled: bool) -> list[tuple[MetaDiff, MetaDiff]]:
        """Make snapshot ``gid`` explicit (enabled) or implicit by flipping is_mergeable.

        Changes every diff starting at ``gid`` whose flag differs and returns the
        (old, new) pairs, so the caller can rename the files.

        Raises:
            OperationError: no diff starts at ``gid``.
        """
        bucket = self._by_start.get(gid)
        if not bucket:
            raise OperationError(f"no diff starts at snapshot {gid}")
        changed = []
        for i, diff in enumerate(bucket):
            if diff.is_mergeable == enabled:  # is_mergeable means "the start snapshot is implicit"
                new = replace(diff, is_mergeable=not enabled)
                bucket[i] = new
                self._by_key[new.key] = new
                changed.append((diff, new))
        return changed


# ---------------------------------------------------------------------------------------
# gid assignment on the storage (walb.md §5.7, WalB src/storage_vol_info.cpp)


def next_explicit_gid(pre: MetaLsidGid, latest_lsid: int, max_wlog_send_pb: int) -> int:
    """The gid of a snapshot cut at ``latest_lsid``.

    ``pre`` is the newest queued record, or the done record if the queue is empty. One
    gid is skipped per ``max_wlog_send_pb`` of log since ``pre``, so that a long stretch
    can later be sent as several diffs (|g|-->|g+1|, ...). Implicit snapshots use the
    same rule.

    Raises:
        BadField: max_wlog_send_pb is not positive.
        OperationError: latest_lsid is behind pre.lsid.
    """
    if max_wlog_send_pb <= 0:
        raise BadField(f"max_wlog_send_pb must be positive, got {max_wlog_send_pb}")
    if latest_lsid < pre.lsid:
        raise OperationError(f"lsid {latest_lsid} is behind the previous snapshot's lsid {pre.lsid}")
    return pre.gid + 1 + (latest_lsid - pre.lsid) // max_wlog_send_pb


def needs_implicit_snapshot(newest: MetaLsidGid | None, latest_lsid: int, now: int, interval_sec: int) -> bool:
    """True if the storage should cut an implicit snapshot before a wlog transfer.

    That is when the queue is empty (``newest`` is None), or when new logs exist after
    the newest queued snapshot and it is at least ``interval_sec`` old.
    """
    if newest is None:
        return True
    return newest.lsid < latest_lsid and newest.timestamp + interval_sec <= now


def transfer_end(queue: Sequence[MetaLsidGid], done: MetaLsidGid, max_wlog_send_pb: int,
                 permanent_lsid: int) -> tuple[MetaLsidGid, int]:
    """Choose the end of the next wlog transfer: ``(rec_e, lsid_e)``.

    Args:
        queue: the queued snapshot records, oldest first (not empty).
        done: the record of the point already sent.
        max_wlog_send_pb: the most log to send at once.
        permanent_lsid: logs up to here are on the log device for good.

    The oldest record is the end, extended over newer records while the one passed over
    is mergeable and the next stays within max_wlog_send_pb of ``done`` and below
    permanent_lsid. ``lsid_e`` is rec_e.lsid if exactly one gid step is sent; otherwise
    at most max_wlog_send_pb past done.lsid.

    Raises:
        OperationError: the queue is empty or older than ``done``.
    """
    if not queue:
        raise OperationError("no snapshot record queued")
    rec_e = queue[0]
    count = 1
    while count < len(queue) and rec_e.is_mergeable:
        rec = queue[count]
        if rec.lsid > done.lsid + max_wlog_send_pb or rec.lsid > permanent_lsid:
            break
        rec_e = rec
        count += 1
    if not (done.lsid <= rec_e.lsid and done.gid < rec_e.gid):
        raise OperationError(f"queued record (lsid {rec_e.lsid}, gid {rec_e.gid}) is not after the done record "
                             f"(lsid {done.lsid}, gid {done.gid})")
    if count == 1 and rec_e.gid == done.gid + 1:
        # A single gid step cannot be split, so it goes whole even if it is too big.
        return rec_e, rec_e.lsid
    return rec_e, min(done.lsid + max_wlog_send_pb, rec_e.lsid)


def transfer_diff(done: MetaLsidGid, rec_e: MetaLsidGid, lsid_e: int) -> MetaDiff:
    """The diff a wlog transfer of (done.lsid, lsid_e] carries to the proxy.

    ``|done.gid|-->|rec_e.gid|`` if it reaches rec_e, else the partial
    ``|done.gid|-->|done.gid + 1|``; is_mergeable from ``done``, timestamp from rec_e.
    """
    end = rec_e.gid if lsid_e == rec_e.lsid else done.gid + 1
    return MetaDiff(done.gid, end, is_mergeable=done.is_mergeable, timestamp=rec_e.timestamp)


def done_after_transfer(done: MetaLsidGid, rec_e: MetaLsidGid, lsid_e: int) -> MetaLsidGid:
    """The new done record once a transfer up to ``lsid_e`` is acknowledged.

    A partial transfer stops at an implicit point ``done.gid + 1`` that keeps done's
    timestamp: the gid moved on, the time did not.
    """
    if lsid_e == rec_e.lsid:
        return rec_e
    return MetaLsidGid(lsid_e, done.gid + 1, is_mergeable=True, timestamp=done.timestamp)


def is_sent(rec: MetaLsidGid, done: MetaLsidGid) -> bool:
    """True if queued record ``rec`` is at or before ``done`` and can be dropped."""
    return rec.lsid < done.lsid or (rec.lsid == done.lsid and rec.gid <= done.gid)
