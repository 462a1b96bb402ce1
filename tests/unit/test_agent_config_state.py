"""Agent configuration (YAML + flags, jsonschema) and WalB's state machines."""

from __future__ import annotations

import argparse

import pytest

from walbops.agents import config as agent_config
from walbops.agents.state import (
    ARCHIVE_TRANSITIONS,
    PROXY_TRANSITIONS,
    STORAGE_TRANSITIONS,
    ActionCounter,
    StateMachine,
)
from walbops.errors import OperationError, UsageError


def write(tmp_path, text):
    path = tmp_path / "agent.yml"
    path.write_text(text)
    return str(path)


def test_storage_config_from_yaml_with_defaults(tmp_path):
    path = write(tmp_path, "cluster_key_file: /k\narchive: a0:10200\nproxies: [p0:10100, p1:10101]\n"
                           "max_wlog_send: 64M\n")
    config = agent_config.load("storage", path)
    assert config.port == 10000 and config.archive == "a0:10200" and config.proxies == ["p0:10100", "p1:10101"]
    assert config.max_wlog_send == 64 << 20 and config.bulk_size == 256 << 10
    assert config.implicit_snapshot_interval == 10.0 and config.base_dir == "/var/lib/walbops/storage"


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, "cluster_key_file: /k\nport: 12000\n")
    parser = argparse.ArgumentParser()
    agent_config.add_flags(parser, "archive")
    args = parser.parse_args(["--config", path, "--port", "12345", "--store", "lvm:vg0/tp0", "--discard", "ignore"])
    config = agent_config.from_args("archive", args)
    assert config.port == 12345 and config.store == {"kind": "lvm", "vg": "vg0", "thinpool": "tp0"}
    assert config.discard == "ignore"


@pytest.mark.parametrize("text, fragment", [
    ("cluster_key_file: /k\nport: 70000\n", "'port'"),
    ("cluster_key_file: /k\nprot: 1\n", "prot"),
    ("cluster_key_file: /k\ndiscard: shred\n", "'discard'"),
    ("cluster_key_file: /k\nstore: {kind: lvm}\n", "'store'"),
    ("port: 1\n", "cluster_key_file"),
    ("- a\n- b\n", "mapping"),
    ("port: [\n", "YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        agent_config.load("archive", path)
    assert str(caught.value).startswith(path) and fragment in str(caught.value)


def test_storage_needs_archive_and_proxies(tmp_path):
    with pytest.raises(UsageError, match="archive"):
        agent_config.load("storage", write(tmp_path, "cluster_key_file: /k\nproxies: [p:1]\n"))
    with pytest.raises(UsageError, match="proxies"):
        agent_config.load("storage", write(tmp_path, "cluster_key_file: /k\narchive: a:1\nproxies: ['p']\n"))


def test_transaction_commits_and_persists_steady_states():
    saved = []
    machine = StateMachine(ARCHIVE_TRANSITIONS, "Clear", saved.append)
    with machine.transaction("Clear", "InitVol") as tx:
        assert machine.state == "InitVol"
        tx.commit("SyncReady")
    assert machine.state == "SyncReady" and saved == ["SyncReady"]


def test_failed_operation_rolls_back_to_where_it_started():
    machine = StateMachine(STORAGE_TRANSITIONS, "SyncReady")
    with pytest.raises(RuntimeError):
        with machine.transaction("SyncReady", "FullSync"):
            raise RuntimeError("connection cut")
    assert machine.state == "SyncReady"


def test_only_declared_transitions_are_allowed():
    machine = StateMachine(PROXY_TRANSITIONS, "Clear")
    with pytest.raises(OperationError, match="bad state Clear"):
        machine.transaction("Stopped", "Start")
    with pytest.raises(OperationError):
        machine.transaction("Clear", "Start")
    with machine.transaction("Clear", "AddArchiveInfo") as tx:
        with pytest.raises(OperationError):
            tx.commit("Started")
        tx.commit("Stopped")
    assert machine.state == "Stopped"


def test_action_counter_refuses_conflicts():
    actions = ActionCounter()
    with actions.begin("Restore"):
        with pytest.raises(OperationError, match="Restore"):
            actions.refuse_if_running(["Restore", "Apply"])
        assert actions.count("Restore") == 1
    actions.refuse_if_running(["Restore"])
    assert actions.idle()
