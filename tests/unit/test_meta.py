"""Tests for walbops.gid (the gid model).

The ``test_*`` functions named after a WalB case port ``utest/meta_test.cpp`` (the
24 CYBOZU_TEST_AUTO cases, in their order); property tests follow.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.errors import BadField, OperationError
from walbops.gid import (
    MAX_PRINTABLE_TIMESTAMP,
    UINT64_MAX,
    DiffChain,
    MetaDiff,
    MetaLsidGid,
    MetaSnap,
    MetaState,
    Relation,
    Restorable,
    apply,
    begin_applying,
    can_apply,
    can_merge,
    contains,
    diff_file_name,
    done_after_transfer,
    end_applying,
    get_max_progress_diff,
    get_relation,
    is_sent,
    merge,
    needs_implicit_snapshot,
    next_explicit_gid,
    parse_diff_file_name,
    transfer_diff,
    transfer_end,
)

NOW = 1514810096  # [s] 2018-01-01T12:34:56Z, stands in for WalB's ::time(0)


def snap(gid_b: int, gid_e: int | None = None) -> MetaSnap:
    return MetaSnap(gid_b, gid_e)


def diff(b: int | tuple[int, int], e: int | tuple[int, int], mergeable: bool = False, ts: int = 0) -> MetaDiff:
    """WalB's MetaDiff({b...}, {e...}, isMergeable, ts)."""
    snap_b = MetaSnap(*b) if isinstance(b, tuple) else MetaSnap(b)
    snap_e = MetaSnap(*e) if isinstance(e, tuple) else MetaSnap(e)
    return MetaDiff(snap_b, snap_e, is_mergeable=mergeable, timestamp=ts)


def state(snap_b: MetaSnap, snap_e: MetaSnap | None = None, ts: int = 0) -> MetaState:
    return MetaState(snap_b, snap_e, ts)


def same_snaps(a: MetaState, b: MetaState) -> bool:
    """WalB's MetaState::operator==, which ignores the timestamp."""
    return a.snap_b == b.snap_b and a.snap_e == b.snap_e


def rand_diff(pick: Callable[[int], int], base: MetaSnap, all_mergeable: bool = False) -> MetaDiff:
    """WalB's randDiff: a random diff applicable to ``base``; pick(n) is in [0, n)."""
    is_dirty = pick(3) == 0
    snap_b = base if is_dirty else MetaSnap(base.gid_b)
    gid_b = base.gid_e + 1 + pick(10)
    snap_e = MetaSnap(gid_b, gid_b + 1 + pick(20)) if is_dirty else MetaSnap(gid_b)
    mergeable = True if all_mergeable else pick(2) == 0
    made = MetaDiff(snap_b, snap_e, is_mergeable=mergeable)
    assert can_apply(base, made)
    return made


def rand_diff_list(pick: Callable[[int], int], base: MetaSnap, n: int, all_mergeable: bool = False) -> list[MetaDiff]:
    found = []
    for _ in range(n):
        made = rand_diff(pick, base, all_mergeable)
        found.append(made)
        base = apply(base, made)
    return found


def seeded(seed: int) -> Callable[[int], int]:
    return random.Random(seed).randrange


def check_index(chain: DiffChain) -> None:
    """Stand-in for WalB's validateForTest: the windowed lookup agrees with a full scan."""
    diffs = list(chain)
    assert len(diffs) == len(chain)
    assert [d.snap_b.gid_b for d in diffs] == sorted(d.snap_b.gid_b for d in diffs)
    gids = {g for d in diffs for g in (d.snap_b.gid_b, d.snap_e.gid_b, d.snap_e.gid_b - 1)}
    for gid in gids:
        probe = MetaSnap(gid)
        candidates = [d for d in diffs if can_apply(probe, d)]
        expected = get_max_progress_diff(candidates) if candidates else None
        assert chain.applicable_diff(probe) == expected


# ---------------------------------------------------------------------------------------
# meta_test.cpp


def test_diff():
    d0 = diff((0, 0), (1, 2))
    d1 = diff(1, 2, mergeable=True)
    assert can_merge(d0, d1)
    assert merge(d0, d1).key == diff(0, 2).key


def test_snap():
    assert apply(snap(0, 7), diff((0, 0), (10, 10))) == snap(10, 10)
    assert apply(snap(0, 10), diff((0, 0), (10, 10))) == snap(10, 10)
    assert apply(snap(0, 10), diff((0, 10), (11, 12))) == snap(11, 12)


@pytest.mark.parametrize(("d0", "d1", "merged"), [
    # clean +++ clean
    (diff(0, 1, True), diff(1, 2, True), diff(0, 2, True)),
    (diff(0, 2, True), diff(1, 3, True), diff(0, 3, True)),
    # clean +++ dirty
    (diff(0, 1, True), diff(1, (2, 3), True), diff(0, (2, 3), True)),
    (diff(0, 5, True), diff((1, 2), (7, 8), True), diff(0, (7, 8), True)),
    # dirty +++ clean: the end stays as dirty as the first diff left it
    (diff((0, 1), (5, 10), True), diff(2, 7, True), diff((0, 1), (7, 10), True)),
    (diff((0, 1), (5, 10), True), diff(2, 12, True), diff((0, 1), 12, True)),
])
def test_merge(d0, d1, merged):
    assert can_merge(d0, d1)
    assert merge(d0, d1) == merged


@pytest.mark.parametrize(("d0", "d1"), [
    (diff(0, 2, True), diff(3, 5, True)),  # gap
    (diff(0, 5, True), diff(1, 3, True)),  # second inside the first
    (diff(1, 3, True), diff(0, 5, True)),  # first inside the second
])
def test_merge_refused(d0, d1):
    assert not can_merge(d0, d1)
    with pytest.raises(OperationError):
        merge(d0, d1)


def test_merge_flags():
    d0 = diff(0, 1, True)
    assert not can_merge(d0, diff(1, 2, False))
    assert can_merge(d0, diff(1, 2, True))
    for comp0, comp1 in [(True, False), (False, True), (True, True)]:
        assert not can_merge(replace(d0, is_comp_diff=comp0), MetaDiff(1, 2, True, is_comp_diff=comp1))


