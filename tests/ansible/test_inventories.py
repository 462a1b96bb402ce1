"""The shipped inventories parse, every playbook passes a syntax check against them, and the
example fleet's layout comes out as its hosts say."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(path.name for path in (ROOT / "ansible" / "playbooks").glob("*.yml"))
INVENTORIES = ("inventories/local/hosts.yml", "inventories/example/hosts.yml")


def load_filters():
    spec = importlib.util.spec_from_file_location("walbops_filters", ROOT / "ansible" / "plugins" / "filter" /
                                                  "walbops.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_every_playbook_passes_a_syntax_check(inventory: str) -> None:
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", inventory, "--syntax-check",
                             *(f"ansible/playbooks/{name}" for name in PLAYBOOKS)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_fleet_layout() -> None:
    listed = subprocess.run([str(BIN / "ansible-inventory"), "-i", "inventories/example/hosts.yml", "--list"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    inventory = json.loads(listed.stdout)
    hostvars = inventory["_meta"]["hostvars"]
    groups = {name: entry.get("hosts", []) for name, entry in inventory.items() if name != "_meta"}
    filters = load_filters()
    servers = filters.walbops_layout_servers(groups, hostvars, {"storage": "walbops_storage", "proxy": "walbops_proxy",
                                                                "archive": "walbops_archive"},
                                             {"storage": 10000, "proxy": 10100, "archive": 10200})
    assert [server["role"] for server in servers] == ["archive"] * 3 + ["proxy"] + ["storage"] * 3
    assert servers[0] == {"name": "archive1.example.net", "address": "10.20.2.10", "port": 10200, "role": "archive"}
    assert servers[2]["name"] == "archive-dr.example.net"  # the secondary: never the layout's primary
    # The drill's controller layout reaches each agent through its host's sshd.
    routed = filters.walbops_layout_servers(groups, {**hostvars, "archive1.example.net": {
        **hostvars["archive1.example.net"], "ansible_user": "ops", "ansible_port": 2222}}, {
        "storage": "walbops_storage", "proxy": "walbops_proxy", "archive": "walbops_archive"},
        {"storage": 10000, "proxy": 10100, "archive": 10200}, ssh=True)
    assert routed[0] == {**servers[0], "ssh": "ops@10.20.2.10:2222"}
    assert routed[-1] == {**servers[-1], "ssh": f"root@{hostvars[servers[-1]['name']]['ansible_host']}:22"}
    assert filters.walbops_endpoint("mq1.example.net", hostvars, 10000) == "10.20.0.21:10000"
    assert hostvars["mq1.example.net"]["walbops_storage_archive"] == "archive2.example.net"
    volumes = [volume["name"] for host in groups["walbops_storage"] for volume in hostvars[host]["walbops_volumes"]]
    assert len(volumes) == len(set(volumes)) == 4, "volume ids must be unique in a backup group"
    role_groups = {"storage": "walbops_storage", "proxy": "walbops_proxy", "archive": "walbops_archive"}
    assert filters.walbops_secondary_archives(groups, hostvars, role_groups) == ["archive-dr.example.net"]
    assert filters.walbops_primary_archive(groups, hostvars, role_groups) == "archive1.example.net"
    # Every volume but the spool (replication: none) has a copy on the secondary.
    copies = [(entry["vol"], entry["mode"]) for host in groups["walbops_storage"]
              for entry in filters.walbops_replications(hostvars[host]["walbops_volumes"], ["archive-dr.example.net"],
                                                        hostvars, "synchronizing")]
    assert copies == [("db1-pgdata", "synchronizing"), ("db2-pgdata", "synchronizing"), ("mq1-journal", "once")]
    held = filters.walbops_archived_volumes("archive-dr.example.net", groups, hostvars, role_groups)
    assert [volume["name"] for volume in held] == ["db1-pgdata", "db2-pgdata", "mq1-journal"]
    assert [volume["name"] for volume in filters.walbops_archived_volumes("archive2.example.net", groups, hostvars,
                                                                         role_groups)] == ["mq1-spool", "mq1-journal"]
    assert [volume["name"] for volume in filters.walbops_drilled(hostvars["mq1.example.net"]["walbops_volumes"],
                                                                 "secondary", "synchronizing")] == ["mq1-journal"]
    with pytest.raises(ValueError, match="replication must be one of"):
        filters.walbops_replication_mode({"name": "v", "replication": "sometimes"}, "none")


def test_auth_config_names_the_key_or_the_roles_certificate() -> None:
    filters = load_filters()
    assert filters.walbops_auth_config("key", "storage", "/etc/walbops/cluster.key", "/etc/walbops/tls") == {
        "cluster_key_file": "/etc/walbops/cluster.key"}
    assert filters.walbops_auth_config("key", "controller", "/k", "/t") == {"key_file": "/k"}
    # Role key files (docs/protocol.md 4.7): one per role in the keys directory.
    assert filters.walbops_auth_config("key", "proxy", "/k", "/t", "/etc/walbops/keys") == {
        "cluster_key_file": "/etc/walbops/keys/proxy.key"}
    assert filters.walbops_auth_config("key", "controller", "/k", "/t", "/keys") == {"key_file": "/keys/controller.key"}
    assert filters.walbops_auth_config("tls", "proxy", "/k", "/t") == {
        "tls_cert": "/t/proxy.crt", "tls_key": "/t/proxy.key", "tls_ca": "/t/ca.crt"}
    assert filters.walbops_auth_config("tls", "controller", "/k", "/t") == {
        "tls": {"cert": "/t/controller.crt", "key": "/t/controller.key", "ca": "/t/ca.crt"}}
    with pytest.raises(ValueError, match="walbops_auth must be key or tls"):
        filters.walbops_auth_config("none", "proxy", "/k", "/t")
