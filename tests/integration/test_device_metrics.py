"""A walb device daemon's own Prometheus metrics (docs/operations.md, agent ``device``): served at
its --metrics-listen, counting what it was asked to do, and moved or stopped on a running device."""

from __future__ import annotations

import json
import mmap
import os
import socket
import urllib.error

import pytest
from devices import make_files, walbops, write_direct
from helpers import documented_metrics, free_port, scrape, value

from walbops.device.registry import DevicePaths

MiB = 1 << 20


def read_direct(path: str, offset: int, size: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        os.preadv(fd, [mmap.mmap(-1, size)], offset)
    finally:
        os.close(fd)


def ensure_metrics(device, listen: str) -> dict:
    result = walbops("ensure", "device", device.name, "--ldev", str(device.ldev), "--ddev", str(device.ddev),
                     "--metrics-listen", listen, "--json", check=True)
    return json.loads(result.stdout)


def test_a_device_serves_its_documented_metrics_and_counts_its_ios(device_factory):
    port = free_port()
    device = device_factory(4096, 64 * MiB, 64 * MiB, "--metrics-listen", f"127.0.0.1:{port}")
    assert device.status()["metrics_listen"] == f"127.0.0.1:{port}"
    before = scrape(port)
    documented = {name for name, agents in documented_metrics().items() if "device" in agents}
    assert len(documented) >= 15
    assert documented <= set(before), f"not served: {documented - set(before)}"
    assert value(before, "walbops_build_info", host_type="device", id=device.name) == 1
    assert value(before, "walbops_device_size_bytes", device=device.name) == 64 * MiB

    for index in range(4):
        write_direct(device.path, index * MiB, os.urandom(MiB))
    fd = os.open(device.path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    read_direct(device.path, 32 * MiB, MiB)  # a region nothing read or wrote: in no page cache
    after = scrape(port)

    def grew(name: str) -> float:
        return value(after, name, device=device.name) - value(before, name, device=device.name)
    assert grew("walbops_device_writes_total") >= 4
    assert grew("walbops_device_write_bytes_total") == 4 * MiB
    assert grew("walbops_device_reads_total") >= 1 and grew("walbops_device_read_bytes_total") >= MiB
    assert grew("walbops_device_logpacks_total") >= 1 and grew("walbops_device_log_syncs_total") >= 1
    assert value(after, "walbops_device_refused_writes_total", device=device.name) == 0
    # 4 MiB of data logged, with a header block per pack.
    assert 4 * MiB < value(after, "walbops_device_log_usage_bytes", device=device.name) < 5 * MiB
    lsids = device.lsids()
    assert value(after, "walbops_device_lsid", device=device.name, lsid="permanent") <= lsids["permanent"]
    assert value(after, "walbops_device_overflow", device=device.name) == 0


def test_a_running_device_moves_and_stops_its_endpoint(device_factory):
    device = device_factory()
    assert device.status()["metrics_listen"] == ""
    port = free_port()
    moved = ensure_metrics(device, f"127.0.0.1:{port}")
    assert moved["changed"] and moved["diff"]["after"]["metrics_listen"] == f"127.0.0.1:{port}"
    assert value(scrape(port), "walbops_build_info", host_type="device", id=device.name) == 1
    assert not ensure_metrics(device, f"127.0.0.1:{port}")["changed"]

    assert ensure_metrics(device, "")["changed"]
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    assert device.status()["metrics_listen"] == ""


def test_a_taken_port_is_refused_by_name(device_factory, tmp_path):
    device = device_factory()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        # At creation: no device comes up and nothing is left behind.
        ldev, ddev = make_files(tmp_path, 16 * MiB, 16 * MiB)
        name = device.name + "b"
        walbops("wdev", "format-ldev", str(ldev), str(ddev), "--name", name, check=True)
        created = walbops("wdev", "create", str(ldev), str(ddev), "--name", name, "--metrics-listen", address)
        assert created.returncode != 0 and f"metrics at {address}" in created.stderr, created.stderr
        assert walbops("wdev", "status", name).returncode != 0
        assert not os.path.exists(DevicePaths(name).run_dir)
        refused = walbops("ensure", "device", device.name, "--ldev", str(device.ldev), "--ddev", str(device.ddev),
                          "--metrics-listen", address)
    assert refused.returncode != 0 and f"metrics at {address}" in refused.stderr
    assert device.status()["metrics_listen"] == ""
    bad = walbops("ensure", "device", device.name, "--ldev", str(device.ldev), "--ddev", str(device.ddev),
                  "--metrics-listen", "nowhere")
    assert bad.returncode != 0 and "HOST:PORT" in bad.stderr
