"""Replication from one archive to another, against a raw TCP copy and a hash scan.

Prints one JSON object (progress goes to stderr). A walb device and the storage, proxy and two
archive agents run on this machine over 127.0.0.1 (benchmarks/_cluster.py); the baselines are
benchmarks/backup.py's, run in the same run on the same data with the page cache dropped before
each timed step:

(a) full replication of the volume (1 MiB regions half random, half zeros) from a0 to a1, timed
    from ``replicate`` until a1 can restore the gid, against a raw TCP copy of a0's base image
    (1 MiB reads into a socket, a receiver writing a file and fsyncing), run once before and
    once after, their mean. Target (issue 12): >= 0.7x the copy.
(b) diff replication after 1 % of the volume changed by random 4 KiB writes (restorable on a0
    first), timed likewise, against a hash scan bringing the previous image (the raw copy of (a))
    up to the volume's current one (the ddev file), as blocksync does. Target: >= 10x faster.
(c) the destination's lag while the source receives diffs at a steady rate: a1 synchronizing
    (the proxy sends each diff to both archives), ``--lag-rounds`` rounds of 1 MiB of random 4 KiB
    writes and a snapshot every ``--lag-interval`` seconds; for each snapshot, the seconds between
    it being restorable on a0 and on a1 (mean and max).

    .venv/bin/python benchmarks/replication.py [--quick] [--size 2G] [--dir /var/tmp]

``--quick`` runs the same steps on a 64 MiB volume in about 20 s and checks the restores on a1
(sha1 against the device). Needs root, FUSE and loop devices, and 4x the volume + 1 GiB free.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup  # noqa: E402  (its baselines: raw_tcp_copy, hash_scan, and the data they run on)
from _cluster import Cluster, MiB, drop_caches  # noqa: E402

from walbops.store.dirstore import BASE_FILE  # noqa: E402

GiB = 1 << 30
LAG_WRITES = 256  # 4 KiB writes (1 MiB) per lag round
DISK_FACTOR = 4  # free disk the run needs, in volume sizes (ddev, the copy, two archives' bases, diffs)


def sha1_of(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        while chunk := stream.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def timed_replication(cluster: Cluster, gid: int, slow: float) -> tuple[float, str]:
    """Seconds from a cold page cache until a1 can restore ``gid``, and the kind a0 chose."""
    drop_caches()
    start = time.perf_counter()
    cluster.ctl.replicate_once("a0", cluster.vol, "a1", gid=gid, timeout=slow)
    seconds = time.perf_counter() - start
    return seconds, cluster.ctl.get("a0", "action-result", cluster.vol, "ReplSyncAsClient")["kind"]


def restorable_at(cluster: Cluster, archive: str, gid: int, slow: float) -> float:
    """perf_counter() when ``gid`` is restorable on ``archive`` (polled every 20 ms)."""
    cluster.wait(lambda: gid in cluster.ctl.get_restorable(archive, cluster.vol, include_implicit=True),
                 f"gid {gid} restorable on {archive}", slow, poll=0.02)
    return time.perf_counter()


def measure_lag(cluster: Cluster, device: str, size: int, rounds: int, interval: float,
                rng: np.random.Generator, slow: float) -> dict[str, Any]:
    """(c): a1 synchronizing; rounds of writes and a snapshot; a1's lag behind a0 for each."""
    ctl, vol = cluster.ctl, cluster.vol
    ctl.synchronize("a0", vol, "a1", timeout=slow)
    lags = []
    for _ in range(rounds):
        started = time.perf_counter()
        backup.random_writes(device, size, LAG_WRITES, rng)
        gid = int(ctl.run("s0", "snapshot", vol=vol)["gid"])
        on_source = restorable_at(cluster, "a0", gid, slow)
        on_destination = restorable_at(cluster, "a1", gid, slow)
        lags.append(max(0.0, on_destination - on_source))
        time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    ctl.stop_synchronizing("a1", vol)
    return {"rounds": rounds, "interval_s": interval, "bytes_per_round": LAG_WRITES * backup.BLOCK,
            "lag_mean_s": round(sum(lags) / len(lags), 3), "lag_max_s": round(max(lags), 3),
            "lags_s": [round(lag, 3) for lag in lags]}


