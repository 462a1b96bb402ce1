"""Snapshot retention: which restorable snapshots a policy keeps, and how an archive is made to keep exactly those.

The policy is borg's and restic's ``prune`` (docs/retention.md):

* ``keep_last N`` — the N newest snapshots;
* ``keep_within D`` — every snapshot at most D older than the newest one (restic's meaning:
  measured from the newest snapshot, so a volume whose backups stopped keeps its last ones);
* ``keep_hourly/daily/weekly/monthly/yearly N`` — for the N newest hours (days, ISO weeks,
  months, years) that hold a snapshot, the newest snapshot in each, in UTC;
* ``keep_gids`` — these gids whatever the rules say.

Every restorable snapshot counts, explicit and implicit. The newest one is always kept, and so
is every gid a restore is using (a restored image, or a restore running). The rest is removed.

An archive keeps exactly the kept snapshots once two or three WalB operations have run (walb.md
§5.6): ``apply`` up to the oldest kept gid (the earlier ones go into the base and their diffs are
deleted); ``disable-snapshot`` on every explicit snapshot between two kept ones; then one
``merge`` per run of removed snapshots, from the kept gid before it to the kept gid after it.
Retention never makes a snapshot explicit: implicit snapshots it keeps stay implicit, so the
worker's merges (docs/worker.md) may still thin them as configured. :func:`decide` and :func:`plan` are pure;
:func:`enforce` runs the plan through a :class:`~walbops.controller.Controller`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import OperationError, RemoteError, UsageError
from .gid import MetaDiff, Restorable, format_pretty_time

if TYPE_CHECKING:
    from .controller import Controller, Server

logger = logging.getLogger("walbops.retention")

# ------------------------------------------------------------------------------------------
# The policy

# Units of --keep-within, as restic writes them (``1y6m``, ``7d``, ``36h``): calendar years and
# months, and fixed weeks, days and hours. ``m`` is a month, as in borg and restic.
_WITHIN_RE = re.compile(r"(?:[0-9]+[ymwdh])+", re.ASCII)
_WITHIN_PART_RE = re.compile(r"([0-9]+)([ymwdh])", re.ASCII)
_FIXED_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600}


@dataclass(frozen=True)
class Duration:
    """A --keep-within span: calendar months (years count 12) plus fixed seconds."""

    months: int = 0
    seconds: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """``7d``, ``36h``, ``2w``, ``1y6m``: numbers with y, m (month), w, d, h.

        Raises:
            UsageError: anything else.
        """
        if not _WITHIN_RE.fullmatch(text):
            raise UsageError(f"duration {text!r}: expected numbers with units y, m (months), w, d, h, e.g. 7d or 1y6m")
        months = seconds = 0
        for number, unit in _WITHIN_PART_RE.findall(text):
            if unit == "y":
                months += 12 * int(number)
            elif unit == "m":
                months += int(number)
            else:
                seconds += int(number) * _FIXED_SECONDS[unit]
        return cls(months, seconds)

    def before(self, timestamp: int) -> int:
        """The time this span before ``timestamp`` (calendar months: the same day, clamped)."""
        moment = datetime.fromtimestamp(timestamp, UTC)
        month_index = moment.year * 12 + moment.month - 1 - self.months
        year, month = divmod(month_index, 12)
        if year < 1970:
            return 0
        last_day = _days_in_month(year, month + 1)
        moment = moment.replace(year=year, month=month + 1, day=min(moment.day, last_day))
        return int(moment.timestamp()) - self.seconds

    def __str__(self) -> str:
        years, months = divmod(self.months, 12)
        parts = [f"{years}y" if years else "", f"{months}m" if months else ""]
        rest = self.seconds
        for unit, size in (("d", 86400), ("h", 3600)):
            count, rest = divmod(rest, size)
            parts.append(f"{count}{unit}" if count else "")
        return "".join(parts) + (f"+{rest}s" if rest else "") or "0h"


def _days_in_month(year: int, month: int) -> int:
    following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return (following - datetime(year, month, 1, tzinfo=UTC)).days


# The calendar rules: name, and the bucket a timestamp falls in.
_BUCKETS: tuple[tuple[str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
)


@dataclass(frozen=True)
class Policy:
    """What to keep. At least one rule must be given (as restic insists: no rule removes nothing
    by mistake)."""

    keep_last: int = 0
    keep_within: Duration | None = None
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_gids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        counts = [self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly,
                  self.keep_yearly]
        if any(count < 0 for count in counts):
            raise UsageError("retention counts cannot be negative")
        if not any(counts) and self.keep_within is None and not self.keep_gids:
            raise UsageError("a retention policy needs at least one rule (keep-last, keep-within, keep-hourly, "
                             "keep-daily, keep-weekly, keep-monthly, keep-yearly or keep-gid)")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "Policy":
        """From config or module options: ``keep_last``, ``keep_within`` (``7d``), ``keep_daily`` …, ``keep_gids``.

        Raises:
            UsageError: an unknown key or a bad value (the key is named).
        """
        known = {"keep_last", "keep_within", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                 "keep_yearly", "keep_gids"}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"retention: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            if key == "keep_within":
                values[key] = Duration.parse(str(value))
            elif key == "keep_gids":
                values[key] = frozenset(int(gid) for gid in value)
            elif isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"retention: {key} must be a whole number, not {value!r}")
            else:
                values[key] = value
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {key: getattr(self, f"keep_{key}") for key in
                                  ("last", "hourly", "daily", "weekly", "monthly", "yearly")
                                  if getattr(self, f"keep_{key}")}
        if self.keep_within is not None:
            result["within"] = str(self.keep_within)
        if self.keep_gids:
            result["gids"] = sorted(self.keep_gids)
        return result


@dataclass(frozen=True)
class Decision:
    """Which snapshots stay and why: ``kept`` maps a gid to its reasons (``last``, ``daily`` …)."""

    kept: dict[int, list[str]]
    removed: list[int]
    timestamps: dict[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {"kept": [{"gid": gid, "time": format_pretty_time(self.timestamps[gid]), "reasons": reasons}
                         for gid, reasons in sorted(self.kept.items())],
                "removed": self.removed}


def decide(snapshots: Iterable[Restorable], policy: Policy, protected: Iterable[int] = ()) -> Decision:
    """Apply ``policy`` to the restorable ``snapshots`` (clean snapshots with their timestamps).

    Args:
        protected: gids a restore is using; kept whatever the policy says.
    """
    ordered = sorted(snapshots, key=lambda snap: (snap.timestamp, snap.gid), reverse=True)  # newest first
    kept: dict[int, list[str]] = {}

    def keep(gid: int, reason: str) -> None:
        kept.setdefault(gid, []).append(reason)

    if not ordered:
        return Decision({}, [], {})
    newest = ordered[0]
    keep(newest.gid, "newest")
    for snap in ordered[:policy.keep_last]:
        keep(snap.gid, "last")
    if policy.keep_within is not None:
        since = policy.keep_within.before(newest.timestamp)
        for snap in ordered:
            if snap.timestamp >= since:
                keep(snap.gid, "within")
    for name, bucket_of in _BUCKETS:
        count = getattr(policy, f"keep_{name}")
        seen: set[tuple[int, ...]] = set()
        for snap in ordered:
            if len(seen) >= count:
                break
            bucket = bucket_of(datetime.fromtimestamp(snap.timestamp, UTC))
            if bucket not in seen:
                seen.add(bucket)
                keep(snap.gid, name)
    gids = {snap.gid for snap in ordered}
    for gid in sorted(policy.keep_gids & gids):
        keep(gid, "gid")
    for gid in sorted(set(protected) & gids):
        keep(gid, "in use")
    removed = sorted(gids - set(kept))
    return Decision(kept, removed, {snap.gid: snap.timestamp for snap in ordered})


# ------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Plan:
    """The archive operations that make exactly ``kept`` restorable."""

    apply_gid: int | None  # apply up to here first (None: the oldest kept is the base already)
    disable: list[int]  # chain points between kept snapshots that are explicit: made mergeable
    merges: list[tuple[int, int]]  # (from kept gid, to the next kept gid)
    unmergeable: list[tuple[int, int]] = field(default_factory=list)  # runs a compared diff holds together

    @property
    def empty(self) -> bool:
        return self.apply_gid is None and not (self.disable or self.merges)

    def as_dict(self) -> dict[str, Any]:
        return {"apply": self.apply_gid, "disable": self.disable,
                "merge": [list(pair) for pair in self.merges], "unmergeable": [list(p) for p in self.unmergeable]}


def plan(chain: Sequence[MetaDiff], restorable: Sequence[Restorable], kept: Iterable[int]) -> Plan:
    """The operations that leave exactly ``kept`` restorable.

    Args:
        chain: the applicable diffs from the base, in order (``get applicable-diff``).
        restorable: every restorable snapshot, explicit and implicit (``get restorable all``).
        kept: the gids to keep (a subset of the restorable ones, the newest among them).
    """
    keep = sorted(set(kept))
    if not keep:
        return Plan(None, [], [])
    first = min(snap.gid for snap in restorable)
    oldest = keep[0]
    apply_gid = oldest if oldest > first else None
    disable: list[int] = []
    merges: list[tuple[int, int]] = []
    unmergeable: list[tuple[int, int]] = []
    for low, high in zip(keep, keep[1:], strict=False):
        inside = [diff for diff in chain if low <= diff.snap_b.gid_b < high]
        if len(inside) < 2:
            continue  # one diff from kept to kept: nothing between them
        if any(diff.is_comp_diff for diff in inside):
            unmergeable.append((low, high))
            continue
        disable += [diff.snap_b.gid_b for diff in inside[1:] if not diff.is_mergeable]
        merges.append((low, high))
    return Plan(apply_gid, disable, merges, unmergeable)


# ------------------------------------------------------------------------------------------
# Running it against an archive


@dataclass
class Outcome:
    """What a retention run on one volume decided and did."""

    vol: str
    decision: Decision
    plan: Plan
    dry_run: bool
    bytes_before: int = 0  # [bytes] diffs + base on the archive's disk
    bytes_after: int = 0
    skipped: list[str] = field(default_factory=list)  # steps left out because a restore started meanwhile

    @property
    def changed(self) -> bool:
        return not self.plan.empty

    @property
    def bytes_freed(self) -> int | None:
        return None if self.dry_run else self.bytes_before - self.bytes_after

    def as_dict(self) -> dict[str, Any]:
        return {"vol": self.vol, **self.decision.as_dict(), "plan": self.plan.as_dict(), "dry_run": self.dry_run,
                "changed": self.changed, "bytes_before": self.bytes_before,
                "bytes_after": None if self.dry_run else self.bytes_after, "bytes_freed": self.bytes_freed,
                "skipped": self.skipped}


def archive_usage(ctl: "Controller", archive: "Server | str", vol: str) -> int:
    """Bytes the volume takes on the archive: its diffs and its base."""
    return ctl.get_total_diff_size(archive, vol) + int(ctl.get(archive, "base-usage", vol))


def in_use(ctl: "Controller", archive: "Server | str", vol: str) -> set[int]:
    """Gids a restore is using: restored images and restores running."""
    return {int(gid) for gid in ctl.get(archive, "restored", vol)} | \
        {int(gid) for gid in ctl.get(archive, "restoring", vol)}


def restorable_snapshots(ctl: "Controller", archive: "Server | str", vol: str) -> list[Restorable]:
    return [Restorable(int(entry["gid"]), int(entry["timestamp"]), bool(entry["explicit"]))
            for entry in ctl.get(archive, "restorable", vol, "all")]


def enforce(ctl: "Controller", archive: "Server | str", vol: str, policy: Policy, dry_run: bool = False,
            timeout: float = 3600.0, log: Callable[[str], None] = logger.info) -> Outcome:
    """Decide with ``policy`` on the archive's snapshots of ``vol`` and, unless ``dry_run``, make it so.

    Each destructive step first checks that no restore started on a gid it would remove since
    the decision; such a step is left out (it stays for the next run) and named in ``skipped``.

    Raises:
        OperationError: the volume is not archived, its base is applying, or a step failed (the
            steps done stay done; running again finishes the job).
    """
    state = ctl.get_state(archive, vol)
    if state != "Archived":
        raise OperationError(f"{vol}: retention needs an Archived volume, it is {state}")
    if ctl.get_base(archive, vol).is_applying:
        raise OperationError(f"{vol}: the base is applying; the archive finishes that first")
    snapshots = restorable_snapshots(ctl, archive, vol)
    decision = decide(snapshots, policy, in_use(ctl, archive, vol))
    steps = plan(ctl.get_applicable_diff_list(archive, vol), snapshots, decision.kept)
    outcome = Outcome(vol, decision, steps, dry_run, archive_usage(ctl, archive, vol))
    log(f"{vol}: policy {policy.as_dict()} keeps {sorted(decision.kept)}, removes {decision.removed}"
        + (" (dry run)" if dry_run else ""))
    if dry_run or steps.empty:
        outcome.bytes_after = outcome.bytes_before
        return outcome
    deadline = time.monotonic() + timeout
    kept = sorted(decision.kept)

    def still_free(low: int, high: int, what: str) -> bool:
        busy = in_use(ctl, archive, vol) & {gid for gid in decision.removed if low <= gid < high}
        if busy:
            outcome.skipped.append(f"{what}: gids {sorted(busy)} are being restored")
            log(f"{vol}: {what} left out: gids {sorted(busy)} are being restored")
        return not busy

    if steps.apply_gid is not None and still_free(0, steps.apply_gid, f"apply {steps.apply_gid}"):
        log(f"{vol}: apply up to gid {steps.apply_gid}")
        ctl.apply(archive, vol, steps.apply_gid, max(1.0, deadline - time.monotonic()))
    for low, high in steps.merges:
        if not still_free(low + 1, high, f"merge {low}..{high}"):
            continue
        inside = [gid for gid in steps.disable if low < gid < high]
        if inside:
            log(f"{vol}: disable snapshots {inside}")
            ctl.disable_snapshot(archive, vol, inside)
        log(f"{vol}: merge {low}..{high}")
        try:
            ctl.merge(archive, vol, low, high, timeout=max(1.0, deadline - time.monotonic()))
        except RemoteError as exc:
            raise OperationError(f"{vol}: merge {low}..{high} failed: {exc}") from exc
    outcome.bytes_after = archive_usage(ctl, archive, vol)
    # Snapshots newer than the decision arrived meanwhile; they are not this run's to judge.
    remaining = {snap.gid for snap in restorable_snapshots(ctl, archive, vol) if snap.gid <= kept[-1]}
    unexpected = remaining - set(kept) - {gid for low, high in steps.unmergeable
                                          for gid in decision.removed if low < gid < high}
    if unexpected and not outcome.skipped:
        raise OperationError(f"{vol}: after retention, gids {sorted(unexpected)} are still restorable")
    log(f"{vol}: retention done: {len(remaining)} snapshots restorable, "
        f"{outcome.bytes_before - outcome.bytes_after} bytes freed")
    return outcome
