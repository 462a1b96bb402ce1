"""scripts/chaos in its short, seeded forms (issue 18): three chaos rounds and a two-minute soak on
the whole backup group (two storages, three volumes, a proxy, two archives, the workers), so that
the machinery keeps working. The long runs (``--rounds 50``, ``--soak --minutes 60``) are not in
the test command; docs/operations.md says how to run them."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT

CHAOS = ROOT / "scripts" / "chaos.py"
BOUND = 120  # [s] a round must converge within this (the script's default)


def run_chaos(*args: str) -> dict:
    """Its scratch directory is the script's default, /var/tmp/walbops-chaos-*, removed after a
    run that passed (a device's control socket under pytest's tmp_path would pass the 108
    characters of a unix socket's path)."""
    result = subprocess.run([sys.executable, str(CHAOS), "--bound", str(BOUND), *args],
                            capture_output=True, text=True, timeout=900)
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    assert result.returncode == 0 and report.get("ok"), \
        f"scripts/chaos {' '.join(args)} failed:\n{result.stderr[-4000:]}\n{result.stdout[-4000:]}"
    return report


def test_three_seeded_chaos_rounds_converge_and_restore_right():
    report = run_chaos("--rounds", "3", "--seed", "11")
    assert report["rounds"] == 3 and report["seed"] == 11
    assert report["restores"]["wrong"] == 0 and not report["lost_snapshots"] and not report["cleanup_errors"]
    assert report["restores"]["checked"] >= 3 * 2  # two at random after each round
    for entry in report["round_log"]:
        assert entry["faults"] and entry["converged_s"] <= BOUND
    assert all(writes > 0 for writes in report["writes"].values())


def test_a_two_minute_soak_samples_every_daemon_and_restores_right():
    report = run_chaos("--soak", "--minutes", "2", "--sample-interval", "10", "--seed", "5")
    soak = report["soak"]
    assert len(soak["samples"]) >= 12
    daemons = set(soak["samples"][-1]["daemons"])
    assert {"s0", "s1", "p0", "a0", "a1", "worker a0", "worker a1"} <= daemons
    assert len([name for name in daemons if name.startswith("device ")]) == 3
    for usage in soak["samples"][-1]["daemons"].values():
        assert usage["rss_kib"] > 0 and usage["threads"] >= 1 and usage["fds"] >= 3
    assert not soak["judged"], "two minutes are too short to judge growth (MIN_JUDGED_SPAN)"
    # Implicit snapshots every second (the tests' tuning): the newest restorable is seconds old.
    assert all(0 <= rpo < 30 for rpo in soak["worst_rpo_s"].values()), soak["worst_rpo_s"]
    assert len(soak["checks"]) == 3 * 2 and report["restores"]["wrong"] == 0