def check_apply(s0: MetaSnap, d0: MetaDiff, s1: MetaSnap) -> None:
    """WalB's testApply."""
    assert can_apply(s0, d0)
    base = state(s0)
    assert can_apply(base, d0)
    sa = begin_applying(base, d0)
    sb = end_applying(base, d0)
    assert can_apply(sa, d0)
    sc = end_applying(sa, d0)
    assert sa.is_applying and not sb.is_applying and not sc.is_applying
    assert sa.timestamp == sb.timestamp == sc.timestamp == d0.timestamp
    assert sb == sc == state(s1)


@pytest.mark.parametrize(("s0", "d0", "s1"), [
    # clean snapshots and diffs
    (snap(0), diff(0, 1), snap(1)),
    (snap(1), diff(0, 2), snap(2)),
    # dirty snapshots, clean diffs
    (snap(0, 2), diff(0, 2), snap(2)),
    (snap(0, 2), diff(0, 4), snap(4)),
    (snap(0, 2), diff(0, 1), snap(1, 2)),
    # dirty snapshots, dirty diffs
    (snap(0, 5), diff((0, 5), (15, 16)), snap(15, 16)),
    (snap(0, 5), diff((0, 5), 10), snap(10)),
    (snap(5, 10), diff((0, 5), 15), snap(15)),
    (snap(5, 10), diff((0, 5), (7, 10)), snap(7, 10)),
])
def test_apply(s0, d0, s1):
    check_apply(s0, d0, s1)


def test_apply_refused():
    assert get_relation(snap(0), diff(1, 2)) is Relation.TOO_NEW
    assert not can_apply(snap(0), diff(1, 2))
    assert get_relation(snap(2), diff(0, 1)) is Relation.TOO_OLD
    assert not can_apply(snap(2), diff(0, 1))
    with pytest.raises(OperationError, match="too-old-diff"):
        apply(snap(2), diff(0, 1))


def test_old_or_new():
    assert get_relation(snap(5), diff(4, 5)) is Relation.TOO_OLD
    assert get_relation(snap(5), diff(6, 7)) is Relation.TOO_NEW
    assert get_relation(snap(5), diff(3, 7)) is Relation.APPLICABLE


def test_apply_comp_diff():
    assert can_apply(snap(5), MetaDiff(5, 10, is_comp_diff=True))
    comp = MetaDiff(4, 10, is_comp_diff=True)
    assert get_relation(snap(5), comp) is Relation.NOT_APPLICABLE
    assert not can_apply(snap(5), comp)


def test_contains():
    for seed in range(10):
        pick = seeded(seed)
        diffs = [replace(d, is_mergeable=True) for d in rand_diff_list(pick, snap(0), 10)]
        merged = merge(*diffs)
        assert all(contains(merged, d) for d in diffs)


def check_apply_merged(base: MetaSnap, diffs: list[MetaDiff]) -> None:
    """WalB's testApplyMerged: merging any prefix does not change where the chain ends."""
    end = apply(base, *diffs)
    for count in range(1, len(diffs) + 1):
        head, tail = diffs[:count], diffs[count:]
        if not can_merge(*head):
            break
        merged = merge(*head)
        assert can_apply(base, merged)
        assert apply(base, merged) == apply(base, *head)
        assert can_apply(apply(base, merged), *tail)
        assert apply(apply(base, merged), *tail) == end


def test_apply_merged():
    check_apply_merged(snap(0, 1), [diff(0, 1, True), diff((1, 1), (2, 3), True), diff(2, 3, True),
                                    diff(3, 4, True)])
    pick = seeded(1)
    for base in (snap(0), snap(0, 5), snap(0, 100)):
        for _ in range(100):
            check_apply_merged(base, rand_diff_list(pick, base, 10, all_mergeable=True))


def merge_and_replace(pick: Callable[[int], int], diffs: list[MetaDiff]) -> bool:
    """WalB's mergeAndReplace: merge a random run of >= 2 neighbours in place."""
    if len(diffs) < 2:
        return False
    size = len(diffs)
    begin = 0 if size == 2 else pick(size - 2)
    end = 2 if size == 2 else begin + 2 + pick(size - begin - 2)
    run = diffs[begin:end]
    assert len(run) >= 2 and can_merge(*run)
    diffs[begin:end] = [merge(*run)]
    return True


def exists_applicable_diffs(base: MetaState, diffs: list[MetaDiff]) -> bool:
    """WalB's existsApplicableDiffs."""
    for i, first in enumerate(diffs):
        if can_apply(base.snap_b, first):
            if not base.is_applying:
                return True
            return any(can_apply(base, *diffs[i:j]) for j in range(i + 1, len(diffs) + 1))
    return False


def test_diff_list():
    pick = seeded(2)
    count = 10
    s0 = snap(0, 5)
    diffs = rand_diff_list(pick, s0, count, all_mergeable=True)
    # d_i merges with d_j iff j == i + 1
    for i in range(count - 1):
        for j in range(count):
            assert can_merge(diffs[i], diffs[j]) == (j == i + 1)
    # s0 <<< d_i <<< ... <<< d_j == s0 <<< (d_i +++ ... +++ d_j)
    for i in range(count):
        assert can_apply(s0, *diffs[:i])
        si = apply(s0, *diffs[:i])
        for j in range(i, count):
            run = diffs[i:j + 1]
            assert can_merge(*run)
            merged = merge(*run)
            assert can_apply(si, merged)
            assert apply(si, merged) == apply(si, *run)
    # every applying state can still be finished after any merges of the diffs
    for _ in range(1000):
        x1 = pick(count - 2)
        x2 = x1 + 1 + pick(count - x1 - 1)
        sx = apply(s0, *diffs[:x1])
        base = begin_applying(state(sx), *diffs[x1:x2])
        merged = list(diffs)
        while merge_and_replace(pick, merged):
            assert exists_applicable_diffs(base, merged)


