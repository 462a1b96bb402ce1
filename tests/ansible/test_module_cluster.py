"""walb_volume, walb_backup, walb_snapshot, walb_restore, walb_retention, walb_replication, walb_info
against real agents on loopback.

One backup group (tests/scenarios/cluster.py) serves the whole module; the tests run in
order, as an operator would: initialise, back up, snapshot, restore, report, clear.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from helpers import ROOT
from modules import ModuleFailed, run_module

sys.path.insert(0, str(ROOT / "tests" / "scenarios"))
from cluster import Cluster, write_random  # noqa: E402

VOL = "vol0"


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    saved = {key: os.environ.get(key) for key in ("WALBOPS_RUN_DIR", "WALBOPS_DEV_DIR")}
    os.environ["WALBOPS_RUN_DIR"] = str(root / "run")
    os.environ["WALBOPS_DEV_DIR"] = str(root / "dev")
    cluster = Cluster(root)
    try:
        cluster.make_device(f"ans{os.getpid() % 100000}")
        cluster.start_all()
        yield cluster
    finally:
        try:
            cluster.close()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def call(group: Cluster, name: str, check: bool = False, **args: object) -> dict:
    return run_module(name, {"layout": str(group.layout_path), "timeout": 120, **args}, check=check)


def test_volume_storage_initialise_and_start_standby(group: Cluster) -> None:
    with pytest.raises(ModuleFailed, match="wdev .* is needed"):
        call(group, "walb_volume", vol=VOL, server="s0", state="initialized")
    predicted = call(group, "walb_volume", check=True, vol=VOL, server="s0", wdev=group.device_name)
    assert predicted["changed"] and predicted["state"] == "Standby"
    assert predicted["commands"] == [f"init-vol wdev={group.device_name}", "start role=standby"]
    assert group.ctl.run("s0", "status")["volumes"] == {}
    started = call(group, "walb_volume", vol=VOL, server="s0", wdev=group.device_name)
    assert started["changed"] and started["state"] == "Standby"
    assert started["diff"] == {"before": {"state": "Clear"}, "after": {"state": "Standby"}}
    assert not call(group, "walb_volume", vol=VOL, server="s0", wdev=group.device_name)["changed"]
    with pytest.raises(ModuleFailed, match="start_as=target needs a full backup first"):
        call(group, "walb_volume", vol=VOL, server="s0", start_as="target")


def test_volume_proxy_archives_and_archive_init(group: Cluster) -> None:
    archive = {"name": "a0", "host": "127.0.0.1", "port": group.ports["archive"]}
    with pytest.raises(ModuleFailed, match="archives .* are needed"):
        call(group, "walb_volume", vol=VOL, server="p0")
    proxy = call(group, "walb_volume", vol=VOL, server="p0", archives=[archive])
    assert proxy["changed"] and proxy["state"] == "Started"
    assert proxy["diff"]["after"]["archives"] == ["a0"]
    assert not call(group, "walb_volume", vol=VOL, server="p0", archives=[archive])["changed"]
    changed = call(group, "walb_volume", vol=VOL, server="p0", check=True,
                   archives=[{**archive, "compression": "zstd:3:1"}])
    assert changed["commands"] == ["stop mode=graceful", "archive-info cmd=update archive=a0 host=127.0.0.1 "
                                   f"port={group.ports['archive']} compression=zstd:3:1 delay=0.0", "start"]
    archive_init = call(group, "walb_volume", vol=VOL, server="a0", state="initialized")
    assert archive_init["changed"] and archive_init["state"] == "SyncReady"
    with pytest.raises(ModuleFailed, match="no base image yet: run a full backup"):
        call(group, "walb_volume", vol=VOL, server="a0", state="started")


def test_backup_then_unchanged(group: Cluster) -> None:
    write_random(group.device_path, random.Random(1), count=32, size=group.device_size)
    predicted = call(group, "walb_backup", check=True, vol=VOL, storage="s0")
    assert predicted["changed"] and predicted["gid"] is None
    assert group.ctl.get_state("s0", VOL) == "Standby"
    done = call(group, "walb_backup", vol=VOL, storage="s0", bulk_size="1M")
    assert done["changed"] and done["bytes"] == group.device_size and done["gid"] is not None
    assert done["diff"]["after"] == {"storage": "Target", "archive": "Archived"}
    again = call(group, "walb_backup", vol=VOL, storage="s0")
    assert not again["changed"] and again["bytes"] == 0
    assert not call(group, "walb_volume", vol=VOL, server="s0")["changed"]  # started: Target as it was


def test_snapshot_with_digest_and_restore(group: Cluster) -> None:
    write_random(group.device_path, random.Random(2), count=16, size=group.device_size)
    assert call(group, "walb_snapshot", check=True, vol=VOL, storage="s0")["gid"] is None
    snap = call(group, "walb_snapshot", vol=VOL, storage="s0", digest=True)
    assert snap["changed"] and snap["restorable"] and len(snap["digest"]) == 64
    predicted = call(group, "walb_restore", check=True, vol=VOL, archive="a0", gid="latest")
    assert predicted["changed"] and predicted["gid"] == snap["gid"] and predicted["device"] is None
    restored = call(group, "walb_restore", vol=VOL, archive="a0", gid="latest", digest=True)
    assert restored["changed"] and restored["gid"] == snap["gid"]
    assert restored["digest"] == snap["digest"]
    again = call(group, "walb_restore", vol=VOL, archive="a0", gid=str(snap["gid"]))
    assert not again["changed"] and again["device"] == restored["device"]
    info = call(group, "walb_info")
    archive = info["servers"]["a0"]["volumes"][VOL]
    assert archive["latest_restorable"] == snap["gid"] and archive["rpo_seconds"] >= 0
    assert archive["restored"] == [snap["gid"]]
    storage = info["servers"]["s0"]["volumes"][VOL]
    assert storage["state"] == "Target" and storage["overflow"] is False
    assert info["servers"]["p0"]["volumes"][VOL]["archives"] == ["a0"]
    removed = call(group, "walb_restore", vol=VOL, archive="a0", gid="all", state="absent")
    assert removed["changed"] and removed["removed"] == [snap["gid"]]
    assert not call(group, "walb_restore", vol=VOL, archive="a0", gid="all", state="absent")["changed"]


def test_retention_prunes_then_changes_nothing(group: Cluster) -> None:
    gids = []
    for seed in range(3, 7):
        write_random(group.device_path, random.Random(seed), count=8, size=group.device_size)
        gids.append(call(group, "walb_snapshot", vol=VOL, storage="s0")["gid"])
    before = group.ctl.get_restorable("a0", VOL, include_implicit=True)
    predicted = call(group, "walb_retention", check=True, archive="a0", keep_last=2, keep_gids=[gids[0]])
    volume = predicted["volumes"][0]
    kept = [entry["gid"] for entry in volume["kept"]]
    assert predicted["changed"] and kept == sorted({*before[-2:], gids[0]}) and volume["bytes_freed"] is None
    assert predicted["diff"] == {"before": {VOL: before}, "after": {VOL: kept}}
    assert group.ctl.get_restorable("a0", VOL, include_implicit=True) == before  # check mode changed nothing
    done = call(group, "walb_retention", archive="a0", volumes=[VOL], keep_last=2, keep_gids=[gids[0]])
    assert done["changed"] and done["volumes"][0]["removed"] == volume["removed"] and done["bytes_freed"] >= 0
    assert group.ctl.get_restorable("a0", VOL, include_implicit=True)[:len(kept)] == kept
    again = call(group, "walb_retention", archive="a0", volumes=[VOL], keep_last=2, keep_gids=[gids[0]])
    assert not again["changed"]
    with pytest.raises(ModuleFailed, match="needs at least one rule"):
        call(group, "walb_retention", archive="a0")


def test_replication_once_then_synchronizing_then_stopped(group: Cluster) -> None:
    group.add_archive()
    group.start("archive1")
    newest = group.ctl.get_restorable("a0", VOL, include_implicit=True)[-1]
    predicted = call(group, "walb_replication", check=True, vol=VOL, destination="a1")
    assert predicted["changed"] and predicted["gid"] == newest and predicted["diff"]["before"]["state"] == "Clear"
    assert group.ctl.run("a1", "status")["volumes"] == {}  # check mode changed nothing
    done = call(group, "walb_replication", vol=VOL, source="a0", destination="a1")
    assert done["changed"] and done["kind"] == "full" and done["gid"] == done["source_gid"] == newest
    assert done["lag_gids"] == 0 and done["lag_seconds"] == 0 and not done["synchronizing"]
    (replica,) = call(group, "walb_info", servers=["a0"])["servers"]["a0"]["volumes"][VOL]["replicas"]
    assert replica["destination"].endswith(f":{group.ports['archive1']}") and replica["gid_delta"] == 0
    assert not call(group, "walb_replication", vol=VOL, destination="a1")["changed"]

    synchronizing = call(group, "walb_replication", vol=VOL, destination="a1", mode="synchronizing")
    assert synchronizing["changed"] and synchronizing["synchronizing"]
    assert group.ctl.run("p0", "archive-info", cmd="list", vol=VOL) == ["a0", "a1"]
    assert not call(group, "walb_replication", vol=VOL, destination="a1", mode="synchronizing")["changed"]
    write_random(group.device_path, random.Random(7), count=8, size=group.device_size)
    snap = call(group, "walb_snapshot", vol=VOL, storage="s0", digest=True, archives=["a0", "a1"])
    assert not call(group, "walb_replication", vol=VOL, destination="a1", gid=snap["gid"])["changed"]
    restored = call(group, "walb_restore", vol=VOL, archive="a1", gid=str(snap["gid"]), digest=True)
    assert restored["digest"] == snap["digest"]
    call(group, "walb_restore", vol=VOL, archive="a1", gid="all", state="absent")

    stopped = call(group, "walb_replication", vol=VOL, destination="a1", mode="stopped")
    assert stopped["changed"] and not stopped["synchronizing"]
    assert group.ctl.run("p0", "archive-info", cmd="list", vol=VOL) == ["a0"]
    assert not call(group, "walb_replication", vol=VOL, destination="a1", mode="stopped")["changed"]
    with pytest.raises(ModuleFailed, match="cannot replicate to itself"):
        call(group, "walb_replication", vol=VOL, destination="a0")


def test_replace_the_secondary_archive(group: Cluster) -> None:
    """r4 with walb_replace: a2 takes over a1's copy (filled from the primary a0), a1 is cleared."""
    group.add_archive("archive2")
    group.start("archive2")
    args = {"kind": "archive", "vol": VOL, "old": "a1", "new": "a2", "source": "a0"}
    predicted = call(group, "walb_replace", check=True, **args)
    assert predicted["changed"] and predicted["diff"] == {"before": {"old": "Archived", "new": "Clear"},
                                                          "after": {"old": "Clear", "new": "Archived"}}
    replaced = call(group, "walb_replace", **args)
    newest = group.ctl.get_restorable("a0", VOL, include_implicit=True)[-1]
    assert replaced["changed"] and replaced["gid"] == newest
    assert VOL not in group.ctl.run("a1", "status")["volumes"]
    assert not call(group, "walb_replace", **args)["changed"]
    with pytest.raises(ModuleFailed, match="server 'p0' is a proxy, not a archive"):
        call(group, "walb_replace", kind="archive", vol=VOL, old="p0", new="a2")


