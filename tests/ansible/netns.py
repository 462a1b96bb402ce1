"""Test hosts as network namespaces on this machine, each running its own sshd.

``ansible-playbook`` reaches them over ssh exactly as it reaches real machines, and agents
in different namespaces talk to each other over TCP across a bridge in the root namespace::

    with test_hosts(["storage0", "storage1", "proxy0", "archive0"], workdir) as hosts:
        inventory = hosts.write_inventory(workdir / "hosts.yml", {"storage": ["storage0", "storage1"]})
        hosts.ssh("proxy0", "ip -4 addr show dev eth0")

Layout of one run (``<tag>`` is a small number free at start, ``<pid>`` this process):

* bridge ``wb<tag>br`` in the root namespace, address 10.<x>.0.1/24 (a /24 nothing else uses);
* per host a namespace ``wbt<pid>-<run>-<name>`` whose ``eth0`` (10.<x>.0.<2+i>/24) is one end
  of a veth pair; the other end, ``wb<tag>h<i>``, is a port of the bridge;
* every link created carries the alias ``walbops-test-hosts pid=<pid> run=<run>``, so the links and
  namespaces of a crashed run can be found and removed by the next one.

Only the network is separate: the filesystem (and so every file a host writes) is this machine's.
IP forwarding in the root namespace is left as it is (off on the test machines), so traffic from
the hosts goes no further than the bridge.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from walbops.device.registry import pid_alive

SSHD = "/usr/sbin/sshd"
REMOTE_PYTHON = "/usr/bin/python3"
# sshd refuses to start without its privilege separation directory, which the (not started)
# Debian service would normally create at boot.
PRIVSEP_DIR = Path("/run/sshd")

NAMESPACE_PREFIX = "wbt"
LINK_ALIAS_PREFIX = "walbops-test-hosts"
CONTROL_DIR_PREFIX = "wbtcp"
# ssh options for the harness's own ssh and for Ansible: the host keys are new on every run.
NO_HOST_KEY_CHECK = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]

STARTUP_TIMEOUT = 30.0
PROCESS_STOP_TIMEOUT = 3.0

_LEFTOVER_NAMESPACE = re.compile(rf"^{NAMESPACE_PREFIX}(\d+)-\d+-")
_LEFTOVER_ALIAS = re.compile(rf"^{LINK_ALIAS_PREFIX} pid=(\d+)\b")
_HOST_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Several runs in one process (a fixture's hosts plus a test's own) need distinct names.
_run_numbers = itertools.count(1)


class NetnsHarnessError(RuntimeError):
    """The test hosts could not be set up (missing tools, an sshd that did not come up, ...)."""


@dataclass(frozen=True)
class NetnsHost:
    name: str  # the inventory name
    namespace: str  # for `ip netns exec`
    ip: str  # eth0 inside the namespace; sshd listens here
    veth: str  # the bridge side of the veth pair, in the root namespace

    __test__ = False  # not a pytest test class, even when imported into a test module


def require_tools() -> None:
    """Fail with a hint at scripts/bootstrap if a tool the harness runs is missing."""
    if os.geteuid() != 0:
        raise NetnsHarnessError("the netns test hosts need root (network namespaces, bridge, sshd as root)")
    needed = {
        "ip": "iproute2",
        SSHD: "openssh-server",
        "ssh": "openssh-client",
        "ssh-keygen": "openssh-client",
        REMOTE_PYTHON: "python3",
    }
    missing = [f"{tool} (package {package})" for tool, package in needed.items() if shutil.which(tool) is None]
    if missing:
        raise NetnsHarnessError(f"missing {', '.join(missing)}: run scripts/bootstrap (as root) to install them")


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise NetnsHarnessError(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _namespaces() -> list[str]:
    # Lines read "NAME" or "NAME (id: N)".
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]


def _links() -> list[dict[str, Any]]:
    return json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")


def _namespace_pids(namespace: str) -> list[int]:
    result = _run(["ip", "netns", "pids", namespace], check=False)
    return [int(word) for word in result.stdout.split()] if result.returncode == 0 else []


def _kill_processes_in(namespaces: Sequence[str]) -> None:
    """SIGTERM everything inside the namespaces, then SIGKILL what outlives the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        survivors = [pid for namespace in namespaces for pid in _namespace_pids(namespace)]
        for pid in survivors:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + PROCESS_STOP_TIMEOUT
        while survivors and time.monotonic() < deadline:
            time.sleep(0.05)
            survivors = [pid for namespace in namespaces for pid in _namespace_pids(namespace)]
        if not survivors:
            return


