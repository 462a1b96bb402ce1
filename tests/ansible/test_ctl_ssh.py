"""``walbops ctl --ssh``: an agent that listens only on a netns host's 127.0.0.1, reached through
that host's sshd (paramiko, direct-tcpip), with its host key checked against known_hosts."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import netns
import pytest
import yaml
from helpers import ROOT

from walbops.controller import Controller, Layout
from walbops.net.auth import write_key

PORT = 10200  # the agent's, inside the host's namespace


def walbops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def remote_archive(netns_hosts: Callable[[Sequence[str]], netns.TestHosts], tmp_path_factory: pytest.TempPathFactory):
    """An archive agent inside archive0's namespace on 127.0.0.1 only; the hosts, the key, the dir."""
    hosts = netns_hosts(["archive0"])
    workdir = tmp_path_factory.mktemp("ctl_ssh")
    key = workdir / "cluster.key"
    write_key(key)
    log = workdir / "a0.log"
    agent = hosts.popen_in("archive0", [
        sys.executable, "-m", "walbops.cli.main", "agent", "archive", "--listen", "127.0.0.1", "--port", str(PORT),
        "--id", "a0", "--base-dir", str(workdir / "a0"), "--cluster-key-file", str(key), "--log-file", str(log)])
    deadline = time.monotonic() + 30
    while "listening" not in (log.read_text() if log.exists() else ""):
        assert agent.poll() is None and time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.1)
    yield hosts, key, workdir
    agent.terminate()
    agent.wait(timeout=30)


def host_key_line(hosts: netns.TestHosts, name: str) -> str:
    """archive0's host key as a known_hosts line."""
    kind, blob, *_ = (hosts.workdir / "hosts" / name / "ssh_host_ed25519_key.pub").read_text().split()
    return f"{hosts[name].ip} {kind} {blob}\n"


def ctl(hosts: netns.TestHosts, key: Path, known_hosts: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return walbops("ctl", "--ssh", f"root@{hosts['archive0'].ip}", "--ssh-key", str(hosts.client_key),
                   "--known-hosts", str(known_hosts), "--address", "127.0.0.1", "--port", str(PORT),
                   "--key", str(key), *command)


def test_an_unknown_host_key_is_refused_with_how_to_trust_it(remote_archive, tmp_path):
    hosts, key, _ = remote_archive
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    result = ctl(hosts, key, known_hosts, "get", "state", "vol0")
    assert result.returncode == 6, result.stderr
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(hosts.workdir / "hosts" / "archive0" /
                                                          "ssh_host_ed25519_key.pub")],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    ip = hosts["archive0"].ip
    assert f"the host key of {ip} (ssh-ed25519 {fingerprint}) is not in {known_hosts}" in result.stderr
    assert f"ssh-keyscan -p 22 -t ssh-ed25519 {ip} >> {known_hosts}" in result.stderr
    assert known_hosts.read_text() == ""  # nothing trusted behind the operator's back


def test_a_changed_host_key_is_refused(remote_archive, tmp_path):
    hosts, key, _ = remote_archive
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob, *_ = other.with_suffix(".pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{hosts['archive0'].ip} {kind} {blob}\n")
    result = ctl(hosts, key, known_hosts, "get", "state", "vol0")
    assert result.returncode == 6 and "host key CHANGED" in result.stderr, result.stderr


def test_with_the_host_key_known_ctl_works_through_ssh(remote_archive, tmp_path):
    hosts, key, _ = remote_archive
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(host_key_line(hosts, "archive0"))
    # The agent is not reachable from here without SSH: it listens on archive0's own loopback.
    direct = walbops("ctl", "--address", "127.0.0.1", "--port", str(PORT), "--key", str(key), "--timeout", "3",
                     "get", "state", "vol0")
    assert direct.returncode != 0
    result = ctl(hosts, key, known_hosts, "init-vol", "vol1")
    assert result.returncode == 0, result.stderr
    result = ctl(hosts, key, known_hosts, "get", "state", "vol1")
    assert (result.returncode, result.stdout.strip()) == (0, "SyncReady"), result.stderr
    # Nothing listens on the remote port: the sshd's refusal is named.
    result = walbops("ctl", "--ssh", f"root@{hosts['archive0'].ip}", "--ssh-key", str(hosts.client_key),
                     "--known-hosts", str(known_hosts), "--address", "127.0.0.1", "--port", str(PORT + 1),
                     "--key", str(key), "get", "state", "vol1")
    assert result.returncode != 0 and f"could not connect to 127.0.0.1:{PORT + 1}" in result.stderr, result.stderr


def test_a_layout_with_ssh_entries_serves_ctl_and_the_controller_api(remote_archive, tmp_path):
    hosts, key, _ = remote_archive
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(host_key_line(hosts, "archive0"))
    layout = tmp_path / "layout.yml"
    layout.write_text(yaml.safe_dump({
        "key_file": str(key),
        "ssh": {"known_hosts": str(known_hosts), "key_file": str(hosts.client_key)},
        "servers": [{"name": "a0", "address": "127.0.0.1", "port": PORT, "role": "archive",
                     "ssh": f"root@{hosts['archive0'].ip}:22"}],
    }))
    assert walbops("ctl", "--layout", str(layout), "-s", "a0", "init-vol", "vol2").returncode == 0
    result = walbops("ctl", "--layout", str(layout), "-s", "a0", "get", "state", "vol2")
    assert (result.returncode, result.stdout.strip()) == (0, "SyncReady"), result.stderr
    controller = Controller(Layout.load(str(layout)))
    # Many calls share one SSH connection (one login), each with its own channel.
    assert [controller.get_state("a0", "vol2") for _ in range(5)] == ["SyncReady"] * 5
    assert controller.run("a0", "version")["host_type"] == "archive"