def test_refusals_name_the_override(group: Cluster) -> None:
    with pytest.raises(ModuleFailed, match="deletes its base image and every diff; set force: true"):
        call(group, "walb_volume", vol=VOL, server="a0", state="cleared")
    with pytest.raises(ModuleFailed, match="ends its backup .*set force: true"):
        call(group, "walb_volume", vol=VOL, server="s0", state="cleared")
    with pytest.raises(ModuleFailed, match="gid 999999999999 is not restorable"):
        call(group, "walb_restore", vol=VOL, archive="a0", gid="999999999999")
    with pytest.raises(ModuleFailed, match="server 'a0' is a archive, not a storage"):
        call(group, "walb_snapshot", vol=VOL, storage="a0")


def walbops_cli(group: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walbops.cli.main", *args, "--layout", str(group.layout_path)],
                          capture_output=True, text=True, timeout=120)


def test_health_ok_then_warning_past_the_log_threshold(group: Cluster) -> None:
    healthy = walbops_cli(group, "check")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    # One line: the level, what was checked, then perfdata (agents down, and per volume its figures).
    assert re.fullmatch(r"WALBOPS OK - \d+ agents, \d+ volumes \| agents_down=0;;1;0;\d+ .*"
                        r"log_usage_s0_vol0=[0-9.]+%;80;95;0;100 rpo_s0_vol0=0s;3600;86400;0\n", healthy.stdout), \
        healthy.stdout
    warned = walbops_cli(group, "check", "--log-warning", "0", "--log-critical", "101")
    assert warned.returncode == 1 and warned.stdout.startswith("WALBOPS WARNING - vol0 on s0: log "), warned.stdout
    info = walbops_cli(group, "info")
    assert info.returncode == 0 and "health: OK" in info.stdout
    assert re.search(r"^s0 +storage +vol0 +Target +log [0-9.]+%$", info.stdout, re.MULTILINE), info.stdout
    assert re.search(r"^a0 +archive +vol0 +Archived +newest restorable", info.stdout, re.MULTILINE), info.stdout
    assert call(group, "walb_info", fail_on="critical")["health"]["status"] == "OK"
    with pytest.raises(ModuleFailed, match="WARNING: vol0 on s0: log"):
        call(group, "walb_info", fail_on="warning", log_warning=0)


