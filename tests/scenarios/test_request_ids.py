"""Logs where SREs look (docs/operations.md): levels, JSON lines, and one request id that follows
an operator's command from ``walbops ctl`` through every agent it touches."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from cluster import write_random

VOL = "vol0"


def ctl(cluster, *args: str, rid: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walbops.cli.main", "ctl", "--layout", str(cluster.layout_path),
                           *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WALBOPS_REQUEST_ID": rid})


def test_a_request_id_follows_a_full_backup_through_every_agent(cluster):
    cluster.agent_args["storage"] = ["--log-format", "json"]
    cluster.agent_args["proxy"] = ["--log-level", "warning"]
    device = cluster.make_device("wdev0")
    cluster.start_all()
    cluster.setup_volume(VOL)
    write_random(device, random.Random(5))
    backup = ctl(cluster, "-s", "s0", "full-bkp", VOL, "--wait", rid="5eed0001")
    assert backup.returncode == 0, backup.stderr
    # The storage logs JSON lines; the line of the backup it ran names the operator's request.
    lines = [json.loads(line) for line in cluster.log("storage").splitlines()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    done = [line for line in lines if "full backup done" in line["message"]]
    assert done and done[-1]["rid"] == "5eed0001" and done[-1]["level"] == "info", lines[-5:]
    # The archive, reached by the storage's transfer, logs the same id in its text lines.
    received = [line for line in cluster.log("archive").splitlines() if "full backup received" in line]
    assert received and received[-1].endswith(" rid=5eed0001"), received
    # The proxy logs warnings and worse only: its start-up line (info) is not there.
    assert "listening on" not in cluster.log("proxy")
    # Lines of work no operator asked for carry no id.
    assert any("rid" not in line for line in lines)
    # A bad id is refused before anything is asked.
    refused = ctl(cluster, "-s", "s0", "get", "state", VOL, rid="not-hex")
    assert refused.returncode == 2 and "WALBOPS_REQUEST_ID" in refused.stderr