def test_meta_diff_manager_1():
    """|0|, then |0|-->|1| ... |4|-->|5|; |3| is explicit (|3|-->|4| not mergeable)."""
    base_snap = snap(0)
    base = state(base_snap)
    v = [diff(0, 1, True, 1000), diff(1, 2, True, 1001), diff(2, 3, True, 1002), diff(3, 4, False, 1003),
         diff(4, 5, True, 1004)]
    chain = DiffChain(v)
    check_index(chain)
    assert chain.latest_snap(base) == snap(5)
    assert chain.oldest_clean_state(base).snap_b.gid_b == 0
    assert len(chain.applicable_diffs(base_snap, max_gid=4)) == 4
    assert len(chain.applicable_diffs(base_snap, max_timestamp=1003)) == 4
    for gid, expected in [(0, 0), (1, 1), (2, 2), (4, 4)]:
        assert len(chain.diffs_to_apply(base, gid)) == expected
    assert len(chain.diffs_to_restore(base, 2)) == 2
    assert len(chain.diffs_to_restore(base, 4)) == 4
    assert len(chain.diffs_to_materialize(base, 2, must_be_clean=True) or ()) == 2
    assert len(chain.diffs_to_materialize(base, 4, must_be_clean=True) or ()) == 4
    for gid in range(6):
        assert len(chain.diffs_to_scan(base, gid)) == gid
    assert len(chain.restorable_list(base, include_implicit=True)) == 6
    assert len(chain.restorable_list(base)) == 3

    v1 = chain.mergeable_diffs(0)
    assert len(v1) == 3
    v2 = chain.mergeable_diffs(3)
    assert len(v2) == 2
    merged1, merged2 = merge(*v1), merge(*v2)
    chain.add(merged1)
    chain.add(merged2)
    check_index(chain)
    assert chain.latest_snap(base) == snap(5)
    chain.gc(snap(0))
    check_index(chain)
    assert chain.latest_snap(base) == snap(5)
    assert list(chain) == [merged1, merged2]


def test_passage_lists_every_snapshot_from_the_base_even_inside_an_applying_range():
    """Replication asks whether a destination's snapshot is on this archive's history: the
    snapshots an applying base passes over still are (their diffs are held until the apply ends)."""
    v = [diff(0, 1, True, 1000), diff(1, 2, False, 1001), diff(2, 3, True, 1002)]
    chain = DiffChain(v)
    assert chain.passage(state(snap(0), ts=900)) == [(snap(0), 900), (snap(1), 1000), (snap(2), 1001),
                                                     (snap(3), 1002)]
    applying = begin_applying(state(snap(0), ts=900), *v[:2])
    assert [point for point, _ in chain.passage(applying)] == [snap(0), snap(1), snap(2), snap(3)]
    assert chain.oldest_clean_state(applying).snap_b == snap(2)  # which, by contrast, finishes the apply
    assert DiffChain().passage(state(snap(5), ts=7)) == [(snap(5), 7)]


def test_meta_diff_manager_2():
    """Base |0,10|; d0 |0|-->|5|, d1 |5,10|-->|15,20|, d2 |15|-->|20|, d3 |20|-->|25|."""
    base = state(snap(0, 10))
    v = [diff(0, 5, False, 1000), diff((5, 10), (15, 20), False, 1001), diff(15, 20, False, 1002),
         diff(20, 25, False, 1003)]
    chain = DiffChain(v)
    assert chain.oldest_clean_state(base).snap_b.gid_b == 20
    assert len(chain.applicable_diffs(base.snap_b)) == 4
    assert chain.minimal_applying_list(base) == []

    for gid, expected in [(0, 0), (5, 1), (15, 2), (20, 3), (25, 4)]:
        assert len(chain.diffs_to_apply(base, gid)) == expected
    for gid in (5, 15):
        with pytest.raises(OperationError, match="not restorable"):
            chain.diffs_to_restore(base, gid)
    assert len(chain.diffs_to_restore(base, 20)) == 3
    assert len(chain.diffs_to_restore(base, 25)) == 4
    assert chain.diffs_to_materialize(base, 5, must_be_clean=True) is None
    assert len(chain.diffs_to_materialize(base, 5, must_be_clean=False) or ()) == 1
    assert chain.diffs_to_materialize(base, 15, must_be_clean=True) is None
    assert len(chain.diffs_to_materialize(base, 15, must_be_clean=False) or ()) == 2
    assert len(chain.diffs_to_materialize(base, 20, must_be_clean=True) or ()) == 3
    assert len(chain.diffs_to_materialize(base, 25, must_be_clean=True) or ()) == 4
    for gid, expected in [(0, 0), (5, 1), (15, 2), (20, 3), (25, 4)]:
        assert len(chain.diffs_to_scan(base, gid)) == expected
    assert len(chain.restorable_list(base, include_implicit=True)) == 2
    assert len(chain.restorable_list(base)) == 2

    st1a = begin_applying(base, *v)
    st1b = begin_applying(st1a, *v)
    st1c = state(snap(0, 10), snap(25))
    st2a = end_applying(base, *v)
    st2b = end_applying(st1a, *v)
    st2c = state(snap(25))
    assert same_snaps(st1a, st1b) and same_snaps(st1a, st1c)
    assert same_snaps(st2a, st2b) and same_snaps(st2a, st2c)

    for gid in (0, 5, 20, 25):
        assert len(chain.diffs_to_apply(st1c, gid)) == 4
    for gid in (5, 20):
        with pytest.raises(OperationError):
            chain.diffs_to_restore(st1c, gid)
        assert chain.diffs_to_materialize(st1c, gid, must_be_clean=False) is None
        with pytest.raises(OperationError):
            chain.diffs_to_scan(st1c, gid)
    assert len(chain.diffs_to_restore(st1c, 25)) == 4
    assert len(chain.diffs_to_materialize(st1c, 25, must_be_clean=True) or ()) == 4
    assert len(chain.diffs_to_scan(st1c, 25)) == 4


