"""The local inventory (all-in-one on localhost, the tutorial's layout) through ansible-playbook.

site.yml from nothing to a first full backup; again with nothing changed; --check changes
nothing; the DR drill verifies every volume and reports RPO and RTO; teardown leaves
nothing behind. Paths and ports are the test's own (walbops_local_root, base port).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT
from playbooks import changed_tasks, run_playbook

INVENTORY = ROOT / "inventories" / "local" / "hosts.yml"


def free_base_port() -> int:
    """A port P with P, P+100 and P+200 free (the local inventory's three agents)."""
    for base in range(20000 + os.getpid() % 5000, 40000, 7):
        probes = []
        try:
            for port in (base, base + 100, base + 200):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise AssertionError("no free ports")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("local-root")
    extra = {"walbops_local_root": str(root), "walbops_local_base_port": free_base_port(),
             "walbops_report_dir": str(root / "reports"),
             "walbops_cluster_key_src": str(root / "controller" / "cluster.key")}
    yield extra
    teardown = run_playbook("teardown.yml", INVENTORY, "--tags", "all,destroy_backups,destroy_disks",
                            extra_vars=extra)
    leftovers = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"], capture_output=True,
                               text=True).stdout
    shutil.rmtree(root, ignore_errors=True)
    assert teardown.returncode == 0, teardown.describe()
    assert str(root) not in leftovers, leftovers


def test_site_from_nothing_to_full_backup(local: dict) -> None:
    first = run_playbook("site.yml", INVENTORY, extra_vars=local)
    assert first.returncode == 0, first.describe()
    assert set(first.recap) == {"s0", "p0", "a0"} and first.changed()["s0"] > 0
    assert "vol0: restorable from gid" in first.output
    # Key mode with role key files: the cluster key stays on the controller, each agent and the
    # layout name a file of their own role (docs/protocol.md 4.7).
    config = Path(local["walbops_local_root"]) / "etc" / "walbops"
    assert sorted(path.name for path in (config / "keys").iterdir()) == [
        "archive.key", "controller.key", "proxy.key", "storage.key"]
    assert not (config / "cluster.key").exists()
    cluster_key = Path(local["walbops_cluster_key_src"]).read_text().strip()
    assert all(cluster_key not in path.read_text() for path in (config / "keys").iterdir())
    assert f"cluster_key_file: {config}/keys/proxy.key" in (config / "proxy.yml").read_text()
    assert f"key_file: {config}/keys/controller.key" in (config / "layout.yml").read_text()


def test_site_again_changes_nothing(local: dict) -> None:
    again = run_playbook("site.yml", INVENTORY, extra_vars=local)
    assert again.returncode == 0, again.describe()
    assert set(again.changed().values()) == {0}, changed_tasks(again.output)


def test_check_mode_changes_nothing(local: dict) -> None:
    checked = run_playbook("site.yml", INVENTORY, "--check", "--diff", extra_vars=local)
    assert checked.returncode == 0, checked.describe()
    assert set(checked.changed().values()) == {0}, changed_tasks(checked.output)


def test_a_replaced_key_file_restarts_only_its_agent(local: dict) -> None:
    """The agents read their key files at start: a file the role puts back (a rotated key, a
    renewed certificate) restarts the agent that uses it, and no other."""
    root = Path(local["walbops_local_root"])
    key = root / "etc" / "walbops" / "keys" / "storage.key"
    pidfile = root / "run" / "walbops-agents" / "storage.pid"
    before = pidfile.read_text().strip()
    key.write_text("stale\n")  # as a host left with the key of before a rotation
    run = run_playbook("site.yml", INVENTORY, extra_vars=local)
    assert run.returncode == 0, run.describe()
    # The key file, the restart notice, the restart.
    assert run.changed() == {"s0": 3, "p0": 0, "a0": 0}, changed_tasks(run.output)
    assert "storage.key changed: the storage agent restarts" in run.output
    controller_copy = Path(local["walbops_cluster_key_src"]).parent / "role-keys" / "s0" / "storage.key"
    assert key.read_text() == controller_copy.read_text() and pidfile.read_text().strip() != before


def test_changed_config_restarts_only_that_agent(local: dict) -> None:
    pidfile = Path(local["walbops_local_root"]) / "run" / "walbops-agents" / "storage.pid"
    before = pidfile.read_text().strip()
    changed = run_playbook("site.yml", INVENTORY, extra_vars={**local, "walbops_storage_implicit_snapshot_interval": 3})
    assert changed.returncode == 0, changed.describe()
    assert changed.changed() == {"s0": 2, "p0": 0, "a0": 0}, changed_tasks(changed.output)  # config + restart
    assert "implicit_snapshot_interval: 3.0" in (Path(local["walbops_local_root"]) / "etc" / "walbops" /
                                                  "storage.yml").read_text()
    assert pidfile.read_text().strip() != before


