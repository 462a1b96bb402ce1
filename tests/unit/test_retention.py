"""The retention policy (borg/restic prune rules) and the plan that makes an archive follow it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from walbops.errors import UsageError
from walbops.gid import MetaDiff, Restorable
from walbops.retention import Duration, Policy, decide, plan

HOUR = 3600
DAY = 86400


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def snaps(*times: str) -> list[Restorable]:
    return [Restorable(gid, at(text), True) for gid, text in enumerate(times, start=1)]


@pytest.mark.parametrize(("text", "months", "seconds"), [
    ("7d", 0, 7 * DAY), ("36h", 0, 36 * HOUR), ("2w", 0, 14 * DAY), ("1y6m", 18, 0), ("1m2d3h", 1, 2 * DAY + 3 * HOUR),
])
def test_durations(text, months, seconds):
    assert Duration.parse(text) == Duration(months, seconds)


@pytest.mark.parametrize("text", ["", "7", "7x", "d7", "1.5d", "7 d"])
def test_bad_durations_are_named(text):
    with pytest.raises(UsageError, match="duration"):
        Duration.parse(text)


def test_months_are_calendar_months():
    assert Duration.parse("1m").before(at("2026-03-31T12:00:00")) == at("2026-02-28T12:00:00")
    assert Duration.parse("1y").before(at("2024-02-29T00:00:00")) == at("2023-02-28T00:00:00")
    assert Duration.parse("1d").before(at("2026-03-01T00:00:00")) == at("2026-02-28T00:00:00")


def test_a_policy_needs_a_rule():
    with pytest.raises(UsageError, match="at least one rule"):
        Policy()
    with pytest.raises(UsageError, match="unknown keys"):
        Policy.from_mapping({"keep_lats": 3})
    with pytest.raises(UsageError, match="whole number"):
        Policy.from_mapping({"keep_daily": "3"})
    assert Policy.from_mapping({"keep_within": "2d", "keep_gids": [4]}).as_dict() == {"within": "2d", "gids": [4]}


def test_keep_last_and_newest():
    history = snaps("2026-01-01T00:00:00", "2026-01-01T01:00:00", "2026-01-01T02:00:00", "2026-01-01T03:00:00")
    decision = decide(history, Policy(keep_last=2))
    assert sorted(decision.kept) == [3, 4] and decision.removed == [1, 2]
    assert decision.kept[4] == ["newest", "last"]
    # A policy that keeps nothing still keeps the newest.
    assert sorted(decide(history, Policy(keep_gids=frozenset({99}))).kept) == [4]


def test_calendar_buckets_keep_the_newest_of_each():
    history = snaps("2026-01-01T10:00:00", "2026-01-01T22:00:00",  # Thursday
                    "2026-01-02T09:00:00", "2026-01-02T23:30:00",  # Friday
                    "2026-01-05T08:00:00",  # Monday, the next ISO week
                    "2026-02-01T00:00:00")  # another month
    assert sorted(decide(history, Policy(keep_daily=3)).kept) == [4, 5, 6]
    # ISO weeks: 2026-W01 holds gids 1-4, W02 gid 5, W05 gid 6.
    assert sorted(decide(history, Policy(keep_weekly=2)).kept) == [5, 6]
    assert sorted(decide(history, Policy(keep_weekly=3)).kept) == [4, 5, 6]
    assert sorted(decide(history, Policy(keep_monthly=5)).kept) == [5, 6]
    assert sorted(decide(history, Policy(keep_hourly=2)).kept) == [5, 6]
    assert sorted(decide(history, Policy(keep_yearly=1)).kept) == [6]


def test_keep_within_counts_from_the_newest_snapshot():
    history = snaps("2026-01-01T00:00:00", "2026-01-05T00:00:00", "2026-01-06T00:00:00", "2026-01-07T00:00:00")
    assert sorted(decide(history, Policy(keep_within=Duration.parse("2d"))).kept) == [2, 3, 4]


def test_gids_in_use_and_asked_for_are_kept_with_their_reason():
    history = snaps("2026-01-01T00:00:00", "2026-01-02T00:00:00", "2026-01-03T00:00:00")
    decision = decide(history, Policy(keep_last=1, keep_gids=frozenset({1})), protected={2, 77})
    assert decision.kept == {3: ["newest", "last"], 1: ["gid"], 2: ["in use"]}
    assert decision.removed == []


def chain_of(flags: str, start: int = 0) -> list[MetaDiff]:
    """Diffs start->start+1->...: flag per diff, M when the snapshot it starts at is implicit."""
    return [MetaDiff(start + i, start + i + 1, is_mergeable=flag == "M") for i, flag in enumerate(flags)]


def restorable_of(chain: list[MetaDiff]) -> list[Restorable]:
    base = chain[0].snap_b.gid_b
    found = [Restorable(base, 0, False)]
    for i, diff in enumerate(chain):
        explicit = i + 1 == len(chain) or not chain[i + 1].is_mergeable
        found.append(Restorable(diff.snap_e.gid_b, 0, explicit))
    return found


def test_plan_applies_to_the_oldest_kept_and_merges_the_runs_between_kept():
    chain = chain_of("--M---M-")  # snapshots 0..8; 2 and 6 implicit
    steps = plan(chain, restorable_of(chain), kept=[3, 6, 8])
    assert steps.apply_gid == 3
    assert steps.merges == [(3, 6), (6, 8)]
    assert steps.disable == [4, 5, 7]  # explicit points inside the runs
    assert not steps.empty


def test_plan_of_what_is_kept_already_is_empty():
    chain = chain_of("----")
    assert plan(chain, restorable_of(chain), kept=[0, 1, 2, 3, 4]).empty
    assert plan(chain, restorable_of(chain), kept=[2, 3, 4]).as_dict() == {
        "apply": 2, "disable": [], "merge": [], "unmergeable": []}


def test_a_compared_diff_is_never_merged():
    chain = [MetaDiff(0, 1), MetaDiff(1, 2, is_comp_diff=True), MetaDiff(2, 3)]
    steps = plan(chain, restorable_of(chain), kept=[0, 3])
    assert steps.merges == [] and steps.unmergeable == [(0, 3)]
