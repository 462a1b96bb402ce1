"""site.yml and dr_drill.yml over ssh against test hosts in network namespaces.

Two storage hosts, a proxy, a primary and a secondary archive, each a network namespace with
its own sshd (netns.py). Ansible installs walbops on each from a wheel (the hosts have no PyPI:
the wheels come from a wheelhouse, as on an isolated fleet), starts the agents, which talk to
each other across the namespaces, takes the first full backups and makes the secondary archive
synchronizing. A second run changes nothing, --check changes nothing, and the drill verifies
every volume, by restore on the primary and on the secondary, and by hash. The primary archive
runs its worker; retention.yml prunes over ssh and a second run changes nothing.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import collection
import netns
import pytest
from playbooks import Project, changed_tasks, run_playbook

from walbops import pki

STORAGES = ("storage0", "storage1")
HOSTS = (*STORAGES, "proxy0", "archive0", "archive1")
CA_PASSPHRASE = "fleet test passphrase"
# The team's playbook: the collection's site playbook, then a role's tasks and a module by FQCN
# (a cheap part of a role: site.yml has run them all, and the suite's time is bounded).
ROLLOUT = """\
---
- name: Roll walbops out
  ansible.builtin.import_playbook: walbops.walbops.site

- name: Storage hosts - the version check of the collection's role, and each volume checked with its module
  hosts: walbops_storage
  gather_facts: false
  environment: "{{ walbops_environment | default({}) }}"
  tasks:
    - name: The collection's common role checks the version
      ansible.builtin.import_role:
        name: walbops.walbops.walbops
        tasks_from: version.yml

    - name: Each volume ships its writes
      walbops.walbops.walb_volume:
        vol: "{{ item.name }}"
        server: "{{ walbops_agent_name }}"
        wdev: "{{ item.name }}"
        state: started
        start_as: "{{ 'standby' if item.role | default('target') == 'standby' else omit }}"
        layout: "{{ walbops_layout_file }}"
        walbops_bin: "{{ walbops_venv }}/bin/walbops"
      loop: "{{ walbops_volumes }}"
      loop_control:
        label: "{{ item.name }}"
      register: rollout_volumes

    - name: Nothing was left to start
      ansible.builtin.assert:
        that: rollout_volumes is not changed