def simulate_a_reboot(root: Path) -> None:
    """What a power cut and a boot leave: every walbops process killed (SIGKILL: no checkpoint,
    no cleanup), the filesystem gone from the mount table, every loop device detached."""
    pids = [int(path.read_text()) for path in (root / "run" / "walbops-agents").glob("*.pid")]
    pids += [json.loads(path.read_text())["pid"] for path in (root / "run" / "walbops").glob("*/info.json")]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            time.sleep(0.05)
    subprocess.run(["umount", "-l", str(root / "mnt" / "vol0")], capture_output=True)
    for info in (root / "run" / "walbops").glob("*/info.json"):
        subprocess.run(["losetup", "-d", json.loads(info.read_text())["loop"]], capture_output=True)
        subprocess.run(["umount", "-l", str(info.parent / "volume")], capture_output=True)
    for disk in (root / "var" / "lib" / "walbops" / "disks").iterdir():
        for device in subprocess.run(["losetup", "--noheadings", "--output", "NAME", "--associated", str(disk)],
                                     capture_output=True, text=True).stdout.split():
            subprocess.run(["losetup", "-d", device], capture_output=True)
    assert not subprocess.run(["losetup", "-j", str(root / "var" / "lib" / "walbops" / "disks" / "vol0.wlog")],
                              capture_output=True, text=True).stdout


def test_boot_brings_the_volume_back_after_a_simulated_reboot(local: dict) -> None:
    """Process mode's boot path: after a power cut, boot.yml attaches the disk files, starts the
    walb device (its logs redone), mounts the filesystem and starts the agents: every write that
    was synced is there, and shipping resumes; a second run changes nothing."""
    root = Path(local["walbops_local_root"])
    mount = root / "mnt" / "vol0"
    payload = os.urandom(3 * 1024 * 1024)
    with open(mount / "before-reboot.bin", "wb") as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())  # acknowledged: the walb device logged it
    spec = (root / "etc" / "walbops" / "devices" / "vol0.yml").read_text()
    assert f"ldev: {root}/var/lib/walbops/disks/vol0.wlog" in spec and f"path: {mount}" in spec
    simulate_a_reboot(root)
    booted = run_playbook("boot.yml", INVENTORY, extra_vars=local)
    assert booted.returncode == 0, booted.describe()
    assert booted.changed() == {"s0": 2, "p0": 1, "a0": 2}, changed_tasks(booted.output)  # device, storage, ...
    assert (mount / "before-reboot.bin").read_bytes() == payload
    again = run_playbook("boot.yml", INVENTORY, extra_vars=local)
    assert again.returncode == 0 and set(again.changed().values()) == {0}, changed_tasks(again.output)
    # Shipping resumes: a snapshot taken now becomes restorable on the archive.
    snapshot = run_playbook("snapshot.yml", INVENTORY, extra_vars=local)
    assert snapshot.returncode == 0, snapshot.describe()


def test_dr_drill_verifies_every_volume(local: dict) -> None:
    mount = Path(local["walbops_local_root"]) / "mnt" / "vol0"
    (mount / "data").mkdir(exist_ok=True)
    for index in range(20):
        (mount / "data" / f"file{index}").write_bytes(os.urandom(4096 * (index + 1)))
    drill = run_playbook("dr_drill.yml", INVENTORY, extra_vars=local)
    assert drill.returncode == 0, drill.describe()
    reports = sorted(Path(local["walbops_report_dir"]).glob("dr-drill-*.json"))
    assert reports, drill.describe()
    report = json.loads(reports[-1].read_text())
    assert report["missing"] == [] and int(report["verified"]) == int(report["total"]) == 1
    (volume,) = report["volumes"]
    assert volume["vol"] == "vol0" and volume["verified"] and volume["digest_match"]
    assert volume["fsck_ok"] and volume["mount_ok"] and volume["files"] >= 21
    assert volume["rpo_seconds"] is not None and volume["rto_seconds"] > 0
    markdown = reports[-1].with_suffix(".md").read_text()
    assert "| vol0 | s0 | a0 |" in markdown and "1 of 1 volumes verified" in markdown


def test_worker_runs_beside_the_archive(local: dict) -> None:
    root = Path(local["walbops_local_root"])
    pidfile = root / "run" / "walbops-agents" / "worker.pid"
    assert pidfile.exists() and (root / "etc" / "walbops" / "worker.yml").exists()
    pid = int(pidfile.read_text())
    assert b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_retention_playbook_prunes_then_changes_nothing(local: dict) -> None:
    policy = {**local, "walbops_retention_policy": {"keep_last": 2}}
    checked = run_playbook("retention.yml", INVENTORY, "--check", "--diff", extra_vars=policy)
    assert checked.returncode == 0, checked.describe()
    assert "would remove" in checked.output
    pruned = run_playbook("retention.yml", INVENTORY, extra_vars=policy)
    assert pruned.returncode == 0, pruned.describe()
    assert "freed" in pruned.output
    again = run_playbook("retention.yml", INVENTORY, extra_vars={**policy, "walbops_retention_policy": {
        "keep_within": "1d"}})
    assert again.returncode == 0, again.describe()
    assert set(again.changed().values()) == {0}, changed_tasks(again.output)


