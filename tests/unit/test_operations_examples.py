"""docs/examples: the alert rules load and their unit tests pass in promtool, and every metric the
rules and the dashboard use is one docs/operations.md documents."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from helpers import ROOT

EXAMPLES = ROOT / "docs" / "examples"


def documented() -> set[str]:
    return set(re.findall(r"^\| `(walbops_\w+)`", (ROOT / "docs" / "operations.md").read_text(), re.MULTILINE))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_checks_the_rules_and_runs_their_tests():
    for args in (["check", "rules", "prometheus-alerts.yml"], ["test", "rules", "prometheus-alerts.test.yml"]):
        result = subprocess.run(["promtool", *args], cwd=EXAMPLES, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_rules_have_what_an_alertmanager_route_needs():
    rules = yaml.safe_load((EXAMPLES / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    assert len(rules) >= 8
    for rule in rules:
        assert rule["alert"].startswith("Walbops") and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    names = {rule["alert"] for rule in rules}
    assert {"WalbopsLogUsageHigh", "WalbopsLogOverflow", "WalbopsRpoHigh", "WalbopsAgentDown",
            "WalbopsReplicationLag"} <= names


def test_rules_and_dashboard_use_documented_metrics():
    metrics = documented()
    rules = (EXAMPLES / "prometheus-alerts.yml").read_text()
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 8
    used = set(re.findall(r"walbops_\w+", rules + "\n".join(expressions)))
    used -= {"walbops_"}
    assert used and used <= metrics, used - metrics
