"""The archive's lifecycle: restore time against chain length, apply and merge throughput, retention.

Prints one JSON object; every number is compared with a baseline measured in the same run:

* restore of the latest gid of a 1 GiB volume whose chain holds 1, 10, 100 and 1,000 diffs (the
  same 64 MiB of changes cut into that many), before and after ``apply`` took them into the base
  (the median of three restores each);
  target: after the apply, restore time does not depend on how many diffs were applied
  (``after_apply_spread``, the slowest over the fastest, near 1);
* apply and merge throughput over the diffs' bytes, against a raw copy of the same files;
  target >= 0.5x;
* the archive's bytes on disk before and after a retention run over 200 snapshots.

The archive agent runs as a process on loopback, fed by the wire protocol as a storage and a
proxy would (tests/archive_history.py). The page cache is dropped before each timed step
(needs root).

    .venv/bin/python benchmarks/lifecycle.py [--quick] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS)]
from _cluster import drop_caches  # noqa: E402
from archive_history import BASE_TIME, ArchiveHistory, MiB  # noqa: E402

COPY_BUFFER = 1 << 20  # [bytes]
THROUGHPUT_TARGET = 0.5  # apply and merge / raw copy
HOUR = 3600


def raw_copy(paths: list[Path], target_dir: Path) -> float:
    """Copy the files with a plain read/write loop and fsync; seconds (caches dropped first)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    drop_caches()
    started = time.perf_counter()
    buffer = bytearray(COPY_BUFFER)
    view = memoryview(buffer)
    for path in paths:
        with open(path, "rb", buffering=0) as reader, open(target_dir / path.name, "wb", buffering=0) as writer:
            while count := reader.readinto(buffer):
                writer.write(view[:count])
            os.fsync(writer.fileno())
    seconds = time.perf_counter() - started
    shutil.rmtree(target_dir)
    return seconds


def timed(archive: ArchiveHistory, action: str, step) -> float:  # type: ignore[no-untyped-def]
    """Run ``step`` with a cold page cache; the seconds the archive spent on ``action`` (its own clock,
    from the start to the end of the action: no polling in it)."""
    drop_caches()
    step()
    outcome = archive.ctl.get("a0", "action-result", archive.vol, action)
    return float(outcome["finished"]) - float(outcome["started"])


def diff_paths(archive: ArchiveHistory) -> list[Path]:
    return sorted((archive.base_dir / archive.vol).glob("*.wdiff"))