def test_meta_diff_manager_3():
    """Base |0,10|; |0|-->|5|, |5,10|-->|15,20|, |15|-->|20|."""
    base = state(snap(0, 10))
    chain = DiffChain([diff(0, 5, False, 1000), diff((5, 10), (15, 20), False, 1001), diff(15, 20, False, 1002)])
    assert chain.oldest_clean_state(base).snap_b.gid_b == 20
    assert len(chain.applicable_diffs(base.snap_b)) == 3
    assert chain.minimal_applying_list(base) == []
    for gid, expected in [(0, 0), (5, 1), (10, 1), (15, 2), (20, 3)]:
        assert len(chain.diffs_to_apply(base, gid)) == expected
    for gid in (5, 10, 15):
        with pytest.raises(OperationError):
            chain.diffs_to_restore(base, gid)
    assert len(chain.diffs_to_restore(base, 20)) == 3
    assert len(chain.diffs_to_materialize(base, 5, must_be_clean=False) or ()) == 1
    assert len(chain.diffs_to_materialize(base, 15, must_be_clean=False) or ()) == 2
    assert len(chain.diffs_to_materialize(base, 20, must_be_clean=True) or ()) == 3
    assert len(chain.restorable_list(base, include_implicit=True)) == 1
    assert len(chain.restorable_list(base)) == 1
    for gid, expected in [(5, 1), (15, 2), (20, 3)]:
        assert len(chain.diffs_to_scan(base, gid)) == expected
    for gid in (4, 8, 22):
        with pytest.raises(OperationError):
            chain.diffs_to_scan(base, gid)


def test_meta_diff_manager_4():
    """Base |3| inside the diff |0|-->|5|."""
    base = state(snap(3))
    chain = DiffChain([diff(0, 5, False, 1000)])
    assert chain.oldest_clean_state(base).snap_b.gid_b == 3
    assert len(chain.applicable_diffs(base.snap_b)) == 1
    assert chain.minimal_applying_list(base) == []
    for gid in (2, 4):
        with pytest.raises(OperationError):
            chain.diffs_to_restore(base, gid)
    assert chain.diffs_to_restore(base, 3) == []
    assert len(chain.diffs_to_restore(base, 5)) == 1
    assert [len(chain.diffs_to_apply(base, gid)) for gid in (4, 5, 6)] == [0, 1, 1]
    assert chain.diffs_to_scan(base, 3) == []
    with pytest.raises(OperationError):
        chain.diffs_to_scan(base, 4)
    assert len(chain.diffs_to_scan(base, 5)) == 1


def test_meta_diff_manager_5():
    """Scans, including the max_count limit."""
    base = state(snap(3))
    chain = DiffChain([diff(0, 5, False, 1000)])
    for gid in (4, 6):
        with pytest.raises(OperationError):
            chain.diffs_to_scan(base, gid)
    assert len(chain.diffs_to_scan(base, 5)) == 1

    with pytest.raises(OperationError):
        DiffChain([diff(2, 5, False, 1000)]).diffs_to_scan(state(snap(0)), 5)

    chain = DiffChain([diff(i, i + 1, False, 1000 + i) for i in range(5)])
    with pytest.raises(OperationError, match="more than 3"):
        chain.diffs_to_scan(state(snap(0)), 5, max_count=3)
    assert len(chain.diffs_to_scan(state(snap(0)), 5, max_count=5)) == 5


def test_meta_diff_manager_6():
    """A base and a diff that do not meet."""
    # the diff starts after the base
    base = state(snap(0))
    chain = DiffChain([diff(2, 5, False, 1000)])
    with pytest.raises(OperationError):
        chain.diffs_to_scan(base, 5)
    assert chain.diffs_to_apply(base, 0) == []
    assert chain.diffs_to_apply(base, 5) == []
    with pytest.raises(OperationError):
        chain.diffs_to_restore(base, 5)
    assert chain.diffs_to_restore(base, 0) == []
    # the diff ends before the base
    base = state(snap(10))
    with pytest.raises(OperationError):
        chain.diffs_to_scan(base, 5)
    assert chain.diffs_to_scan(base, 10) == []
    assert [chain.diffs_to_apply(base, gid) for gid in (0, 5, 10)] == [[], [], []]
    with pytest.raises(OperationError):
        chain.diffs_to_restore(base, 5)
    assert chain.diffs_to_restore(base, 10) == []


def check_random_merges(pick: Callable[[int], int]) -> None:
    """WalB's metaDiffManager7: merging and gc keep the latest snapshot and explicit points."""
    base_snap = snap(0)
    base = state(base_snap)
    v = rand_diff_list(pick, base_snap, 20)
    chain = DiffChain()
    expected = base_snap
    for d in v:
        assert chain.latest_snap(base) == expected
        chain.add(d)
        expected = apply(expected, d)
    check_index(chain)
    assert chain.applicable_diffs(base_snap) == v

    latest = chain.latest_snap(base)
    explicit_before = len(chain.restorable_list(base))
    all_before = len(chain.restorable_list(base, include_implicit=True))
    for _ in range(10):
        run = chain.mergeable_diffs(pick(latest.gid_e))
        if len(run) > 1:
            chain.add(merge(*run))
            chain.gc(snap(0))
            check_index(chain)
        assert chain.latest_snap(base) == latest
    assert len(chain.restorable_list(base)) == explicit_before
    assert all_before >= len(chain.restorable_list(base, include_implicit=True))
    clean = chain.restorable_list(base, include_implicit=True)
    if clean:
        assert chain.oldest_clean_state(base).snap_b.gid_b == clean[0].gid


def test_meta_diff_manager_7():
    for seed in range(20):
        check_random_merges(seeded(seed))


def test_meta_diff_manager_gc_range():
    v = [diff(0, 1, True, 1000), diff(0, 2, True, 1000), diff(1, 2, True, 1000), diff(1, 3, True, 1000),
         diff(2, 3, True, 1002), diff(2, 4, True, 1003)]
    chain = DiffChain(v)
    check_index(chain)
    assert chain.gc_range(1, 3) == [v[2], v[4]]
    check_index(chain)
    assert list(chain) == [v[0], v[1], v[3], v[5]]


def test_meta_diff_manager_merge_1():
    base_snap = snap(0)
    v = [diff(i, i + 1, True, 1000 + i) for i in range(5)]
    chain = DiffChain(v)
    merged1 = merge(v[0], v[1], v[2])
    merged2 = merge(v[1], v[2], v[3], v[4])
    chain.add(merged1)
    chain.add(merged2)
    check_index(chain)
    assert chain.applicable_diffs(base_snap) == [merged1, merged2]
    chain.gc(base_snap)
    check_index(chain)
    assert chain.applicable_diffs(base_snap) == [merged1, merged2]
    merged3 = merge(v[3], v[4])
    chain.add(merged3)
    chain.gc(base_snap)
    check_index(chain)
    assert chain.applicable_diffs(base_snap) == [merged1, merged3]


