"""WalB's rules of the gid model: how a diff relates to a snapshot, applies, and merges.

B and E below are gid_b of a diff's snapB and snapE (walb.md §5.5):

* progress: a diff has snapB.gid_b < snapE.gid_b and snapB.gid_e <= snapE.gid_e.
* relation of diff d to snapshot s: a comp diff applies iff d.B == s.gid_b; otherwise
  d is too new if d.B > s.gid_b, too old if d.E <= s.gid_b, and applicable in between.
* apply: a clean diff gives ``|E, max(E, s.gid_e)|``, a dirty one gives its snapE.
* merge d0 +++ d1 needs d1 mergeable, neither a comp diff, d0.B <= d1.B <= d0.E < d1.E;
  the result keeps d0's start and is_mergeable and takes d1's timestamp.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from ..errors import OperationError
from .records import MetaDiff, MetaSnap, MetaState


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


def apply_one(snap: MetaSnap, diff: MetaDiff) -> MetaSnap:
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
        snap = apply_one(snap, diff)
    return snap


def _applied_or_none(snap: MetaSnap, diffs: Iterable[MetaDiff]) -> MetaSnap | None:
    for diff in diffs:
        if get_relation(snap, diff) is not Relation.APPLICABLE:
            return None
        snap = apply_one(snap, diff)
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
        raise OperationError(f"cannot apply {ranges_text(diffs)} to base {state.to_str(False)}")
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
        raise OperationError(f"cannot apply {ranges_text(diffs)} to base {state.to_str(False)}")
    if not diffs:
        return state
    return MetaState(apply(state.snap_b, *diffs), None, diffs[-1].timestamp)


def can_merge_pair(d0: MetaDiff, d1: MetaDiff) -> bool:
    if not d1.is_mergeable or d0.is_comp_diff or d1.is_comp_diff:
        return False
    return d0.snap_b.gid_b <= d1.snap_b.gid_b <= d0.snap_e.gid_b < d1.snap_e.gid_b


def merge_pair(d0: MetaDiff, d1: MetaDiff) -> MetaDiff:
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
        if not can_merge_pair(merged, diff):
            return False
        merged = merge_pair(merged, diff)
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
        if not can_merge_pair(merged, diff):
            raise OperationError(f"cannot merge {merged.range_str()} with {diff.range_str()}")
        merged = merge_pair(merged, diff)
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


def ranges_text(diffs: Iterable[MetaDiff]) -> str:
    return "[" + ", ".join(d.range_str() for d in diffs) + "]"