"""


@pytest.fixture(scope="module")
def fleet(netns_hosts: Callable[[Sequence[str]], netns.TestHosts], wheelhouse: Path,
          built_collection: collection.Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    hosts = netns_hosts(list(HOSTS))
    root = tmp_path_factory.mktemp("fleet")
    # As a team with its own playbook repository uses walbops: the collection installed with
    # ansible-galaxy into an empty collections path, and a directory of theirs that holds nothing
    # but the inventory and a playbook naming the collection's content by FQCN.
    project = root / "playbooks"
    project.mkdir()
    (project / "rollout.yml").write_text(ROLLOUT)
    team = Project(project, root / "collections")
    play = functools.partial(run_playbook, project=team)
    collection.install(built_collection, root / "collections")
    host_vars = {}
    for name in HOSTS:
        home = root / name  # each host's own corner of the shared filesystem
        host_vars[name] = {
            # What a team's ansible.cfg would say ([ssh_connection] pipelining): one ssh round
            # trip per task instead of four; the playbook directory has no ansible.cfg of its own.
            "ansible_pipelining": True,
            "walbops_venv": str(home / "venv"),
            "walbops_config_dir": str(home / "etc"),
            "walbops_data_dir": str(home / "data"),
            "walbops_run_dir": str(home / "run"),
            # The wheel built beside the collection; its dependencies from a wheelhouse.
            "walbops_install_from": "wheel",
            "walbops_wheel": str(built_collection.wheel),
            "walbops_pip_extra_args": f"--no-index --find-links {wheelhouse}",
            # The fleet runs in TLS mode: a CA on the controller (its key encrypted with a
            # passphrase that a real inventory keeps in Ansible Vault), a certificate per host and role.
            "walbops_auth": "tls",
            "walbops_ca_dir": str(root / "controller" / "ca"),
            "walbops_ca_passphrase": CA_PASSPHRASE,
            "walbops_service_manager": "process",
            # The hosts share this machine's /etc: no logrotate file of theirs there.
            "walbops_manage_logrotate": False,
            "walbops_storage_implicit_snapshot_interval": 2,
            "walbops_environment": {"WALBOPS_RUN_DIR": str(home / "walbops-run"),
                                    "WALBOPS_DEV_DIR": str(home / "dev")},
        }
    host_vars["archive1"]["walbops_archive_secondary"] = True  # the off-site copy
    host_vars["archive0"].update({
        "walbops_archive_worker_enabled": True,
        "walbops_archive_worker_merge": {"interval": "10m", "max_nr": 20},
        "walbops_archive_worker_retention": {"interval": "1h", "keep_within": "1d", "keep_daily": 7},
    })
    for name in STORAGES:
        host_vars[name]["walbops_volumes"] = [{"name": f"{name}-vol0", "size": "32M", "log_size": "16M",
                                               "fs": "ext4", "mount": str(root / name / "mnt" / "vol0")}]
    # storage1 also holds a copy of storage0's volume, standby until switch.yml makes it the target.
    host_vars["storage1"]["walbops_volumes"].append({"name": "storage0-vol0", "size": "32M", "log_size": "16M",
                                                     "role": "standby"})
    groups = {"walbops_storage": list(STORAGES), "walbops_proxy": ["proxy0"],
              "walbops_archive": ["archive0", "archive1"]}
    inventory = hosts.write_inventory(root / "inventory" / "hosts.yml", groups, host_vars)
    yield {"inventory": inventory, "root": root, "hosts": hosts, "groups": groups, "host_vars": host_vars,
           "play": play, "project": team}
    teardown = play("teardown.yml", inventory, "--tags", "all,destroy_backups,destroy_disks")
    leftovers = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"], capture_output=True,
                               text=True).stdout
    assert teardown.returncode == 0, teardown.describe()
    assert str(root) not in leftovers, leftovers


def test_site_over_ssh_from_nothing(fleet: dict) -> None:
    first = fleet["play"]("rollout.yml", fleet["inventory"], extra_vars={"walbops_batch_size": 1})
    assert first.returncode == 0, first.describe()
    assert set(first.recap) == set(HOSTS)
    assert all(count > 0 for count in first.changed().values()), first.recap
    for name in STORAGES:
        assert f"{name}-vol0: restorable from gid" in first.output
        assert f"{name}-vol0: on archive1 up to gid" in first.output and "synchronizing, synchronize" in first.output
    # Each storage's agent really lives in its namespace and ships to the proxy's address.
    config = (fleet["root"] / "storage0" / "etc" / "storage.yml").read_text()
    assert f"{fleet['hosts']['proxy0'].ip}:10100" in config and f"{fleet['hosts']['archive0'].ip}:10200" in config
    # TLS mode: each agent holds its own role's certificate, the CA's key stays on the controller,
    # encrypted, and the passphrase is in no output.
    # The roles turn metrics on: each agent serves them on its host's address, and each walb device
    # daemon on 9720 + its index in walbops_volumes.
    for name, port, metric in (("storage0", 9710, 'walbops_volume_state{state="Target",vol="storage0-vol0"} 1.0'),
                               ("storage0", 9720, 'walbops_device_writes_total{device="storage0-vol0"}'),
                               ("storage1", 9721, 'walbops_device_writes_total{device="storage0-vol0"}'),
                               ("proxy0", 9711, "walbops_build_info"),
                               ("archive0", 9712, "walbops_archive_rpo_seconds")):
        with urllib.request.urlopen(f"http://{fleet['hosts'][name].ip}:{port}/metrics", timeout=10) as answer:
            assert metric in answer.read().decode(), name
    assert "cluster_key_file" not in config and "tls_cert: " + str(fleet["root"] / "storage0" / "etc" / "tls" /
                                                                   "storage.crt") in config
    ca = fleet["root"] / "controller" / "ca"
    assert b"ENCRYPTED" in (ca / "ca.key").read_bytes()
    assert not list(fleet["root"].glob("*/etc/tls/ca.key"))
    assert CA_PASSPHRASE not in first.output
    for name, roles in (("storage0", {"storage", "controller"}), ("archive0", {"archive", "controller"})):
        tls_dir = fleet["root"] / name / "etc" / "tls"
        assert {path.stem for path in tls_dir.glob("*.crt")} == roles | {"ca"}
        for role in roles:
            assert pki.certificate_info(str(tls_dir / f"{role}.crt")).role == role
            assert (tls_dir / f"{role}.key").stat().st_mode & 0o777 == 0o600


def test_site_again_changes_nothing(fleet: dict) -> None:
    again = fleet["play"]("site.yml", fleet["inventory"])
    assert again.returncode == 0, again.describe()
    assert set(again.changed().values()) == {0}, changed_tasks(again.output)


def test_check_mode_changes_nothing(fleet: dict) -> None:
    checked = fleet["play"]("site.yml", fleet["inventory"], "--check")
    assert checked.returncode == 0, checked.describe()
    assert set(checked.changed().values()) == {0}, changed_tasks(checked.output)


def drill(fleet: dict, directory: str, inventory: Path | None = None, **extra_vars: str) -> tuple[dict, Path]:
    """dr_drill.yml with its reports in ``directory`` of the fleet's root; (the JSON report, its path)."""
    reports = fleet["root"] / directory
    run = fleet["play"]("dr_drill.yml", inventory or fleet["inventory"],
                       extra_vars={"walbops_report_dir": str(reports), **extra_vars})
    assert run.returncode == 0, run.describe()
    (report_path,) = reports.glob("dr-drill-*.json")
    return json.loads(report_path.read_text()), report_path