def test_meta_diff_manager_merge_2():
    base_snap = snap(0)
    v = [diff(0, 1, True, 1000), diff(2, 3, True, 1002), diff(4, 5, True, 1004), diff(0, 3, True, 1002),
         diff(2, 5, True, 1004)]
    chain = DiffChain(v)
    check_index(chain)
    chain.gc(base_snap)
    check_index(chain)
    assert chain.applicable_diffs(base_snap) == [v[3], v[4]]


@pytest.mark.parametrize("erase_over", [
    10,  # WalB's value: the chain then never exceeds 11 diffs and the merge branch never runs
    40,  # so that merges happen too
])
def test_meta_diff_manager_merge_3(erase_over):
    """A long random run of add, merge, gc and erase_before (after an apply)."""
    pick = seeded(3)
    base_snap = snap(0)
    ts = NOW
    chain = DiffChain()
    merges = 0
    for gid in range(1000):
        chain.add(MetaDiff(gid, gid + 1, is_mergeable=True, timestamp=ts, data_size=1 + pick(10000)))
        ts += 1
        v = chain.applicable_diffs(base_snap)
        if len(chain) - len(v) > 10:
            chain.gc(base_snap)
        if len(v) > 20:
            end = 2 + pick(len(v) - 1)
            begin = pick(end)
            merged = merge(*v[begin:end])
            if merged not in chain:  # a one-diff run is itself; WalB's add would throw here
                chain.add(merged)
                merges += 1
        v = chain.applicable_diffs(base_snap)
        if len(v) > erase_over:
            erased = chain.erase_before(v[pick(len(v))].snap_e.gid_b)
            base_snap = apply(base_snap, *erased)
            assert chain.applicable_diffs(base_snap) == [d for d in v if d not in erased]
        if gid % 50 == 0:
            check_index(chain)
    check_index(chain)
    assert chain.latest_snap(state(base_snap)) == snap(1000)
    assert (merges > 0) == (erase_over > 20)


def check_diff_file_name(d: MetaDiff) -> None:
    name = diff_file_name(d)
    assert parse_diff_file_name(name) == d


def test_diff_file_name():
    pick = seeded(4)
    for _ in range(100):
        b = pick(10)
        e = b + pick(10)
        for base in (snap(b), snap(b, e)):
            made = rand_diff(pick, base)
            for mergeable in (True, False):
                for comp in (True, False):
                    check_diff_file_name(replace(made, is_mergeable=mergeable, is_comp_diff=comp))


def test_snap_str():
    for s in (snap(5, 10), snap(100)):
        assert MetaSnap.parse(str(s)) == s


def test_meta_state_str():
    """WalB's metaStataStr."""
    cases = [state(snap(100)), state(snap(100, 200)), state(snap(100), snap(300)), state(snap(100), snap(300, 400)),
             state(snap(100, 200), snap(300)), state(snap(100, 200), snap(300, 400))]
    for case in cases:
        case = replace(case, timestamp=NOW)
        assert same_snaps(MetaState.parse(case.to_str(with_timestamp=False)), case)
        assert MetaState.parse(str(case)) == case
    assert str(state(snap(10), ts=NOW)) == "<|10|>-20180101123456"


# ---------------------------------------------------------------------------------------
# Golden strings and names


def test_golden_strings():
    assert str(snap(7)) == "|7|"
    assert str(snap(7, 9)) == "|7,9|"
    d = MetaDiff(snap(0, 5), snap(15, 16), is_mergeable=True, is_comp_diff=True, timestamp=1495601380,
                 data_size=4128)
    assert str(d) == "|0,5|-->|15,16| MC 2017-05-24T04:49:40 4128"
    assert MetaDiff.parse("|2|-->|7| -- 2017-05-24T04:49:40 4128") == MetaDiff(2, 7, timestamp=1495601380,
                                                                              data_size=4128)
    assert str(MetaDiff(2, 7)) == "|2|-->|7| -- --- 0"  # WalB prints timestamp 0 as ---
    assert str(state(snap(3), snap(5, 6), ts=1495601380)) == "<|3|-->|5,6|>-20170524044940"
    assert MetaState.parse("<|3|>", default_timestamp=NOW) == state(snap(3), ts=NOW)


@pytest.mark.parametrize(("name", "expected"), [
    # ts '-' M/- C/- then '-gid' each (meta.cpp createDiffFileName)
    ("20170524045540----2-7.wdiff", MetaDiff(2, 7, timestamp=1495601740)),
    ("20170524050210-M--2-7.wdiff", MetaDiff(2, 7, is_mergeable=True, timestamp=1495602130)),
    ("20170524050210-MC-2-7.wdiff", MetaDiff(2, 7, True, True, timestamp=1495602130)),
    ("19700101000000--C-0-10-11-20.wdiff", MetaDiff(snap(0, 10), snap(11, 20), is_comp_diff=True)),
    ("20170524045540----0-0-5-10.wdiff", MetaDiff(snap(0), snap(5, 10), timestamp=1495601740)),
])
def test_diff_file_name_golden(name, expected):
    assert parse_diff_file_name(name) == expected
    assert diff_file_name(expected) == name


@pytest.mark.parametrize("name", [
    "20170524045540--2-7.wdiff",  # one flag character (walb.md's example; WalB rejects it too)
    "20170524045540----2-7.wdif",
    "20170524045540----2.wdiff",
    "20170524045540----2-7-8.wdiff",
    "20170524045540----7-2.wdiff",  # no progress
    "20170524045540----02-7.wdiff",  # not canonical
    "20170524045540----2-2-7-7.wdiff",  # clean diff in the dirty form
    "20171324045540----2-7.wdiff",  # month 13
    "2017052404554----2-7.wdiff",
    "20170524045540-X--2-7.wdiff",
    "20170524045540----2-18446744073709551616.wdiff",  # gid over u64
    "19691231235959----2-7.wdiff",
    "",
])
def test_diff_file_name_bad(name):
    with pytest.raises(BadField, match="wdiff file name"):
        parse_diff_file_name(name)


@pytest.mark.parametrize("text", ["", "|", "||", "|1,|", "|-1|", "|2,1|", "| 1|", "|1|x", "|18446744073709551616|",
                                  "|١|"])