def _delete_namespaces_and_links(namespaces: Sequence[str], links: Sequence[str]) -> list[str]:
    """Delete what exists of them; return the errors instead of stopping at the first."""
    errors = []
    _kill_processes_in(namespaces)
    # Links first: deleting a veth's bridge side takes its eth0 peer along at once, whereas a
    # deleted namespace releases its devices asynchronously (and the veth would vanish under us).
    existing_links = {link["ifname"] for link in _links()}
    for link in links:
        if link in existing_links:
            result = _run(["ip", "link", "delete", link], check=False)
            if result.returncode != 0 and "Cannot find device" not in result.stderr:
                errors.append(f"ip link delete {link}: {result.stderr.strip()}")
    for namespace in namespaces:
        result = _run(["ip", "netns", "delete", namespace], check=False)
        if result.returncode != 0:
            errors.append(f"ip netns delete {namespace}: {result.stderr.strip()}")
    return errors


def cleanup_leftovers() -> None:
    """Remove namespaces, links and control socket dirs left by runs whose process is gone."""
    dead_namespaces = [
        namespace
        for namespace in _namespaces()
        if (match := _LEFTOVER_NAMESPACE.match(namespace)) and not pid_alive(int(match.group(1)))
    ]
    dead_links = [
        link["ifname"]
        for link in _links()
        if (match := _LEFTOVER_ALIAS.match(link.get("ifalias", ""))) and not pid_alive(int(match.group(1)))
    ]
    _delete_namespaces_and_links(dead_namespaces, dead_links)
    for control_dir in Path(tempfile.gettempdir()).glob(f"{CONTROL_DIR_PREFIX}*-*"):
        pid = control_dir.name[len(CONTROL_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(control_dir, ignore_errors=True)


def _pick_link_tag() -> int:
    """A number (start: our pid) for which no `wb<tag>...` link exists yet."""
    names = {link["ifname"] for link in _links()}
    for offset in range(10000):
        tag = (os.getpid() + offset) % 10000
        if not any(re.fullmatch(rf"wb{tag}(br|h\d+)", name) for name in names):
            return tag
    raise NetnsHarnessError("no free wb<N>br bridge name")


def _pick_subnet() -> ipaddress.IPv4Network:
    """A 10.<x>.0.0/24 that overlaps no address or route on this machine."""
    used = []
    for entry in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for address in entry.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{address['local']}/{address['prefixlen']}", strict=False))
    for route in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
        destination = route.get("dst", "")
        if destination and destination != "default":
            used.append(ipaddress.ip_network(destination if "/" in destination else f"{destination}/32", strict=False))
    # Start somewhere pid-dependent in 10.100-10.249, away from the low 10.x that VPNs and docker like.
    start = os.getpid() % 150
    for offset in range(150):
        candidate = ipaddress.IPv4Network(f"10.{100 + (start + offset) % 150}.0.0/24")
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise NetnsHarnessError("no free 10.x.0.0/24 for the test bridge")


class TestHosts:
    """Network namespaces with an sshd each, on one bridge. Use as a context manager."""

    __test__ = False  # not a pytest test class, even when imported into a test module

    def __init__(self, names: Sequence[str], workdir: Path) -> None:
        if not names:
            raise ValueError("test_hosts needs at least one host name")
        for name in names:
            if not _HOST_NAME.match(name) or len(name) > 40:
                raise ValueError(f"host name {name!r}: use lowercase letters, digits and _ (max 40)")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate host names in {list(names)}")
        if len(names) > 250:
            raise ValueError("at most 250 hosts fit the /24")
        self.names = list(names)
        self.workdir = Path(workdir).resolve()
        self.run_id = f"{os.getpid()}-{next(_run_numbers)}"
        self.link_alias = f"{LINK_ALIAS_PREFIX} pid={os.getpid()} run={self.run_id.split('-')[1]}"
        self.client_key = self.workdir / "id_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.hosts: dict[str, NetnsHost] = {}
        self.bridge = ""
        self.bridge_ip = ""
        self.network: ipaddress.IPv4Network | None = None
        # Ansible's ssh ControlMaster sockets: a short path (sun_path holds 108 bytes) of our own,
        # so a later run that gets the same IPs never reuses a master connected to a dead sshd.
        self.control_path_dir: Path | None = None
        self._sshds: dict[str, subprocess.Popen[bytes]] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> TestHosts:
        require_tools()
        cleanup_leftovers()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close(raise_errors=exc_type is None)

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_path_dir = Path(tempfile.mkdtemp(prefix=f"{CONTROL_DIR_PREFIX}{self.run_id}-"))
        self._generate_keys()
        self._create_network()
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for host in self.hosts.values():
            self._start_sshd(host)
        self._wait_until_reachable()

    def _host_dir(self, name: str) -> Path:
        return self.workdir / "hosts" / name

    def _generate_keys(self) -> None:
        """The client key pair (in authorized_keys) and each host's host key, made in parallel."""
        keys = [(self.client_key, "walbops-test-client")]
        for name in self.names:
            self._host_dir(name).mkdir(parents=True, exist_ok=True)
            keys.append((self._host_dir(name) / "ssh_host_ed25519_key", f"walbops-test-host-{name}"))
        keygens = []
        for key, comment in keys:
            # ssh-keygen asks before overwriting; a reused workdir gets fresh keys.
            key.unlink(missing_ok=True)
            key.with_suffix(".pub").unlink(missing_ok=True)
            argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)]
            keygen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            keygens.append((key, keygen))
        failures = []
        for key, keygen in keygens:
            output, _ = keygen.communicate(timeout=30)
            if keygen.returncode != 0:
                failures.append(f"ssh-keygen for {key} failed ({keygen.returncode}): {output.strip()}")
        if failures:
            raise NetnsHarnessError("; ".join(failures))
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())

    def _create_network(self) -> None:
        tag = _pick_link_tag()
        self.network = _pick_subnet()
        addresses = list(self.network.hosts())
        self.bridge = f"wb{tag}br"
        self.bridge_ip = str(addresses[0])
        prefix = self.network.prefixlen
        # forward_delay 0: ports forward at once instead of after 15 s of "learning".
        _run(["ip", "link", "add", "name", self.bridge, "type", "bridge", "forward_delay", "0"])
        _run(["ip", "link", "set", "dev", self.bridge, "alias", self.link_alias])
        _run(["ip", "addr", "add", f"{self.bridge_ip}/{prefix}", "dev", self.bridge])
        _run(["ip", "link", "set", "dev", self.bridge, "up"])
        for index, name in enumerate(self.names):
            host = NetnsHost(
                name=name,
                namespace=f"{NAMESPACE_PREFIX}{self.run_id}-{name}",
                ip=str(addresses[1 + index]),
                veth=f"wb{tag}h{index}",
            )
            self.hosts[name] = host
            _run(["ip", "netns", "add", host.namespace])
            _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.namespace])
            _run(["ip", "link", "set", "dev", host.veth, "alias", self.link_alias, "master", self.bridge, "up"])
            inside = ["ip", "-n", host.namespace]
            _run([*inside, "link", "set", "dev", "lo", "up"])
            _run([*inside, "addr", "add", f"{host.ip}/{prefix}", "dev", "eth0"])
            _run([*inside, "link", "set", "dev", "eth0", "up"])
            _run([*inside, "route", "add", "default", "via", self.bridge_ip])

    def _sshd_config(self, host: NetnsHost) -> str:
        host_dir = self._host_dir(host.name)
        return "\n".join(
            [
                "# sshd of the netns test host " + host.name,
                "Port 22",
                f"ListenAddress {host.ip}",
                "AddressFamily inet",
                f'HostKey "{host_dir / "ssh_host_ed25519_key"}"',
                f'PidFile "{host_dir / "sshd.pid"}"',
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                f'AuthorizedKeysFile "{self.authorized_keys}"',
                "UsePAM no",
                # The workdir is under /tmp (world-writable), which StrictModes would reject.
                "StrictModes no",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "X11Forwarding no",
                # Ansible opens many sessions at once (forks, ControlMaster channels).
                "MaxStartups 100",
                "MaxSessions 100",
                "Subsystem sftp internal-sftp",
                "AcceptEnv LANG LC_*",
                "LogLevel INFO",
                "",
            ]
        )

    def _start_sshd(self, host: NetnsHost) -> None:
        config = self._host_dir(host.name) / "sshd_config"
        config.write_text(self._sshd_config(host))
        with open(self._host_dir(host.name) / "sshd.log", "wb") as log:
            # `ip netns exec` execs sshd in place: the Popen is the sshd itself. -D stays in the
            # foreground so we own it, -e logs to the log file instead of syslog.
            self._sshds[host.name] = subprocess.Popen(
                ["ip", "netns", "exec", host.namespace, SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C goes to pytest, which then tears down in order
            )

    def sshd_log(self, host: str | NetnsHost) -> str:
        path = self._host_dir(self._host(host).name) / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_until_reachable(self) -> None:
        """Until `ssh root@IP true` works for every host, all probed in parallel."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = list(self.hosts.values())
        last_error: dict[str, str] = {}
        while pending:
            probes = [
                (
                    host,
                    subprocess.Popen(
                        [*self.ssh_argv(host), "-o", "ConnectTimeout=5", "true"],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    ),
                )
                for host in pending
            ]
            pending = []
            for host, probe in probes:
                try:
                    _, stderr = probe.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    probe.kill()
                    _, stderr = probe.communicate()
                if probe.returncode != 0:
                    last_error[host.name] = stderr.strip()
                    pending.append(host)
            for host in pending:
                sshd = self._sshds[host.name]
                if sshd.poll() is not None:
                    raise NetnsHarnessError(
                        f"sshd of test host {host.name} ({host.ip}, netns {host.namespace}) exited with "
                        f"{sshd.returncode}; sshd log:\n{self.sshd_log(host)}"
                    )
            if pending and time.monotonic() >= deadline:
                host = pending[0]
                raise NetnsHarnessError(
                    f"test host {host.name} ({host.ip}, netns {host.namespace}): ssh root@{host.ip} true still fails "
                    f"after {STARTUP_TIMEOUT:.0f} s: {last_error.get(host.name)}; sshd log:\n{self.sshd_log(host)}"
                )
            if pending:
                time.sleep(0.1)

    def close(self, raise_errors: bool = True) -> None:
        """Stop every process in the namespaces, delete namespaces, veths and bridge. Idempotent."""
        self._stop_control_masters()
        for sshd in self._sshds.values():
            if sshd.poll() is None:
                sshd.terminate()
        for sshd in self._sshds.values():
            try:
                sshd.wait(timeout=PROCESS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                sshd.kill()
                sshd.wait()
        # Whatever is left (ssh sessions, agents a test started with `ip netns exec`) goes too;
        # namespaces are matched by name so that a half-built run is cleaned up as well.
        own_namespaces = [name for name in _namespaces() if name.startswith(f"{NAMESPACE_PREFIX}{self.run_id}-")]
        own_links = [link["ifname"] for link in _links() if link.get("ifalias") == self.link_alias]
        errors = _delete_namespaces_and_links(own_namespaces, own_links)
        if self.control_path_dir is not None:
            shutil.rmtree(self.control_path_dir, ignore_errors=True)
        if errors and raise_errors:
            raise NetnsHarnessError("cleaning up the test hosts failed: " + "; ".join(errors))

    def _stop_control_masters(self) -> None:
        # Ansible's ControlPersist masters live in the root namespace and would otherwise linger
        # for a minute holding connections to hosts that no longer exist.
        if self.control_path_dir is None or not self.control_path_dir.is_dir():
            return
        for socket_path in self.control_path_dir.iterdir():
            if socket_path.is_socket():
                _run(
                    ["ssh", "-F", "/dev/null", "-o", f"ControlPath={socket_path}", "-O", "exit", "unused"],
                    check=False,
                    timeout=10,
                )

    # -- access ----------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> NetnsHost:
        return self.hosts[name]

    def __iter__(self) -> Iterator[NetnsHost]:
        return iter(self.hosts.values())

    def __len__(self) -> int:
        return len(self.hosts)

    def _host(self, host: str | NetnsHost) -> NetnsHost:
        return self.hosts[host] if isinstance(host, str) else host

    def ssh_argv(self, host: str | NetnsHost) -> list[str]:
        """`ssh ... root@IP`, to which the remote command is appended."""
        # -F /dev/null: neither ~/.ssh/config nor /etc/ssh/ssh_config can change what we test.
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.client_key), "-o", "IdentitiesOnly=yes", *NO_HOST_KEY_CHECK,
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"root@{self._host(host).ip}",
        ]  # fmt: skip

    def ssh(
        self,
        host: str | NetnsHost,
        command: str | Sequence[str],
        *,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on ``host`` over ssh (a list is shell-quoted, a string goes as is)."""
        remote = command if isinstance(command, str) else shlex.join(command)
        return subprocess.run(
            [*self.ssh_argv(host), remote], input=input, capture_output=True, text=True, timeout=timeout, check=check
        )

    def exec_argv(self, host: str | NetnsHost, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the host's namespace directly (no ssh), from this process."""
        return ["ip", "netns", "exec", self._host(host).namespace, *argv]

    def run_in(self, host: str | NetnsHost, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """subprocess.run of ``argv`` inside the host's namespace (text mode, output captured)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.exec_argv(host, argv), text=True, **kwargs)

    def popen_in(self, host: str | NetnsHost, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """subprocess.Popen of ``argv`` inside the host's namespace; killed at the latest on exit."""
        return subprocess.Popen(self.exec_argv(host, argv), text=True, **kwargs)

    def sshd_pids(self) -> dict[str, int]:
        return {name: sshd.pid for name, sshd in self._sshds.items()}

    def write_inventory(
        self,
        path: Path,
        groups: Mapping[str, Sequence[str]],
        host_vars: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Path:
        """A YAML inventory of all hosts (connection vars set), with ``groups`` as children of all."""
        host_vars = host_vars or {}
        unknown = {name for members in groups.values() for name in members} | set(host_vars)
        unknown -= set(self.hosts)
        if unknown:
            raise ValueError(f"inventory names unknown test hosts: {sorted(unknown)}")
        # Connection settings as host vars: they then beat any group_vars a playbook brings.
        connection = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_ssh_common_args": shlex.join(NO_HOST_KEY_CHECK),
            "ansible_python_interpreter": REMOTE_PYTHON,
            "ansible_control_path_dir": str(self.control_path_dir),
        }
        inventory = {
            "all": {
                "hosts": {
                    name: {"ansible_host": host.ip, **connection, **host_vars.get(name, {})}
                    for name, host in self.hosts.items()
                },
                "children": {group: {"hosts": {name: None for name in members}} for group, members in groups.items()},
            }
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False))
        return path


def test_hosts(names: Sequence[str], workdir: Path) -> TestHosts:
    """``with test_hosts(names, workdir) as hosts:`` the running hosts, torn down on exit."""
    return TestHosts(names, workdir)


test_hosts.__test__ = False  # type: ignore[attr-defined]  # a factory, not a pytest test
