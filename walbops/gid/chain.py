"""Sets of diffs: WalB's MetaDiffManager, which picks chains, restorable snapshots and merges."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from ..errors import OperationError
from .records import UINT64_MAX, MetaDiff, MetaSnap, MetaState
from .rules import (
    Relation,
    apply,
    apply_one,
    can_merge,
    can_merge_pair,
    end_applying,
    get_max_progress_diff,
    get_relation,
    merge_pair,
    ranges_text,
)


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
        return f"DiffChain({ranges_text(self)})"

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
            after = apply_one(snap, diff)
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

    def passage(self, state: MetaState) -> list[tuple[MetaSnap, int]]:
        """Each snapshot the volume passes through from ``state``'s snap_b along the whole chain,
        with its time (the base's, then each diff's), oldest first.

        An applying base is not finished first: the snapshots inside its applying range are on
        the volume's history too (their diffs are still held), which is what a replication
        destination sitting at one of them must be told.
        """
        snap, points = state.snap_b, [(state.snap_b, state.timestamp)]
        for diff in self.applicable_diffs(snap):
            snap = apply_one(snap, diff)
            points.append((snap, diff.timestamp))
        return points

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
            candidates = [d for d in self._covering(end) if d.key != merged.key and can_merge_pair(merged, d)]
            if not candidates:
                break
            diff = get_max_progress_diff(candidates)
            merged = merge_pair(merged, diff)
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

    def snapshot_flag_changes(self, gid: int, enabled: bool) -> list[tuple[MetaDiff, MetaDiff]]:
        """The (old, new) diffs that would make snapshot ``gid`` explicit (enabled) or implicit.

        Every diff starting at ``gid`` whose is_mergeable flag differs; nothing changes here.

        Raises:
            OperationError: no diff starts at ``gid``.
        """
        bucket = self._by_start.get(gid)
        if not bucket:
            raise OperationError(f"no diff starts at snapshot {gid}")
        # is_mergeable means "the start snapshot is implicit".
        return [(diff, replace(diff, is_mergeable=not enabled)) for diff in bucket if diff.is_mergeable == enabled]

    def replace(self, old: MetaDiff, new: MetaDiff) -> None:
        """Put ``new`` where ``old`` was; both must have the same snapshots (a flag or size changed).

        Raises:
            OperationError: the keys differ, or ``old`` is not here.
        """
        if old.key != new.key:
            raise OperationError(f"cannot replace {old.range_str()} by {new.range_str()}")
        stored = self._by_key.get(old.key)
        if stored is None:
            raise OperationError(f"diff {old.range_str()} not found")
        bucket = self._by_start[old.snap_b.gid_b]
        bucket[bucket.index(stored)] = new
        self._by_key[new.key] = new

    def set_snapshot_enabled(self, gid: int, enabled: bool) -> list[tuple[MetaDiff, MetaDiff]]:
        """Make snapshot ``gid`` explicit (enabled) or implicit by flipping is_mergeable.

        Changes every diff starting at ``gid`` whose flag differs and returns the
        (old, new) pairs, so the caller can rename the files.

        Raises:
            OperationError: no diff starts at ``gid``.
        """
        changed = self.snapshot_flag_changes(gid, enabled)
        for old, new in changed:
            self.replace(old, new)
        return changed