def test_snap_parse_bad(text):
    with pytest.raises(BadField):
        MetaSnap.parse(text)


@pytest.mark.parametrize("text", ["<|1|", "<|1|>-2018", "<|5|-->|5|>", "<|1|>20180101123456", "<|1|-->>",
                                  "<|1|>-20181301000000"])
def test_state_parse_bad(text):
    with pytest.raises(BadField):
        MetaState.parse(text)


@pytest.mark.parametrize("text", ["|1|-->|0| -- --- 0", "|1|-->|2| X- --- 0", "|1|-->|2| -- 2017 0",
                                  "|1|-->|2| --  --- 0", "|1|-->|2| -- --- -1",
                                  "|1|-->|2| -- 2017-5-24T04:49:40 0"])  # unpadded month
def test_diff_parse_bad(text):
    with pytest.raises(BadField):
        MetaDiff.parse(text)


def test_constructors_validate():
    with pytest.raises(BadField):
        MetaSnap(5, 4)
    with pytest.raises(BadField):
        MetaSnap(UINT64_MAX + 1)
    with pytest.raises(BadField):
        MetaSnap(True)
    with pytest.raises(BadField, match="progress"):
        MetaDiff(5, 5)
    with pytest.raises(BadField, match="progress"):
        MetaDiff(snap(0, 10), snap(5, 6))  # gid_e goes back
    with pytest.raises(BadField):
        MetaState(snap(5), snap(5))
    with pytest.raises(BadField):
        MetaLsidGid(-1, 0)
    with pytest.raises(BadField, match="year 9999"):
        diff_file_name(MetaDiff(0, 1, timestamp=MAX_PRINTABLE_TIMESTAMP + 1))


def test_get_max_progress_diff():
    a, b, c = diff(0, 5), diff(2, 5), diff(1, 4)
    assert get_max_progress_diff([a, b, c]) == b
    assert get_max_progress_diff([a, c]) == a
    tie = MetaDiff(snap(0), snap(5, 9))
    assert get_max_progress_diff([a, tie]) is a  # first wins
    with pytest.raises(OperationError):
        get_max_progress_diff([])


# ---------------------------------------------------------------------------------------
# DiffChain details beyond meta_test


def test_chain_add_remove():
    chain = DiffChain([diff(0, 1)])
    with pytest.raises(OperationError, match="already exists"):
        chain.add(diff(0, 1, True))  # same snapshots, other flags: same diff to WalB
    assert diff(0, 1, True) in chain
    assert chain.get(diff(0, 1, True)) == diff(0, 1)
    chain.remove(diff(0, 1))
    assert len(chain) == 0
    with pytest.raises(OperationError, match="not found"):
        chain.remove(diff(0, 1))
    chain.discard(diff(0, 1))
    chain.add(diff(0, 1))
    chain.discard(diff(0, 1))
    assert diff(0, 1) not in chain and "x" not in chain
    chain.add(diff(3, 4))
    chain.add(diff(1, 2))
    chain.add(diff(1, 3))
    assert list(chain) == [diff(1, 2), diff(1, 3), diff(3, 4)]
    assert chain.in_range(1, 3) == [diff(1, 2), diff(1, 3)]
    assert chain.in_range(2) == [diff(3, 4)]
    with pytest.raises(OperationError):
        chain.in_range(3, 3)
    assert "|1|-->|2|" in repr(chain)


def test_restorable_list_entries():
    chain = DiffChain([diff(0, 1, True, 1000), diff(1, 2, True, 1001), diff(2, 3, False, 1002)])
    base = state(snap(0), ts=900)
    assert chain.restorable_list(base) == [Restorable(0, 900, False), Restorable(2, 1001, True),
                                           Restorable(3, 1002, True)]
    assert chain.restorable_list(base, include_implicit=True) == [
        Restorable(0, 900, False), Restorable(1, 1000, False), Restorable(2, 1001, True), Restorable(3, 1002, True)]
    # an applying base is listed only once finished
    applying = begin_applying(base, diff(0, 1, True, 1000), diff(1, 2, True, 1001))
    assert [r.gid for r in chain.restorable_list(applying, include_implicit=True)] == [2, 3]
    # an applying base that the diffs held cannot finish
    with pytest.raises(OperationError):
        chain.restorable_list(state(snap(0), snap(7)))


def test_diffs_to_apply_applying_base():
    chain = DiffChain([diff(i, i + 1, True, 1000 + i) for i in range(6)])
    applying = state(snap(0), snap(3))
    assert len(chain.diffs_to_apply(applying, 1)) == 3  # never less than the applying base needs
    assert len(chain.diffs_to_apply(applying, 5, max_count=2)) == 3
    assert len(chain.diffs_to_apply(state(snap(0)), 5, max_count=2)) == 2
    assert len(chain.diffs_to_restore(state(snap(0)), 5, max_count=2)) == 2
    assert chain.latest_state(applying) == state(snap(6), ts=1005)


def test_mergeable_diffs_limits():
    v = [MetaDiff(i, i + 1, is_mergeable=True, timestamp=1000 + i, data_size=100) for i in range(6)]
    chain = DiffChain(v)
    assert chain.mergeable_diffs(0) == v
    assert chain.mergeable_diffs(1, gid_e=4) == v[1:4]
    assert chain.mergeable_diffs(4, gid_e=4) == []
    assert chain.mergeable_diffs(0, max_size_bytes=250) == v[:2]
    assert chain.mergeable_diffs(0, max_size_bytes=10) == v[:1]  # the first always stays
    assert chain.mergeable_diffs(0, max_count=3) == v[:3]
    assert chain.mergeable_diffs(7) == []
    assert chain.mergeable_diffs(0, gid_e=99) == v
    # a non-mergeable diff (explicit snapshot at its start) stops the run
    chain = DiffChain([diff(0, 1, True), diff(1, 2, False), diff(2, 3, True)])
    assert chain.mergeable_diffs(0) == [diff(0, 1, True)]
    assert chain.mergeable_diffs(1) == [diff(1, 2, False), diff(2, 3, True)]