def history(root: Path, size: int, base_fill: int, count: int, changes: int, explicit: bool = True) -> ArchiveHistory:
    """An archive holding a full backup and ``count`` snapshots sharing ``changes`` random writes."""
    # The same seed for every chain: the same base and the same writes, cut into ``count`` diffs.
    archive = ArchiveHistory(root, size=size, seed=1, oracle=False)
    archive.start()
    archive.full_backup(fill=base_fill)
    per_diff = max(1, changes // count)
    for index in range(count):
        archive.add_snapshot(BASE_TIME + (index + 1) * 60, explicit=explicit or index == count - 1, writes=per_diff)
    return archive


def restore_latest(archive: ArchiveHistory, runs: int = 3) -> float:
    """The median of ``runs`` restores of the latest gid (one alone is at the mercy of writeback)."""
    times = []
    for _ in range(runs):
        times.append(timed(archive, "Restore",
                           lambda: archive.ctl.restore("a0", archive.vol, archive.latest, timeout=3600)))
        archive.ctl.del_restored("a0", archive.vol, archive.latest)
    return statistics.median(times)


def chain_lengths(work: Path, size: int, base_fill: int, changes: int, lengths: list[int]) -> dict:
    results = {}
    for count in lengths:
        archive = history(work / f"chain{count}", size, base_fill, count, changes)
        try:
            paths = diff_paths(archive)
            diff_bytes = sum(path.stat().st_size for path in paths)
            copy = raw_copy(paths, work / "copy")
            before = restore_latest(archive)
            apply = timed(archive, "Apply",
                          lambda: archive.ctl.apply("a0", archive.vol, archive.latest, timeout=3600))  # noqa: B023
            after = restore_latest(archive)
            results[str(count)] = {
                "diffs": count, "diff_bytes": diff_bytes,
                "restore_before_apply_s": round(before, 3), "restore_after_apply_s": round(after, 3),
                "apply_s": round(apply, 3), "apply_mb_per_s": round(diff_bytes / apply / 1e6, 1),
                "raw_copy_s": round(copy, 3), "apply_vs_raw_copy": round(copy / apply, 3),
            }
        finally:
            archive.close()
            shutil.rmtree(archive.root, ignore_errors=True)
    return results


def merge_throughput(work: Path, size: int, base_fill: int, changes: int, count: int) -> dict:
    archive = history(work / "merge", size, base_fill, count, changes, explicit=False)
    try:
        paths = diff_paths(archive)
        diff_bytes = sum(path.stat().st_size for path in paths)
        copy = raw_copy(paths, work / "copy")
        first = min(archive.restorable())
        merge = timed(archive, "Merge", lambda: archive.ctl.merge("a0", archive.vol, first, timeout=3600))
        return {"diffs": count, "diff_bytes": diff_bytes, "merged_into": archive.ctl.get_num_diff("a0", archive.vol),
                "merge_s": round(merge, 3), "merge_mb_per_s": round(diff_bytes / merge / 1e6, 1),
                "raw_copy_s": round(copy, 3), "merge_vs_raw_copy": round(copy / merge, 3)}
    finally:
        archive.close()
        shutil.rmtree(archive.root, ignore_errors=True)


def retention(work: Path, size: int, base_fill: int, count: int) -> dict:
    archive = ArchiveHistory(work / "retention", size=size, seed=200, oracle=False)
    archive.start()
    try:
        archive.full_backup(fill=base_fill)
        when = BASE_TIME
        for _ in range(count):
            when += archive.rng.randint(2 * HOUR, 20 * HOUR)
            archive.add_snapshot(when, explicit=archive.rng.random() < 0.6, writes=8)
        snapshots = len(archive.restorable())
        before = archive.disk_use()
        from walbops.retention import Duration, Policy, enforce

        policy = Policy(keep_last=5, keep_within=Duration.parse("3d"), keep_daily=14, keep_weekly=6, keep_monthly=4)
        started = time.perf_counter()
        outcome = enforce(archive.ctl, "a0", archive.vol, policy, log=lambda line: None)
        seconds = time.perf_counter() - started
        after = archive.disk_use()
        return {"snapshots": snapshots, "kept": len(outcome.decision.kept), "removed": len(outcome.decision.removed),
                "disk_bytes_before": before, "disk_bytes_after": after, "reported_bytes_freed": outcome.bytes_freed,
                "disk_ratio_after_before": round(after / before, 3), "seconds": round(seconds, 2)}
    finally:
        archive.close()
        shutil.rmtree(archive.root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks the machinery (the tests' mode)")
    parser.add_argument("--dir", default=None, help="scratch directory (needs ~4 GiB, 0.5 GiB with --quick)")
    args = parser.parse_args()
    if args.quick:
        size, base_fill, changes, lengths, merges, snapshots = 32 * MiB, 64, 64, [1, 10], 10, 30
    else:
        size, base_fill, changes, lengths, merges, snapshots = 1024 * MiB, 8192, 2048, [1, 10, 100, 1000], 100, 200
    work = Path(tempfile.mkdtemp(prefix="walbops-lifecycle-", dir=args.dir))
    try:
        chains = chain_lengths(work, size, base_fill, changes, lengths)
        merge = merge_throughput(work, size, base_fill, changes, merges)
        pruned = retention(work, size, base_fill // 8, snapshots)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    afters = [entry["restore_after_apply_s"] for entry in chains.values()]
    spread = round(max(afters) / min(afters), 3)
    applies = [entry["apply_vs_raw_copy"] for entry in chains.values()]
    print(json.dumps({
        "benchmark": "lifecycle", "quick": args.quick, "volume_bytes": size, "changed_writes": changes,
        "chains": chains, "merge": merge, "retention": pruned,
        "targets": {
            "after_apply_spread": spread, "after_apply_independent": spread <= 1.5,
            "apply_vs_raw_copy_min": min(applies), "merge_vs_raw_copy": merge["merge_vs_raw_copy"],
            "throughput_target": THROUGHPUT_TARGET,
            "apply_ok": min(applies) >= THROUGHPUT_TARGET, "merge_ok": merge["merge_vs_raw_copy"] >= THROUGHPUT_TARGET,
            "retention_frees": pruned["disk_bytes_after"] < pruned["disk_bytes_before"],
        },
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
