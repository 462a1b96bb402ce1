"""An agent process kept by a pidfile (the ``walb_agent`` module, for hosts without systemd).

The pidfile alone is not trusted: the agent counts as running only while the process it
names is alive and its command line is ``walbops agent ROLE`` (``walbops worker`` for the
worker) with this config, so a stale pidfile (a dead pid, or one the kernel gave to another
program since) is replaced, and another program is never signalled. A start is done once the
agent answers a ``status`` request with its own pid on its configured address, with the
cluster key of its config; the worker, which listens nowhere, once it has run for
``WORKER_SETTLE`` seconds. A process that dies first fails the start with the tail of its log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

from ..agents import config as agent_config
from ..controller import Server, call
from ..device.registry import pid_alive
from ..durable import atomic_write
from ..errors import OperationError, UsageError, WalbopsError
from ..net.tls import Secret
from ..worker import WorkerConfig
from . import AGENT_TIMEOUT, Outcome

KILL_WAIT = 5.0  # [s] for a SIGKILLed agent to be gone
POLL = 0.1  # [s]
AGENT_CWD = "/"  # the agent's working directory: it pins no mount; relative config paths start here
LOG_TAIL = 15  # [lines] of the agent's log quoted when it died at start
LOG_TAIL_BYTES = 8192  # [bytes] read from the log's end to find them
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # listen address -> where to reach it
WORKER = "worker"  # the archive's maintenance daemon (walbops worker), kept like an agent
PROCESS_ROLES = (*agent_config.ROLES, WORKER)
WORKER_SETTLE = 1.0  # [s] a worker that lives this long got past its config and its archive's layout


def command_words(role: str) -> list[str]:
    """The words after ``walbops`` that run ``role``: ``agent ROLE``, or ``worker``."""
    return [WORKER] if role == WORKER else ["agent", role]


def read_pid(pidfile: str) -> int | None:
    """The pid a pidfile names; None when it is missing or holds no pid."""
    try:
        with open(pidfile) as stream:
            return int(stream.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def runs_agent(pid: int, role: str, config: str) -> bool:
    """Whether ``pid`` is alive and runs ``walbops agent ROLE`` with ``config`` (links resolved)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            argv = stream.read().decode("utf-8", "surrogateescape").split("\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False  # it exited meanwhile
    words = command_words(role)
    for index in range(len(argv) - len(words) + 1):
        if argv[index:index + len(words)] == words:
            program, options = argv[:index], argv[index + len(words):]
            break
    else:
        return False
    # The console script, or ``python -m walbops.cli.main`` as this module starts it.
    if not any(os.path.basename(word) == "walbops" or word == "walbops.cli.main" for word in program):
        return False
    given = None
    for index, word in enumerate(options):
        if word in ("--config", "-c") and index + 1 < len(options):
            given = options[index + 1]
        elif word.startswith("--config="):
            given = word.removeprefix("--config=")
    return given is not None and os.path.realpath(os.path.join(cwd, given)) == os.path.realpath(config)


def _describe(role: str, config: str, pidfile: str) -> dict[str, Any]:
    pid = read_pid(pidfile)
    running = pid is not None and runs_agent(pid, role, config)
    return {"role": role, "config": config, "pidfile": pidfile, "running": running, "pid": pid if running else None}


def _validated(role: str, config: str) -> tuple[agent_config.Config, Secret]:
    """The agent's configuration and its key or TLS files, or the error the agent would die of."""
    loaded = agent_config.load(role, config)
    try:
        return loaded, loaded.credentials(AGENT_CWD)  # relative paths are the agent's: it runs there
    except OSError as exc:
        raise UsageError(f"{config}: key 'cluster_key_file': {exc.filename}: {exc.strerror}") from None
    except UsageError as exc:
        raise UsageError(f"{config}: {exc}") from None
    except WalbopsError as exc:
        raise UsageError(f"{config}: key 'cluster_key_file': {exc}") from None


def ensure_agent(role: str, config: str, pidfile: str, state: str = "started", timeout: float = AGENT_TIMEOUT,
                 check: bool = False) -> Outcome:
    """Make ``walbops agent ROLE --config CONFIG`` run (started), not run (stopped), or run anew (restarted)."""
    if role not in PROCESS_ROLES:
        raise UsageError(f"unknown agent role {role!r} (expected {', '.join(PROCESS_ROLES)})")
    if state not in ("started", "stopped", "restarted"):
        raise UsageError(f"state must be started, stopped or restarted, not {state!r}")
    if timeout < 0:
        raise UsageError(f"timeout must be at least 0 s, not {timeout}")
    config, pidfile = os.path.abspath(config), os.path.abspath(pidfile)
    before = _describe(role, config, pidfile)
    values = {"role": role, "config": config, "pidfile": pidfile}
    if state == "stopped":
        after = {**before, "running": False, "pid": None}
        stopped = {**values, "pid": None, "port": None, "state": "stopped"}
        if not before["running"] or check:
            return Outcome(before["running"], before, after, stopped)
        return Outcome(True, before, after, {**stopped, "killed": _stop(before["pid"], pidfile, timeout)})
    # Validated before anything stops or starts: a bad config must not cost the running agent.
    started: dict[str, Any]
    if role == WORKER:
        worker = WorkerConfig.load(config)
        started = {**values, "port": None, "state": "started"}
    else:
        loaded, key = _validated(role, config)
        started = {**values, "port": int(loaded.port), "state": "started"}
    if state == "started" and before["running"]:
        return Outcome(False, before, before, {**started, "pid": before["pid"]})
    if check:
        return Outcome(True, before, {**before, "running": True, "pid": None}, {**started, "pid": None})
    killed = _stop(before["pid"], pidfile, timeout) if before["running"] else False
    if role == WORKER:
        log = worker.log_file if worker.log_file != "-" else os.path.splitext(pidfile)[0] + ".log"
        pid = _start_worker(config, pidfile, os.path.join(AGENT_CWD, log))
    else:
        pid = _start(loaded, key, config, pidfile, timeout)
    extra = {"killed": killed} if state == "restarted" else {}
    return Outcome(True, before, {**before, "running": True, "pid": pid}, {**started, "pid": pid, **extra})


def _log_file(loaded: agent_config.Config, pidfile: str) -> str:
    """Where the agent's stdout and stderr go: its own log file, else one beside the pidfile."""
    configured = loaded.log_path()
    if configured is not None:
        return os.path.join(AGENT_CWD, configured)
    return os.path.splitext(pidfile)[0] + ".log"


def _start(loaded: agent_config.Config, key: Secret, config: str, pidfile: str, timeout: float) -> int:
    log = _log_file(loaded, pidfile)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    command = [sys.executable, "-m", "walbops.cli.main", "agent", loaded.role, "--config", config]
    with open(log, "ab") as log_stream:
        process = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, stdout=log_stream,
                                   stderr=subprocess.STDOUT, cwd=AGENT_CWD)
    atomic_write(pidfile, f"{process.pid}\n".encode())
    host = WILDCARDS.get(str(loaded.listen), str(loaded.listen))
    server = Server(f"{loaded.role} agent", host, int(loaded.port), loaded.role)
    deadline = time.monotonic() + timeout
    problem = "no answer yet"
    while True:
        code = process.poll()
        if code is not None:
            os.unlink(pidfile)
            raise OperationError(f"the {loaded.role} agent of {config} exited with status {code} at start; "
                                 f"the end of {log}:\n{_tail(log)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OperationError(f"the {loaded.role} agent of {config} (pid {process.pid}, still running) did not "
                                 f"answer on {host}:{loaded.port} within {timeout:g} s ({problem}); see {log}")
        try:
            answer = asyncio.run(_ask_version(server, key, loaded.role, remaining))
        except (OSError, WalbopsError) as exc:
            problem = str(exc) or type(exc).__name__
        else:
            if answer.get("pid") == process.pid:
                return process.pid
            # Another agent holds the port; ours is about to die of it.
            problem = f"pid {answer.get('pid')} answers on that port"
        time.sleep(POLL)