def test_dr_drill_verifies_every_volume(fleet: dict) -> None:
    report, report_path = drill(fleet, "reports")
    assert report["missing"] == [] and int(report["verified"]) == int(report["total"]) == len(STORAGES)
    assert {volume["vol"] for volume in report["volumes"]} == {f"{name}-vol0" for name in STORAGES}
    for volume in report["volumes"]:
        assert volume["verified"] and volume["digest_match"] and volume["fsck_ok"] and volume["mount_ok"]
        assert volume["archive"] == "archive0" and volume["rto_seconds"] > 0
    assert "2 of 2 volumes verified" in report_path.with_suffix(".md").read_text()


def test_dr_drill_on_the_secondary_archive(fleet: dict) -> None:
    """The off-site drill: every volume restored and verified on archive1, which the proxies keep
    up to date; the report names it and gives each volume's replication lag. Its controller steps
    (recovery point, replication) run on the Ansible controller through each host's sshd
    (paramiko), with a certificate issued to the controller: first refused while the hosts' keys
    are not in known_hosts, then with them."""
    hosts = fleet["hosts"]
    known_hosts = fleet["root"] / "known_hosts"
    known_hosts.write_text("")
    control = {"walbops_drill_control": "ssh", "walbops_ssh_known_hosts": str(known_hosts),
               "walbops_ssh_key_file": str(hosts.client_key)}
    refused = fleet["play"]("dr_drill.yml", fleet["inventory"], extra_vars={
        "walbops_report_dir": str(fleet["root"] / "refused-reports"), "walbops_drill_on": "secondary", **control})
    assert refused.returncode != 0 and f"is not in {known_hosts}" in refused.output, refused.describe()
    lines = []
    for name in HOSTS:
        kind, blob, *_ = (hosts.workdir / "hosts" / name / "ssh_host_ed25519_key.pub").read_text().split()
        lines.append(f"{hosts[name].ip} {kind} {blob}\n")
    known_hosts.write_text("".join(lines))
    report, report_path = drill(fleet, "secondary-reports", walbops_drill_on="secondary", **control)
    layout = (fleet["inventory"].parent / "files" / "controller-layout.yml").read_text()
    assert f"ssh: root@{hosts['archive1'].ip}:22" in layout and "ansible-controller.crt" in layout
    assert report["on"] == "secondary" and report["missing"] == []
    assert int(report["verified"]) == int(report["total"]) == len(STORAGES)
    for volume in report["volumes"]:
        assert volume["verified"] and volume["digest_match"] and volume["fsck_ok"]
        assert volume["archive"] == "archive1" and volume["replication_lag_seconds"] is not None
    assert "Restored on: **secondary** archives" in report_path.with_suffix(".md").read_text()


def test_worker_and_retention_over_ssh(fleet: dict) -> None:
    pid = int((fleet["root"] / "archive0" / "run" / "worker.pid").read_text())
    assert b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()  # the shared /proc sees the archive's worker
    policy = {"walbops_retention_policy": {"keep_last": 3}}
    pruned = fleet["play"]("retention.yml", fleet["inventory"], extra_vars=policy)
    assert pruned.returncode == 0, pruned.describe()
    for name in STORAGES:
        assert f"{name}-vol0: kept" in pruned.output
    again = fleet["play"]("retention.yml", fleet["inventory"], extra_vars={"walbops_retention_policy": {
        "keep_within": "1d"}})
    assert again.returncode == 0 and set(again.changed().values()) == {0}, changed_tasks(again.output)


def test_dr_drill_by_hash_over_ssh(fleet: dict) -> None:
    report, _ = drill(fleet, "hash-reports", walbops_drill_verify="hash")
    assert report["verify"] == "hash" and int(report["verified"]) == int(report["total"]) == len(STORAGES)
    assert all(volume["hash_match"] for volume in report["volumes"])