def test_applicable_diffs_pred():
    chain = DiffChain([diff(0, 1, True), diff(1, 2, True), diff(2, 3, False), diff(3, 4, True)])
    assert chain.applicable_diffs(snap(0), pred=lambda d, after: d.is_mergeable) == [diff(0, 1, True),
                                                                                    diff(1, 2, True)]
    assert chain.applicable_diffs(snap(0), pred=lambda d, after: after.gid_b < 3) == [diff(0, 1, True),
                                                                                     diff(1, 2, True)]
    with pytest.raises(OperationError, match="no clean snapshot"):
        DiffChain([diff((0, 9), (1, 9))]).oldest_clean_state(state(snap(0, 9)))


def test_applicable_mergeable_diffs():
    chain = DiffChain([diff(0, 1, True), diff(1, 2, True), diff(2, 3, False), diff(3, 4, True)])
    assert chain.applicable_mergeable_diffs(snap(0)) == [diff(0, 1, True), diff(1, 2, True)]
    assert chain.applicable_mergeable_diffs(snap(2)) == [diff(2, 3), diff(3, 4, True)]
    assert chain.applicable_mergeable_diffs(snap(9)) == []


def test_comp_diff_in_chain():
    """A hash-repl comp diff applies only at its exact start."""
    comp = MetaDiff(snap(5), snap(9, 12), is_mergeable=True, is_comp_diff=True)
    chain = DiffChain([diff(0, 5), comp])
    assert chain.applicable_diffs(snap(0)) == [diff(0, 5), comp]
    assert chain.applicable_diffs(snap(6)) == []
    assert chain.mergeable_diffs(0) == [diff(0, 5)]


def test_erase_before():
    chain = DiffChain([diff(0, 1), diff(0, 3), diff(1, 2), diff(2, 4), diff(4, 5)])
    assert chain.erase_before(2) == [diff(0, 1), diff(1, 2)]
    assert list(chain) == [diff(0, 3), diff(2, 4), diff(4, 5)]
    assert chain.erase_before(0) == []


def test_set_snapshot_enabled():
    chain = DiffChain([diff(0, 1, False), diff(1, 2, True), diff(1, 3, False)])
    changed = chain.set_snapshot_enabled(1, enabled=True)
    assert changed == [(diff(1, 2, True), diff(1, 2, False))]
    assert chain.get(diff(1, 2)) == diff(1, 2, False)
    assert chain.restorable_list(state(snap(0)))[-1].gid == 3
    assert chain.set_snapshot_enabled(1, enabled=True) == []
    changed = chain.set_snapshot_enabled(1, enabled=False)
    assert [new.is_mergeable for _, new in changed] == [True, True]
    assert diff_file_name(changed[0][1]) == "19700101000000-M--1-2.wdiff"
    with pytest.raises(OperationError):
        chain.set_snapshot_enabled(7, enabled=True)


def test_can_apply_applying_state():
    applying = state(snap(0), snap(5))
    assert not can_apply(applying, diff(0, 3))  # stops short of the applying end
    assert can_apply(applying, diff(0, 3), diff(3, 5))
    assert can_apply(applying, diff(0, 7))
    with pytest.raises(OperationError):
        end_applying(applying, diff(0, 3))
    with pytest.raises(OperationError):
        end_applying(applying)
    with pytest.raises(OperationError, match="cannot apply"):
        begin_applying(applying, diff(0, 3))
    assert diff((0, 1), 2).is_dirty and not diff(0, 2).is_dirty
    assert end_applying(state(snap(4))) == state(snap(4))
    assert begin_applying(state(snap(4))) == state(snap(4))
    with pytest.raises(OperationError, match="no diffs"):
        merge()
    assert not can_merge()
    assert merge(diff(0, 1)) == diff(0, 1)


# ---------------------------------------------------------------------------------------
# Storage gid assignment (walb.md §5.7)


def test_next_explicit_gid():
    pre = MetaLsidGid(lsid=100, gid=5)
    assert next_explicit_gid(pre, 100, 64) == 6
    assert next_explicit_gid(pre, 163, 64) == 6
    assert next_explicit_gid(pre, 164, 64) == 7
    assert next_explicit_gid(pre, 100 + 3 * 64 + 1, 64) == 9  # leaves gids 6..8 for split transfers
    with pytest.raises(OperationError):
        next_explicit_gid(pre, 99, 64)
    with pytest.raises(BadField):
        next_explicit_gid(pre, 100, 0)


def test_needs_implicit_snapshot():
    newest = MetaLsidGid(100, 5, is_mergeable=False, timestamp=NOW)
    assert needs_implicit_snapshot(None, 0, NOW, 10)
    assert not needs_implicit_snapshot(newest, 100, NOW + 60, 10)  # no new logs
    assert not needs_implicit_snapshot(newest, 101, NOW + 9, 10)  # too recent
    assert needs_implicit_snapshot(newest, 101, NOW + 10, 10)


def test_transfer_whole_step():
    done = MetaLsidGid(0, 0, is_mergeable=False, timestamp=NOW)
    rec = MetaLsidGid(500, 1, is_mergeable=False, timestamp=NOW + 1)
    rec_e, lsid_e = transfer_end([rec], done, 64, 1000)
    assert (rec_e, lsid_e) == (rec, 500)  # one gid step goes whole even if over the limit
    assert transfer_diff(done, rec_e, lsid_e) == MetaDiff(0, 1, timestamp=NOW + 1)
    assert done_after_transfer(done, rec_e, lsid_e) == rec


def test_transfer_split():
    done = MetaLsidGid(0, 0, is_mergeable=False, timestamp=NOW)
    rec = MetaLsidGid(200, next_explicit_gid(done, 200, 64), is_mergeable=False, timestamp=NOW + 1)
    assert rec.gid == 4
    rec_e, lsid_e = transfer_end([rec], done, 64, 1000)
    assert (rec_e, lsid_e) == (rec, 64)
    assert transfer_diff(done, rec_e, lsid_e) == MetaDiff(0, 1, timestamp=NOW + 1)
    new_done = done_after_transfer(done, rec_e, lsid_e)
    assert new_done == MetaLsidGid(64, 1, is_mergeable=True, timestamp=NOW)
    assert not is_sent(rec, new_done)
    # the next transfers carry on from the implicit point
    rec_e, lsid_e = transfer_end([rec], new_done, 64, 1000)
    assert lsid_e == 128
    assert transfer_diff(new_done, rec_e, lsid_e) == MetaDiff(1, 2, is_mergeable=True, timestamp=NOW + 1)