def _start_worker(config: str, pidfile: str, log: str) -> int:
    os.makedirs(os.path.dirname(log), exist_ok=True)
    os.makedirs(os.path.dirname(pidfile), exist_ok=True)
    command = [sys.executable, "-m", "walbops.cli.main", WORKER, "--config", config, "--log-file", log]
    process = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=AGENT_CWD)
    atomic_write(pidfile, f"{process.pid}\n".encode())
    try:
        code = process.wait(WORKER_SETTLE)
    except subprocess.TimeoutExpired:
        return process.pid
    os.unlink(pidfile)
    raise OperationError(f"the worker of {config} exited with status {code} at start; the end of {log}:\n"
                         f"{_tail(log)}")


async def _ask_version(server: Server, key: Secret, role: str, within: float) -> dict[str, Any]:
    """``version`` (which every role may ask): in TLS mode we hold the agent's own certificate."""
    answer: dict[str, Any] = await asyncio.wait_for(
        call(server, key, "version", timeout=within, client_id=f"walb_agent-{role}", role=role), within)
    return answer


def _tail(log: str) -> str:
    try:
        with open(log, "rb") as stream:
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - LOG_TAIL_BYTES))
            text = stream.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"
    return "\n".join(text.splitlines()[-LOG_TAIL:])


def _stop(pid: int, pidfile: str, timeout: float) -> bool:
    """SIGTERM (a graceful shutdown), SIGKILL after ``timeout``; returns whether it had to kill."""
    killed = not _signal_and_wait(pid, signal.SIGTERM, timeout)
    if killed and not _signal_and_wait(pid, signal.SIGKILL, KILL_WAIT):
        raise OperationError(f"agent pid {pid} is still alive {KILL_WAIT:g} s after SIGKILL")
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
    return killed


def _signal_and_wait(pid: int, sig: signal.Signals, timeout: float) -> bool:
    """Send ``sig``; whether the process is gone within ``timeout`` seconds."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True