def test_recover_over_ssh_after_an_overflow(fleet: dict) -> None:
    """storage0's agent is down while more than its 16 MiB log is written: the volume overflows and
    stops; recover.yml recovers it by hash backup over ssh, and a second run changes nothing."""
    hosts, home = fleet["hosts"], fleet["root"] / "storage0"
    environment = f"WALBOPS_RUN_DIR={home / 'walbops-run'} WALBOPS_DEV_DIR={home / 'dev'}"
    agent = (f"{environment} {home / 'venv' / 'bin' / 'walbops'} ensure agent storage --config "
             f"{home / 'etc' / 'storage.yml'} --pidfile {home / 'run' / 'storage.pid'} --state")
    assert hosts.ssh("storage0", f"{agent} stopped").returncode == 0
    burst = home / "mnt" / "vol0" / "burst"
    for _ in range(3):  # 3 x 8 MiB through the filesystem: more than the log holds
        result = hosts.ssh("storage0", f"dd if=/dev/urandom of={burst} bs=1M count=8 status=none && sync && "
                                       f"rm {burst} && sync", timeout=120)
        assert result.returncode == 0, result.stderr
    assert hosts.ssh("storage0", f"{agent} started").returncode == 0
    recovered = fleet["play"]("recover.yml", fleet["inventory"])
    assert recovered.returncode == 0, recovered.describe()
    assert "storage0-vol0: hash backup, gid" in recovered.output
    again = fleet["play"]("recover.yml", fleet["inventory"])
    assert again.returncode == 0 and set(again.changed().values()) == {0}, changed_tasks(again.output)


def test_resize_over_ssh(fleet: dict) -> None:
    """Both storages' volumes grow from 32 to 40 MiB in the inventory: resize.yml grows the archives,
    the loop files, the walb devices and their ext4 (offline: no CAP_SYS_RESOURCE here); a second
    run changes nothing, and the drill verifies every volume, on the primary and on the secondary."""
    host_vars = {name: dict(values) for name, values in fleet["host_vars"].items()}
    for name in STORAGES:
        host_vars[name]["walbops_volumes"] = [{**volume, "size": "40M"}
                                              for volume in host_vars[name]["walbops_volumes"]]
    inventory = fleet["hosts"].write_inventory(fleet["root"] / "inventory" / "grown.yml", fleet["groups"], host_vars)
    resized = fleet["play"]("resize.yml", inventory, extra_vars={"walbops_resize_fs": "offline"})
    assert resized.returncode == 0, resized.describe()
    assert resized.changed()["archive0"] == resized.changed()["archive1"] == 1  # the secondary grows too
    assert all(resized.changed()[name] == 2 for name in STORAGES)
    again = fleet["play"]("resize.yml", inventory, extra_vars={"walbops_resize_fs": "offline"})
    assert again.returncode == 0 and set(again.changed().values()) == {0}, changed_tasks(again.output)
    drill(fleet, "resize-reports", inventory)
    # The secondary followed the recovery's hash backup (by replication) and the grown volume.
    report, _ = drill(fleet, "resize-secondary-reports", inventory, walbops_drill_on="secondary")
    assert int(report["verified"]) == int(report["total"]) == len(STORAGES)


def test_switch_the_target_over_ssh_and_back(fleet: dict) -> None:
    """switch.yml makes storage1 the target of storage0's volume (storage0 goes standby, storage1
    catches the archive up by hash backup), then switches it back; each second run changes nothing."""
    for target, standby in (("storage1", "storage0"), ("storage0", "storage1")):
        chosen = {"walbops_vol": "storage0-vol0", "walbops_target": target}
        switched = fleet["play"]("switch.yml", fleet["inventory"], extra_vars=chosen)
        assert switched.returncode == 0, switched.describe()
        assert f"storage0-vol0: {target} is its target, restorable at gid" in switched.output
        assert switched.changed()[standby] == 1, changed_tasks(switched.output)
        again = fleet["play"]("switch.yml", fleet["inventory"], extra_vars=chosen)
        assert again.returncode == 0 and set(again.changed().values()) == {0}, changed_tasks(again.output)


def test_replace_the_storage_host_over_ssh(fleet: dict) -> None:
    """r1 with replace.yml: storage1, standby with its own copy of storage0-vol0, takes the volume
    over (a hash backup) and storage0 gives it up; a second run changes nothing."""
    request = {"walbops_replace": "storage", "walbops_old": "storage0", "walbops_new": "storage1"}
    replaced = fleet["play"]("replace.yml", fleet["inventory"], extra_vars=request)
    assert replaced.returncode == 0, replaced.describe()
    assert "storage0-vol0: on storage1 now, restorable at gid" in replaced.output
    again = fleet["play"]("replace.yml", fleet["inventory"], extra_vars=request)
    assert again.returncode == 0 and set(again.changed().values()) == {0}, changed_tasks(again.output)


def test_module_docs_render_from_the_team_directory(fleet: dict) -> None:
    """ansible-doc finds the installed collection's modules from a directory that is not the checkout."""
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "walbops.walbops.walb_backup"],
                            cwd=fleet["project"].directory, env=fleet["project"].env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "walbops.walbops.walb_backup" in result.stdout and "OPTIONS" in result.stdout
    assert sorted(path.name for path in fleet["project"].directory.iterdir()) == ["rollout.yml"]