def test_dr_drill_by_hash_verifies_without_a_restore(local: dict) -> None:
    drill = run_playbook("dr_drill.yml", INVENTORY, extra_vars={**local, "walbops_drill_verify": "hash"})
    assert drill.returncode == 0, drill.describe()
    report = json.loads(sorted(Path(local["walbops_report_dir"]).glob("dr-drill-*.json"))[-1].read_text())
    assert report["verify"] == "hash" and int(report["verified"]) == int(report["total"]) == 1
    (volume,) = report["volumes"]
    assert volume["hash_match"] and volume["bhash"] == volume["archive_bhash"] and len(volume["bhash"]) == 32
    assert volume["fsck_ok"] is None and volume["rto_seconds"] is None


def test_recover_playbook_brings_an_overflowed_volume_back_by_hash_backup(local: dict) -> None:
    """The storage agent is down while more than the log holds is written: the log overflows and
    the volume stops. recover.yml finds it (walb_info) and recovers it by hash backup, keeping the
    archive's history; a second run changes nothing, and the drill verifies the volume."""
    root = Path(local["walbops_local_root"])
    venv_bin = ROOT / ".venv" / "bin" / "walbops"
    env = {**os.environ, "WALBOPS_RUN_DIR": str(root / "run" / "walbops"), "WALBOPS_DEV_DIR": str(root / "dev" /
                                                                                                 "walbops")}
    agent = [str(venv_bin), "ensure", "agent", "storage", "--config", str(root / "etc" / "walbops" / "storage.yml"),
             "--pidfile", str(root / "run" / "walbops-agents" / "storage.pid"), "--json"]
    layout = str(root / "etc" / "walbops" / "layout.yml")

    def ctl(*words: str) -> str:
        result = subprocess.run([str(venv_bin), "ctl", "--layout", layout, *words], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    before = json.loads(ctl("-s", "a0", "--json", "get", "restorable", "vol0", "all"))["result"]
    assert subprocess.run([*agent, "--state", "stopped"], capture_output=True, timeout=120, env=env).returncode == 0
    mount = root / "mnt" / "vol0"
    for _ in range(3):  # three times 20 MiB through the filesystem: more than the 32 MiB log
        (mount / "burst").write_bytes(os.urandom(20 << 20))
        os.sync()
        (mount / "burst").unlink()
        os.sync()
    assert subprocess.run([*agent, "--state", "started"], capture_output=True, timeout=120, env=env).returncode == 0
    deadline = time.monotonic() + 60
    while ctl("-s", "s0", "get", "state", "vol0") != "Stopped":
        assert time.monotonic() < deadline, "the overflowed volume did not stop"
        time.sleep(0.5)
    recovered = run_playbook("recover.yml", INVENTORY, extra_vars=local)
    assert recovered.returncode == 0, recovered.describe()
    assert "vol0: hash backup, gid" in recovered.output
    assert ctl("-s", "s0", "get", "state", "vol0") == "Target"
    after = [entry["gid"] for entry in json.loads(ctl("-s", "a0", "--json", "get", "restorable", "vol0",
                                                      "all"))["result"]]
    assert {entry["gid"] for entry in before} <= set(after)  # the history survived the overflow
    again = run_playbook("recover.yml", INVENTORY, extra_vars=local)
    assert again.returncode == 0 and set(again.changed().values()) == {0}, changed_tasks(again.output)
    drill = run_playbook("dr_drill.yml", INVENTORY, extra_vars=local)
    assert drill.returncode == 0, drill.describe()


def test_resize_playbook_grows_archive_device_and_filesystem(local: dict) -> None:
    """resize.yml grows vol0 to the inventory's new size: the archive first, then the loop file, the
    walb device online and its ext4; a second run changes nothing and the drill still verifies."""
    root = Path(local["walbops_local_root"])
    # Offline: this sandbox's kernel refuses ext4's online resize (no CAP_SYS_RESOURCE).
    grown = {**local, "walbops_resize_fs": "offline",
             "walbops_volumes": [{"name": "vol0", "size": "96M", "log_size": "32M", "fs": "ext4",
                                  "mount": str(root / "mnt" / "vol0")}]}
    checked = run_playbook("resize.yml", INVENTORY, "--check", "--diff", extra_vars=grown)
    assert checked.returncode == 0, checked.describe()
    assert os.statvfs(root / "mnt" / "vol0").f_blocks * os.statvfs(root / "mnt" / "vol0").f_frsize < 70 << 20
    resized = run_playbook("resize.yml", INVENTORY, extra_vars=grown)
    assert resized.returncode == 0, resized.describe()
    assert resized.changed()["a0"] == 1 and resized.changed()["s0"] == 2, changed_tasks(resized.output)
    stat = os.statvfs(root / "mnt" / "vol0")
    assert stat.f_blocks * stat.f_frsize > 80 << 20  # from about 57 MiB (1 KiB blocks, journal, metadata)
    again = run_playbook("resize.yml", INVENTORY, extra_vars=grown)
    assert again.returncode == 0 and set(again.changed().values()) == {0}, changed_tasks(again.output)
    drill = run_playbook("dr_drill.yml", INVENTORY, extra_vars=grown)
    assert drill.returncode == 0, drill.describe()
