"""The netns test hosts: Ansible reaches them over ssh, they reach each other over TCP, nothing is left."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import netns
from helpers import ROOT

ANSIBLE = str(ROOT / ".venv" / "bin" / "ansible")
PORT = 18080

# Inside a namespace: listen on ADDRESS:PORT, say "ready", answer one client with where it came from.
LISTENER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
client, (peer, _) = server.accept()
client.sendall(f"hello {peer}".encode())
client.close()
"""
# Inside a namespace: print what ADDRESS:PORT answers, or the error's name.
CONNECTOR = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as connection:
        print(connection.recv(100).decode())
except OSError as error:
    print(type(error).__name__)
"""


def start_listener(hosts: netns.TestHosts, host: str, address: str) -> subprocess.Popen[str]:
    listener = hosts.popen_in(host, ["python3", "-c", LISTENER, address, str(PORT)], stdout=subprocess.PIPE)
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    return listener


def connect_from(hosts: netns.TestHosts, host: str, address: str) -> str:
    return hosts.run_in(host, ["python3", "-c", CONNECTOR, address, str(PORT)], check=True).stdout.strip()


def ansible_ping(inventory: Path) -> dict[str, dict]:
    """``ansible all -m ping`` as a user runs it from the repository; each host's result."""
    result = subprocess.run(
        [ANSIBLE, "all", "-i", str(inventory), "-m", "ping", "--one-line"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # One line per host: "NAME | SUCCESS => {...}".
    return {
        match["host"]: {"status": match["status"], **json.loads(match["result"])}
        for match in re.finditer(r"^(?P<host>\S+) \| (?P<status>\w+) => (?P<result>\{.*\})$", result.stdout, re.M)
    }


def test_ansible_pings_hosts_which_talk_tcp_and_vanish_on_exit(tmp_path: Path) -> None:
    names = ["storage0", "storage1", "proxy0"]
    with netns.test_hosts(names, tmp_path) as hosts:
        inventory = hosts.write_inventory(
            tmp_path / "hosts.yml", {"storage": ["storage0", "storage1"], "proxy": ["proxy0"]},
            host_vars={"proxy0": {"walbops_role": "proxy"}},
        )  # fmt: skip
        replies = ansible_ping(inventory)
        assert sorted(replies) == sorted(names)
        assert all(reply["status"] == "SUCCESS" and reply.get("ping") == "pong" for reply in replies.values()), replies

        # ssh lands in the host's own namespace: its eth0 carries its address.
        for host in hosts:
            assert f"inet {host.ip}/" in hosts.ssh(host, "ip -4 -o addr show dev eth0", check=True).stdout

        # storage0 reaches a listener on storage1's address, arriving from its own address.
        storage0, storage1 = hosts["storage0"], hosts["storage1"]
        remote = start_listener(hosts, "storage1", storage1.ip)
        assert connect_from(hosts, "storage0", storage1.ip) == f"hello {storage0.ip}"
        remote.communicate(timeout=10)
        assert remote.returncode == 0

        # storage0's loopback is its own: storage1 finds nothing there.
        private = start_listener(hosts, "storage0", "127.0.0.1")
        assert connect_from(hosts, "storage1", "127.0.0.1") == "ConnectionRefusedError"
        assert private.poll() is None

        namespaces = [host.namespace for host in hosts]
        links = [hosts.bridge, *(host.veth for host in hosts)]
        sshd_pids = list(hosts.sshd_pids().values())
        control_path_dir = hosts.control_path_dir

    # The still-listening process inside storage0 was stopped with the hosts.
    private.communicate(timeout=5)
    assert private.returncode != 0
    left_namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [namespace for namespace in namespaces if namespace in left_namespaces.split()]
    left_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    assert not [link for link in links if re.search(rf"^{link}\b", left_links, re.M)]
    assert not [pid for pid in sshd_pids if Path(f"/proc/{pid}").exists()]
    assert control_path_dir is not None and not control_path_dir.exists()


def test_fixture_starts_four_hosts_that_see_each_other(
    netns_hosts: Callable[[Sequence[str]], netns.TestHosts],
) -> None:
    hosts = netns_hosts(["storage0", "storage1", "proxy0", "archive0"])
    assert len({host.ip for host in hosts}) == 4 and len({host.namespace for host in hosts}) == 4
    # Every host reaches every host's sshd through the bridge.
    connect_to_all = [
        "python3",
        "-c",
        "import socket, sys\nfor ip in sys.argv[1:]: socket.create_connection((ip, 22), 5)",
    ]
    for host in hosts:
        result = hosts.ssh(host, [*connect_to_all, *(other.ip for other in hosts)])
        assert result.returncode == 0, f"{host.name}: {result.stderr}"
