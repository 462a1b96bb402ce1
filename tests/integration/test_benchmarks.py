"""The benchmarks keep working: each runs once in its --quick mode and prints its JSON (no timing is judged here)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def test_lifecycle_benchmark_quick(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lifecycle.py"), "--quick", "--dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["chains"]) == {"1", "10"}
    for entry in report["chains"].values():
        assert entry["restore_before_apply_s"] > 0 and entry["apply_s"] > 0 and entry["apply_vs_raw_copy"] > 0
    assert report["merge"]["merged_into"] == 1
    assert report["retention"]["removed"] > 0 and report["targets"]["retention_frees"]