def run(work: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    ddev, ldev, previous = str(work / "ddev.img"), str(work / "ldev.img"), str(work / "previous.img")
    backup.say(f"{backup.label(size)}: writing the volume (half random, half zeros)")
    backup.fill_mixed(ddev, size, rng)
    with open(ldev, "wb") as stream:
        stream.truncate((int(0.05 * size) + 64 * MiB) // MiB * MiB)
    cluster = Cluster(work, tuning={})
    cluster.add_archive()
    ctl, vol = cluster.ctl, cluster.vol
    slow = backup.slow_timeout(size)
    result: dict[str, Any] = {"volume_bytes": size}
    try:
        device = backup.start_group(cluster, f"rpb{os.getpid()}", ldev, ddev)
        backup.timed_full_backup(cluster, slow)
        gid = int(ctl.run("s0", "snapshot", vol=vol)["gid"])
        restorable_at(cluster, "a0", gid, slow)
        base = next((work / "archive").rglob(BASE_FILE), None)  # a0's dir store
        if base is None:
            raise SystemExit(f"no {BASE_FILE} of {vol} under {work / 'archive'}")
        ctl.run("a1", "init-vol", vol=vol)

        def raw_copy(what: str) -> float:
            backup.say(f"{backup.label(size)}: raw TCP copy of a0's base{what}")
            drop_caches()
            return backup.raw_tcp_copy(str(base), previous)

        raw_runs = [raw_copy("")]
        backup.say(f"{backup.label(size)}: full replication a0 -> a1")
        full_seconds, kind = timed_replication(cluster, gid, slow)
        if kind != "full":
            raise SystemExit(f"the first replication was {kind}, not full")
        raw_runs.append(raw_copy(" again (the baseline brackets the replication)"))
        raw_seconds = sum(raw_runs) / len(raw_runs)
        result["a_full_replication"] = {
            "walbops": {"seconds": round(full_seconds, 3), "mb_per_s": round(size / full_seconds / 1e6, 1)},
            "raw_tcp_copy": {"seconds": round(raw_seconds, 3), "runs_s": [round(run, 3) for run in raw_runs]},
            "ratio_vs_raw_copy": round(raw_seconds / full_seconds, 3), "target": 0.7}

        count = int(size * args.change / 100) // backup.BLOCK
        backup.say(f"{backup.label(size)}: {args.change} % changed ({count} random 4 KiB writes)")
        backup.random_writes(device, size, count, rng)
        changed = int(ctl.run("s0", "snapshot", vol=vol)["gid"])
        restorable_at(cluster, "a0", changed, slow)
        cluster.wait_applied()
        backup.say(f"{backup.label(size)}: diff replication a0 -> a1")
        diff_seconds, kind = timed_replication(cluster, changed, slow)
        if kind != "diff":
            raise SystemExit(f"the second replication was {kind}, not diff")
        backup.say(f"{backup.label(size)}: hash scan of the two images")
        drop_caches()
        scan = backup.hash_scan(ddev, previous, args.hash_block)
        result["b_diff_replication"] = {
            "changed_percent": args.change, "changed_bytes": count * backup.BLOCK,
            "walbops_s": round(diff_seconds, 3), "hash_scan": scan,
            "speedup_vs_hash_scan": round(scan["seconds"] / diff_seconds, 2), "target": 10}
        if args.verify:
            restored = ctl.restore("a1", vol, changed)
            try:
                same = sha1_of(restored) == sha1_of(ddev)
            finally:
                ctl.del_restored("a1", vol, changed)
            if not same:
                raise SystemExit(f"the image restored on a1 at gid {changed} differs from the device")
            result["verified"] = True

        backup.say(f"{backup.label(size)}: lag of a synchronizing a1 under steady writes")
        result["c_lag"] = measure_lag(cluster, device, size, args.lag_rounds, args.lag_interval, rng, slow)
    finally:
        with backup.cleaning():
            errors = cluster.teardown()
            if errors:
                print("[replication bench] cleanup: " + "; ".join(errors), file=sys.stderr, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 64 MiB volume, with --verify: a smoke test")
    parser.add_argument("--size", default=None, help="the volume (default 2G)")
    parser.add_argument("--change", type=float, default=1.0, help="percent of the volume changed for (b)")
    parser.add_argument("--hash-block", type=backup.parse_size, default=MiB, help="hash scan block (default 1M)")
    parser.add_argument("--lag-rounds", type=int, default=None, help="(c) rounds (default 10; --quick 3)")
    parser.add_argument("--lag-interval", type=float, default=1.0, help="(c) seconds between snapshots")
    parser.add_argument("--verify", action="store_true", help="restore on a1 and compare with the device (sha1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default="/var/tmp", help="scratch directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/replication.py needs root (loop devices, FUSE, drop_caches)")
    size = backup.parse_size(args.size or ("64M" if args.quick else "2G"))
    args.verify = args.verify or args.quick
    args.lag_rounds = args.lag_rounds or (3 if args.quick else 10)
    if size % MiB or not 0 < args.change <= 100:
        raise SystemExit("the volume must be a multiple of 1 MiB, --change between 0 and 100")
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, backup.on_signal)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="walbops-replbench-", dir=args.dir))
    os.environ["WALBOPS_RUN_DIR"] = str(work / "run")
    os.environ["WALBOPS_DEV_DIR"] = str(work / "dev")
    try:
        needed = DISK_FACTOR * size + GiB
        if shutil.disk_usage(work).free < needed:
            raise SystemExit(f"{backup.label(size)} needs {needed >> 20} MiB free in {work}")
        result = run(work, size, args)
    finally:
        with backup.cleaning():
            shutil.rmtree(work, ignore_errors=True)
    full, diff = result["a_full_replication"], result["b_diff_replication"]
    print(json.dumps({"benchmark": "replication", "mode": "quick" if args.quick else "full",
                      "volume": backup.label(size), **result,
                      "targets_met": {"a_full_replication": full["ratio_vs_raw_copy"] >= 0.7,
                                      "b_diff_replication": diff["speedup_vs_hash_scan"] >= 10},
                      "seconds": round(time.perf_counter() - started, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