def test_transfer_extends_over_mergeable():
    done = MetaLsidGid(0, 0, timestamp=NOW)
    queue = [MetaLsidGid(10, 1, True, NOW + 1), MetaLsidGid(20, 2, True, NOW + 2), MetaLsidGid(30, 3, False, NOW + 3),
             MetaLsidGid(40, 4, True, NOW + 4)]
    assert transfer_end(queue, done, 64, 1000) == (queue[2], 30)  # stops after the explicit one
    assert transfer_end(queue, done, 15, 1000) == (queue[0], 10)  # size limit
    assert transfer_end(queue, done, 64, 25) == (queue[1], 20)  # permanent lsid
    assert is_sent(queue[0], MetaLsidGid(10, 1)) and is_sent(queue[0], MetaLsidGid(20, 2))
    assert not is_sent(queue[1], MetaLsidGid(20, 1))
    with pytest.raises(OperationError):
        transfer_end([], done, 64, 1000)
    with pytest.raises(OperationError):
        transfer_end([MetaLsidGid(10, 0)], done, 64, 1000)


# ---------------------------------------------------------------------------------------
# Properties

gids = st.integers(0, UINT64_MAX)
timestamps = st.integers(0, MAX_PRINTABLE_TIMESTAMP)


@st.composite
def snaps(draw):
    gid_b = draw(gids)
    return MetaSnap(gid_b, draw(st.one_of(st.just(gid_b), st.integers(gid_b, UINT64_MAX))))


@st.composite
def diffs(draw):
    b0 = draw(st.integers(0, UINT64_MAX - 1))
    b1 = draw(st.integers(b0, UINT64_MAX - 1))
    e0 = draw(st.integers(b0 + 1, UINT64_MAX))
    e1 = draw(st.integers(max(e0, b1), UINT64_MAX))
    if draw(st.booleans()):  # clean diffs are the common case
        b1, e1 = b0, e0
    return MetaDiff(MetaSnap(b0, b1), MetaSnap(e0, e1), draw(st.booleans()), draw(st.booleans()),
                    draw(timestamps), draw(gids))


@st.composite
def states(draw):
    snap_b = draw(snaps())
    snap_e = None
    if draw(st.booleans()) and snap_b.gid_b < UINT64_MAX:
        gid_b = draw(st.integers(snap_b.gid_b + 1, UINT64_MAX))
        snap_e = MetaSnap(gid_b, draw(st.integers(gid_b, UINT64_MAX)))
    return MetaState(snap_b, snap_e, draw(timestamps))


@st.composite
def chains(draw, start=None, max_size=12, all_mergeable=False):
    """(base, diffs) where diffs is a WalB randDiffList from base."""
    base = draw(snaps().filter(lambda s: s.gid_e < 1 << 60)) if start is None else start

    def pick(n: int) -> int:
        return draw(st.integers(0, n - 1))

    return base, rand_diff_list(pick, base, draw(st.integers(0, max_size)), all_mergeable)


@given(snaps())
def test_snap_str_round_trip(s):
    assert MetaSnap.parse(str(s)) == s


@given(diffs())
def test_diff_str_round_trip(d):
    assert MetaDiff.parse(str(d)) == d


@given(states())
def test_state_str_round_trip(s):
    assert MetaState.parse(str(s)) == s
    assert MetaState.parse(s.to_str(with_timestamp=False), default_timestamp=s.timestamp) == s


@given(diffs())
def test_file_name_round_trip(d):
    assert parse_diff_file_name(diff_file_name(d), data_size=d.data_size) == d


@given(st.text(alphabet="0123456789-MC.wdiffx|,<>", max_size=40) | st.text(max_size=40))
def test_parsers_raise_only_bad_field(text):
    for parse in (parse_diff_file_name, MetaSnap.parse, MetaDiff.parse, MetaState.parse):
        try:
            parse(text)
        except BadField:
            pass


@given(snaps(), diffs())
def test_relation_partition(s, d):
    relation = get_relation(s, d)
    assert can_apply(s, d) == (relation is Relation.APPLICABLE)
    if relation is Relation.APPLICABLE:
        after = apply(s, d)
        assert after.gid_b == d.snap_e.gid_b
    else:
        with pytest.raises(OperationError):
            apply(s, d)


@given(diffs(), diffs(), snaps())
def test_merge_pair_applies_like_sequence(d0, d1, s):
    if can_merge(d0, d1) and can_apply(s, d0) and can_apply(apply(s, d0), d1):
        merged = merge(d0, d1)
        assert contains(merged, d0) and contains(merged, d1)
        assert apply(s, merged) == apply(s, d0, d1)


@given(chains(all_mergeable=True))
def test_merge_applies_like_sequence(chain):
    base, diffs_ = chain
    check_apply_merged(base, diffs_)


@settings(max_examples=50)
@given(chains(start=MetaSnap(0), max_size=20), st.lists(st.integers(0, 1 << 20), max_size=10))
def test_merge_and_gc_keep_chain_end(chain, starts):
    base, v = chain
    diff_chain = DiffChain(v)
    latest = diff_chain.latest_snap(state(base))
    explicit = diff_chain.restorable_list(state(base))
    for start in starts:
        run = diff_chain.mergeable_diffs(start % (latest.gid_e + 1))
        if len(run) > 1 and merge(*run) not in diff_chain:
            diff_chain.add(merge(*run))
            diff_chain.gc(state(base))
        assert diff_chain.latest_snap(state(base)) == latest
    assert [r.gid for r in diff_chain.restorable_list(state(base))] == [r.gid for r in explicit]
    check_index(diff_chain)


@settings(max_examples=50)
@given(chains(start=MetaSnap(0), max_size=15))
def test_restorable_points_restore_exactly(chain):
    base, v = chain
    diff_chain = DiffChain(v)
    for point in diff_chain.restorable_list(state(base), include_implicit=True):
        restored = end_applying(state(base), *diff_chain.diffs_to_restore(state(base), point.gid))
        assert restored.snap_b == MetaSnap(point.gid)
        assert restored.timestamp == point.timestamp or point.gid == base.gid_b
