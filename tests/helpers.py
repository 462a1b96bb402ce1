"""Helpers shared by the tests (importable as ``helpers``)."""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "walb-tools-1.0.19"


# Test agents listen on ports below the kernel's ephemeral range (32768-60999 here), from a range
# no other test uses (the demo takes 10000-10200, the local playbook tests 20000 and up): a port the
# kernel hands out with bind(0) may be taken again, between the test choosing it and the agent
# binding it, as the local end of some outgoing connection (CI saw this as EADDRINUSE).
TEST_PORTS = range(12000, 20000)
_ports_given: set[int] = set()


ASYNCIO_DEBUG_FOR_TESTS = "WALBOPS_TESTS_ASYNCIO_DEBUG"  # set once PYTHONASYNCIODEBUG was taken


def take_asyncio_debug() -> bool:
    """Whether scripts/test asked for asyncio's debug mode (PYTHONASYNCIODEBUG), taking it out of
    the environment the tests' processes inherit.

    Debug mode keeps a stack for every handle and task and raises on calls from the wrong thread.
    The tests' own event loops keep it (tests/conftest.py); the agents, device daemons and modules
    the tests start run without it, as in production, where it cost them a third of their CPU
    time, unless a test asks for it (``agent_env(asyncio_debug=True)``: the canary scenarios).
    """
    if os.environ.pop("PYTHONASYNCIODEBUG", ""):
        os.environ[ASYNCIO_DEBUG_FOR_TESTS] = "1"  # pytest-xdist's workers start from this environment
    return os.environ.get(ASYNCIO_DEBUG_FOR_TESTS) == "1"


def agent_env(asyncio_debug: bool) -> dict[str, str] | None:
    """The environment of an agent a test starts: asyncio's debug mode on when ``asyncio_debug``
    and scripts/test asked for it; None (inherit) otherwise."""
    if asyncio_debug and os.environ.get(ASYNCIO_DEBUG_FOR_TESTS) == "1":
        return {**os.environ, "PYTHONASYNCIODEBUG": "1"}
    return None


def worker_ports() -> range:
    """This process's share of TEST_PORTS: pytest-xdist's workers (gw0, gw1, ...) take every Nth
    port, so that two workers never hand out the same port (each knows only its own)."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    return TEST_PORTS[index::count]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that no earlier call returned."""
    ports = worker_ports()
    start = random.randrange(len(ports))
    for offset in range(len(ports)):
        port = ports[(start + offset) % len(ports)]
        if port in _ports_given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise AssertionError(f"no free port left in {ports}")


def sha1_of(path: Path | str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def end_of_valid_logs(ldev: Path | str) -> int:
    """The lsid where the valid logs of a stopped device's ring end (redo's end)."""
    from walbops.diff.logs import LdevLogReader, read_super

    fd = os.open(ldev, os.O_RDONLY)
    try:
        sup = read_super(fd)
        end = sup.written_lsid
        for pack in LdevLogReader(fd, sup).packs(end):
            end = pack.header.next_lsid
        return end
    finally:
        os.close(fd)


def write_torn_pack(ldev: Path | str, lsid: int, ios: list[tuple[int, bytes]]) -> None:
    """Log one pack of ``ios`` ((LB address, data) each) at ``lsid`` of a stopped device's ring,
    with its last IO's data never written: what a daemon killed inside its log write leaves."""
    from walbops.diff.logs import read_super
    from walbops.formats.ldev import LogpackBuilder

    fd = os.open(ldev, os.O_RDWR)
    try:
        sup = read_super(fd)
        pbs = sup.physical_bs
        builder = LogpackBuilder(pbs, sup.log_checksum_salt, lsid, sup.ring_buffer_size)
        for address, data in ios:
            builder.add_normal(address, data)
        header, record_data = builder.finish()
        if any(rec.is_padding for rec in header.records):
            raise ValueError(f"a pack at lsid {lsid} would wrap the ring; choose smaller IOs")
        torn = b"".join(record_data[:-1]) + b"\xee" * len(record_data[-1])
        os.pwrite(fd, header.serialize(pbs, sup.log_checksum_salt) + torn, sup.offset_pb(lsid) * pbs)
        os.fsync(fd)
    finally:
        os.close(fd)


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] of every sample an agent serves (counters under their _total
    names), and every family it declares, with or without samples yet (counters under both)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        samples.setdefault(family.name, [])
        if family.type == "counter":
            samples.setdefault(family.name + "_total", [])
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    found = [v for got, v in samples.get(name, []) if all(got.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {samples.get(name)}"
    return found[0]


def documented_metrics() -> dict[str, set[str]]:
    """docs/operations.md's metric table: name -> the agents (and ``device``) that serve it."""
    table = (ROOT / "docs" / "operations.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    metrics: dict[str, set[str]] = {}
    for match in re.finditer(r"^\| `(walbops_\w+)` \| ([a-z, ]+) \|.*$", table, re.MULTILINE):
        if "(only " not in match[0]:  # those appear once their condition holds
            metrics[match[1]] = {agent.strip() for agent in match[2].split(",")}
    return metrics
