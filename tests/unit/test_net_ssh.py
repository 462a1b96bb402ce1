"""SSH destinations and layout entries (the tunnels themselves run against netns sshds in
tests/ansible/test_ctl_ssh.py)."""

from __future__ import annotations

import getpass

import pytest
import yaml

from walbops.controller import Layout
from walbops.errors import UsageError
from walbops.net.ssh import SshRoute


@pytest.mark.parametrize(("destination", "host", "port", "user", "known_as"), [
    ("root@10.0.0.2", "10.0.0.2", 22, "root", "10.0.0.2"),
    ("ops@archive0.example:2222", "archive0.example", 2222, "ops", "[archive0.example]:2222"),
    ("archive0", "archive0", 22, getpass.getuser(), "archive0"),
    ("root@[fd00::2]:2200", "fd00::2", 2200, "root", "[fd00::2]:2200"),
    ("[fd00::2]", "fd00::2", 22, getpass.getuser(), "fd00::2"),
])
def test_destinations_parse_as_ssh_takes_them(destination, host, port, user, known_as):
    route = SshRoute.parse(destination)
    assert (route.host, route.port, route.user, route.known_hosts_name) == (host, port, user, known_as)
    assert SshRoute.parse(str(route)) == route


@pytest.mark.parametrize("destination", ["", "root@", "host:0", "host:70000", "a b", "root@host:22:22", "fd00::2"])
def test_bad_destinations_are_refused_by_name(destination):
    with pytest.raises(UsageError, match="expected \\[USER@\\]HOST\\[:PORT\\]"):
        SshRoute.parse(destination)


def test_layout_ssh_entries_take_the_layouts_ssh_options(tmp_path):
    layout = tmp_path / "layout.yml"
    layout.write_text(yaml.safe_dump({
        "key_file": "k", "ssh": {"known_hosts": "/etc/walbops/known_hosts", "key_file": "/root/.ssh/ops"},
        "servers": [{"name": "a0", "address": "127.0.0.1", "port": 10200, "role": "archive", "ssh": "root@a0:22"},
                    {"name": "s0", "address": "10.0.0.3", "port": 10000, "role": "storage"}],
    }))
    loaded = Layout.load(str(layout))
    assert loaded.get("a0").ssh == SshRoute("a0", 22, "root", "/etc/walbops/known_hosts", "/root/.ssh/ops")
    assert loaded.get("s0").ssh is None


@pytest.mark.parametrize(("changes", "message"), [
    ({"ssh": {"known_host": "x"}}, "ssh takes known_hosts and key_file"),
    ({"servers": [{"name": "a0", "address": "127.0.0.1", "port": 1, "role": "archive", "ssh": "root@"}]},
     "servers\\[0\\]: ssh destination 'root@'"),
])
def test_bad_layout_ssh_entries_are_refused(tmp_path, changes, message):
    layout = tmp_path / "layout.yml"
    layout.write_text(yaml.safe_dump({"key_file": "k", "servers": [], **changes}))
    with pytest.raises(UsageError, match=message):
        Layout.load(str(layout))
