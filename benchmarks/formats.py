"""Diff engine throughput and memory on a 1 GiB log, against a raw copy of the same bytes.

Prints one JSON object. Every operation runs as a child process (the installed CLI), so
its peak RSS is measured on its own; each is compared with a raw read+write copy of the
same input measured in the same run, because absolute times on shared machines are not
stable.

    .venv/bin/python benchmarks/formats.py [--log-size 1G] [--device-size 4G] [--dir /tmp]

Targets (issue 2): conversion at >= 0.5x the raw copy; every operation under 256 MiB RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

COPY_BUFFER = 1 << 20  # [bytes] the raw copy's read/write size
RSS_TARGET = 256 << 20  # [bytes]
CONVERT_TARGET = 0.5  # conversion throughput / raw copy throughput


def walbops(*args: str) -> list[str]:
    return [sys.executable, "-m", "walbops.cli.main", *args]


def measure(command: list[str]) -> tuple[float, int]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"benchmark step failed: {' '.join(command)}")
    return elapsed, usage.ru_maxrss * 1024


def raw_copy(source: str, target: str) -> float:
    """Read and write the same bytes with a plain buffered loop; seconds."""
    start = time.perf_counter()
    with open(source, "rb", buffering=0) as reader, open(target, "wb", buffering=0) as writer:
        buffer = bytearray(COPY_BUFFER)
        view = memoryview(buffer)
        while True:
            count = reader.readinto(buffer)
            if not count:
                break
            writer.write(view[:count])
        os.fsync(writer.fileno())
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-size", default="1G")
    parser.add_argument("--device-size", default="4G")
    parser.add_argument("--dir", default=None, help="scratch directory (needs ~4x the log size)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="walbops-bench-", dir=args.dir)
    try:
        wlog = os.path.join(work, "bench.wlog")
        subprocess.run(walbops("wlog", "gen", wlog, "--device-size", args.device_size, "--log-size", args.log_size,
                               "--pbs", "4096", "--max-io-size", "256K", "--min-io-size", "4K", "--compressible",
                               "--seed", "1"), check=True, stdout=subprocess.DEVNULL)
        size = os.path.getsize(wlog)
        raw_copy(wlog, os.path.join(work, "warm.copy"))  # warm the page cache for everyone alike
        os.unlink(os.path.join(work, "warm.copy"))
        copy_seconds = raw_copy(wlog, os.path.join(work, "raw.copy"))
        os.unlink(os.path.join(work, "raw.copy"))

        results = {}

        def record(name: str, command: list[str], input_bytes: int) -> None:
            seconds, rss = measure(command)
            results[name] = {
                "seconds": round(seconds, 3),
                "mb_per_s": round(input_bytes / seconds / 1e6, 1),
                "ratio_vs_raw_copy": round(copy_seconds / seconds * input_bytes / size, 3),
                "peak_rss_mib": round(rss / (1 << 20), 1),
                "rss_ok": rss < RSS_TARGET,
            }

        sorted_wdiff = os.path.join(work, "bench.sorted.wdiff")
        indexed_wdiff = os.path.join(work, "bench.indexed.wdiff")
        record("wlog_to_sorted_wdiff", walbops("wlog", "to-wdiff", wlog, "-o", sorted_wdiff), size)
        record("wlog_to_indexed_wdiff", walbops("wlog", "to-wdiff", wlog, "-o", indexed_wdiff, "--indexed"), size)
        record("merge_sorted_and_indexed", walbops("wdiff", "merge", sorted_wdiff, indexed_wdiff,
                                                   "-o", os.path.join(work, "merged.wdiff")), size)
        image = os.path.join(work, "image")
        record("apply_sorted_wdiff", walbops("wdiff", "redo", sorted_wdiff, "--target", image,
                                             "--size", args.device_size, "--discard", "zero"), size)
        print(json.dumps({
            "benchmark": "formats",
            "log_bytes": size,
            "device_size": args.device_size,
            "baseline": {"raw_copy_seconds": round(copy_seconds, 3), "mb_per_s": round(size / copy_seconds / 1e6, 1)},
            "results": results,
            "targets": {
                "conversion_ratio": CONVERT_TARGET,
                "conversion_ok": results["wlog_to_sorted_wdiff"]["ratio_vs_raw_copy"] >= CONVERT_TARGET,
                "rss_mib": RSS_TARGET >> 20,
                "rss_ok": all(entry["rss_ok"] for entry in results.values()),
            },
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
