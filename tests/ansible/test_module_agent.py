"""walb_agent with real agents on loopback: start once, stop (SIGKILL when stuck), restart, stale pidfiles."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT
from modules import WALBOPS_BIN, ModuleFailed, run_module

from walbops.controller import Server, call
from walbops.converge.agent import runs_agent
from walbops.device.registry import pid_alive
from walbops.net.auth import load_key

sys.path.insert(0, str(ROOT / "tests" / "scenarios"))
from cluster import free_port  # noqa: E402


@dataclass
class AgentSetup:
    """One agent's config, key and pidfile in a test's directory; its processes are killed afterwards."""

    directory: Path
    role: str = "archive"
    port: int = field(default_factory=free_port)
    started: list[int] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.directory / f"{self.role}.yml"

    @property
    def key(self) -> Path:
        return self.directory / "cluster.key"

    @property
    def pidfile(self) -> Path:
        return self.directory / "run" / f"{self.role}.pid"

    def write_config(self, **values: Any) -> None:
        settings = {"id": f"{self.role[0]}0", "listen": "127.0.0.1", "port": self.port,
                    "base_dir": str(self.directory / self.role), "cluster_key_file": str(self.key),
                    "shutdown_timeout": 5, **values}
        self.config.write_text(yaml.safe_dump(settings))

    def ensure(self, check: bool = False, **options: Any) -> dict[str, Any]:
        result = run_module("walb_agent", {"role": self.role, "config": str(self.config),
                                           "pidfile": str(self.pidfile), "timeout": 10, **options}, check=check)
        if result.get("pid"):
            self.started.append(result["pid"])
        return result

    def status(self) -> dict[str, Any]:
        server = Server("agent", "127.0.0.1", self.port, self.role)
        return asyncio.run(call(server, load_key(self.key), "status", timeout=5))

    def kill_all(self) -> None:
        for pid in self.started:
            if runs_agent(pid, self.role, str(self.config)):
                os.kill(pid, signal.SIGCONT)  # one a test stopped
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid)


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} is still alive"
        time.sleep(0.02)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentSetup]:
    setup = AgentSetup(tmp_path)
    subprocess.run([WALBOPS_BIN, "keygen", str(setup.key)], check=True, capture_output=True)
    setup.write_config()
    try:
        yield setup
    finally:
        setup.kill_all()


def test_started_once_and_check_mode_starts_nothing(agent: AgentSetup) -> None:
    agent.write_config(listen="0.0.0.0")  # answered on 127.0.0.1
    predicted = agent.ensure(check=True)
    assert predicted["changed"] and predicted["pid"] is None and predicted["port"] == agent.port
    assert not agent.pidfile.exists()
    started = agent.ensure()
    pid = started["pid"]
    assert started["changed"] and started["state"] == "started" and started["port"] == agent.port
    assert started["diff"]["before"]["running"] is False and started["diff"]["after"]["pid"] == pid
    assert agent.pidfile.read_text() == f"{pid}\n"
    assert agent.status()["pid"] == pid
    assert "listening on 0.0.0.0" in agent.pidfile.with_suffix(".log").read_text()
    for check in (False, True):
        again = agent.ensure(check=check)
        assert not again["changed"] and again["pid"] == pid


def test_restarted_then_stopped(agent: AgentSetup) -> None:
    first = agent.ensure()["pid"]
    predicted = agent.ensure(check=True, state="restarted")
    assert predicted["changed"] and runs_agent(first, agent.role, str(agent.config))
    restarted = agent.ensure(state="restarted")
    assert restarted["changed"] and restarted["pid"] != first and restarted["killed"] is False
    assert not pid_alive(first) and agent.status()["pid"] == restarted["pid"]
    assert agent.ensure(check=True, state="stopped")["changed"] and pid_alive(restarted["pid"])
    stopped = agent.ensure(state="stopped")
    assert stopped["changed"] and stopped["killed"] is False and stopped["pid"] is None and stopped["port"] is None
    assert stopped["diff"]["before"]["pid"] == restarted["pid"] and stopped["diff"]["after"]["running"] is False
    assert not pid_alive(restarted["pid"]) and not agent.pidfile.exists()
    for check in (False, True):
        assert not agent.ensure(check=check, state="stopped")["changed"]


def test_an_agent_that_does_not_exit_is_killed_after_the_timeout(agent: AgentSetup) -> None:
    pid = agent.ensure()["pid"]
    os.kill(pid, signal.SIGSTOP)  # SIGTERM waits; SIGKILL does not
    stopped = agent.ensure(state="stopped", timeout=0.5)
    assert stopped["changed"] and stopped["killed"] is True
    assert not pid_alive(pid) and not agent.pidfile.exists()


def test_a_stale_pidfile_is_replaced_and_another_program_left_alone(agent: AgentSetup) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    agent.pidfile.parent.mkdir()
    agent.pidfile.write_text(f"{exited.pid}\n")
    replaced = agent.ensure()
    assert replaced["changed"] and replaced["pid"] != exited.pid
    assert agent.pidfile.read_text() == f"{replaced['pid']}\n"
    agent.ensure(state="stopped")

    other = subprocess.Popen(["sleep", "30"])
    try:
        agent.pidfile.write_text(f"{other.pid}\n")
        assert not agent.ensure(state="stopped")["changed"]
        started = agent.ensure()
        assert started["changed"] and started["pid"] != other.pid and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_bad_config_fails_before_anything_starts_or_stops(agent: AgentSetup) -> None:
    agent.write_config(max_connections="many")
    with pytest.raises(ModuleFailed, match=f"{agent.config}: key 'max_connections': 'many' is not of type"):
        agent.ensure()
    agent.write_config(cluster_key_file=str(agent.directory / "missing.key"))
    with pytest.raises(ModuleFailed, match="key 'cluster_key_file': .*missing.key: No such file"):
        agent.ensure(check=True)
    assert not agent.pidfile.parent.exists()

    agent.write_config()
    pid = agent.ensure()["pid"]
    agent.write_config(proxies=["127.0.0.1:1"])  # an archive takes no proxies
    with pytest.raises(ModuleFailed, match="Additional properties are not allowed"):
        agent.ensure(state="restarted")
    assert agent.status()["pid"] == pid


def test_an_agent_that_dies_at_start_fails_with_its_log(agent: AgentSetup) -> None:
    log = agent.directory / "logs" / "archive.log"
    agent.write_config(log_file=str(log))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", agent.port))  # bound, not listening: the agent cannot bind, nobody answers
        with pytest.raises(ModuleFailed, match="(?s)exited with status 1 at start; the end of .*archive.log:.*"
                                               "address already in use"):
            agent.ensure()
    assert not agent.pidfile.exists()
    assert agent.ensure()["changed"]  # the port is free again