def test_unreachable_agent_is_reported_not_failed(group: Cluster) -> None:
    group.stop("proxy")
    try:
        info = call(group, "walb_info")
        assert info["servers"]["p0"]["reachable"] is False and info["servers"]["a0"]["reachable"] is True
        assert info["health"]["status"] == "CRITICAL"
        # Unless asked to fail: then the task fails, naming the agent.
        with pytest.raises(ModuleFailed, match="CRITICAL: proxy p0 does not answer"):
            call(group, "walb_info", fail_on="critical")
        # walbops check: CRITICAL, exit 2; walbops info: still the table, exit 1; --json errors too.
        checked = walbops_cli(group, "check")
        assert checked.returncode == 2 and checked.stdout.startswith("WALBOPS CRITICAL - proxy p0 does not answer")
        assert re.search(r"\| agents_down=1;;1;0;\d+ ", checked.stdout), checked.stdout
        table = walbops_cli(group, "info")
        assert table.returncode == 1 and "p0 did not answer" in table.stderr
        assert re.search(r"^p0 +proxy +- +DOWN ", table.stdout, re.MULTILINE), table.stdout
        as_json = json.loads(walbops_cli(group, "check", "--json").stdout)
        assert as_json["status"] == "CRITICAL" and as_json["code"] == 2
    finally:
        group.start("proxy")


def test_stop_and_clear_everything(group: Cluster) -> None:
    stopped = call(group, "walb_volume", vol=VOL, server="s0", state="stopped")
    assert stopped["changed"] and stopped["state"] == "Stopped"
    assert not call(group, "walb_volume", vol=VOL, server="s0", state="stopped")["changed"]
    for server in ("s0", "a0", "p0"):
        cleared = call(group, "walb_volume", vol=VOL, server=server, state="cleared", force=True)
        assert cleared["changed"] and cleared["state"] == "Clear"
        assert not call(group, "walb_volume", vol=VOL, server=server, state="cleared")["changed"]
