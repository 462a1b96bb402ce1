"""Prometheus metrics (docs/operations.md): every agent scraped during a full backup and log
transfers; every documented metric found with a plausible value."""

from __future__ import annotations

import random
import socket
import time
import urllib.error
import urllib.request

import pytest
from cluster import MiB, wait_until, write_random
from helpers import documented_metrics, free_port, scrape, value

VOL = "vol0"
ROLES = ("storage", "proxy", "archive")


def test_every_agent_serves_its_documented_metrics(cluster):
    ports = {role: free_port() for role in ROLES}
    for role, port in ports.items():
        cluster.agent_args[role] = ["--metrics-listen", f"127.0.0.1:{port}"]
    cluster.agent_args["storage"] += ["--ts-delta-interval", "0.5"]
    device = cluster.make_device("wdev0")
    cluster.start_all()
    cluster.setup_volume(VOL)
    rng = random.Random(3)
    write_random(device, rng)
    cluster.full_backup(VOL)
    before = scrape(ports["storage"])
    # 4 MiB more, in 1 MiB writes: the logs shipped since are at least that.
    with open(device, "r+b", buffering=0) as stream:
        for index in range(4):
            stream.seek(index * MiB)
            stream.write(rng.randbytes(MiB))
        stream.flush()
    cluster.snapshot_and_verify(VOL)
    scraped = {role: scrape(port) for role, port in ports.items()}

    # Every documented metric is served by the agents the table names.
    documented = documented_metrics()
    assert len(documented) >= 28, documented
    for name, agents in documented.items():
        for agent in agents & set(ROLES):
            assert name in scraped[agent], f"the {agent} agent does not serve {name}"

    storage, proxy, archive = scraped["storage"], scraped["proxy"], scraped["archive"]
    for role, samples in scraped.items():
        assert value(samples, "walbops_build_info", host_type=role) == 1
    # The full backup and the logs, counted on both ends of each link.
    # Frames carry the device lz4-compressed: its zeros cost next to nothing, its random writes
    # (about 2 MiB) their size.
    full = value(storage, "walbops_transfer_bytes_total", kind="dirty-full-sync", direction="sent")
    assert MiB < full < 32 * MiB
    # Both ends count the same frames, but for the request, which the receiver read before the transfer began.
    received = value(archive, "walbops_transfer_bytes_total", kind="dirty-full-sync", direction="received")
    assert 0 <= full - received < 1024
    shipped = (value(storage, "walbops_transfer_bytes_total", kind="wlog-transfer", direction="sent") -
               dict((tuple(sorted(labels.items())), v) for labels, v in
                    before.get("walbops_transfer_bytes_total", [])).get(
                   (("direction", "sent"), ("kind", "wlog-transfer")), 0))
    assert shipped >= 4 * MiB
    assert value(proxy, "walbops_transfer_bytes_total", kind="wlog-transfer", direction="received") >= 4 * MiB
    assert value(proxy, "walbops_transfer_bytes_total", kind="wdiff-transfer", direction="sent") > 0
    assert value(storage, "walbops_transfer_duration_seconds_count", kind="wlog-transfer", direction="sent") >= 1
    assert value(storage, "walbops_volume_state", vol=VOL, state="Target") == 1
    assert value(archive, "walbops_volume_state", vol=VOL, state="Archived") == 1
    assert 0 < value(storage, "walbops_storage_log_capacity_bytes", vol=VOL) <= cluster.ldev_size
    assert value(storage, "walbops_storage_overflow", vol=VOL) == 0
    assert value(archive, "walbops_archive_diffs", vol=VOL) >= 1
    assert value(archive, "walbops_archive_rpo_seconds", vol=VOL) < 60
    assert value(archive, "walbops_archive_latest_gid", vol=VOL) > 0

    # WalB's monitoring targets, for every volume at once.
    ctl = cluster.ctl
    (usage,) = ctl.get("s0", "log-usage")
    assert usage["name"] == VOL and 0 < usage["capacity_pb"] * usage["pbs"] <= cluster.ldev_size
    (latest,) = ctl.get("s0", "latest-snap")
    assert latest["name"] == VOL and latest["kind"] == "storage" and latest["gid"] > 0
    (archived,) = ctl.get("a0", "latest-snap")
    assert archived["kind"] == "archive" and archived["gid"] == value(archive, "walbops_archive_latest_gid", vol=VOL)
    (proxied,) = ctl.get("p0", "latest-snap")
    assert proxied["archives"][0]["archive"] == "a0"
    assert ctl.get("a0", "ts-delta") == []  # replicated nowhere
    # The storage's ts-delta: what the archive last said of its latest snapshot (gather-latest-snap).
    archived_gid = archived["gid"]
    wait_until(lambda: [entry["dest_gid"] for entry in ctl.get("s0", "ts-delta")] == [archived_gid], 30,
               "the storage gathers the archive's latest snapshot")
    (delta,) = ctl.get("s0", "ts-delta", VOL)
    assert delta["name"] == VOL and delta["dest"] == "a0" and (delta["kind"], delta["dest_kind"]) == ("storage",
                                                                                                     "archive")
    assert delta["gid"] >= delta["dest_gid"] and delta["ts_delta"] == delta["ts"] - delta["dest_ts"] >= 0
    assert value(scrape(ports["storage"]), "walbops_storage_archive_lag_seconds", vol=VOL) == delta["ts_delta"]
    assert [entry["name"] for entry in ctl.get("a0", "base-all")] == [VOL]
    stat = ctl.get("s0", "handler-stat")
    assert stat["PROTOCOL_COUNT"]["get"] >= 2 and stat["GET_COUNT"]["log-usage"] == 1
    assert stat["PROTOCOL_LATENCY"]["get"] >= 0
    # A read resets them, as in WalB: the next one counts only that read.
    assert ctl.get("s0", "handler-stat")["GET_COUNT"] == {"handler-stat": 1}

    # Every write acknowledged: nothing at risk, however long ago the last one was.
    wait_until(lambda: value(scrape(ports["storage"]), "walbops_storage_unshipped_bytes", vol=VOL) == 0, 60,
               "every log acknowledged")
    assert value(scrape(ports["storage"]), "walbops_storage_rpo_seconds", vol=VOL) == 0

    # The proxy down: the storage's RPO rises and its logs wait; back up: both fall to 0.
    cluster.stop("proxy")
    with open(device, "r+b", buffering=0) as stream:
        stream.write(rng.randbytes(MiB))
    time.sleep(1.5)
    first = scrape(ports["storage"])
    time.sleep(1.5)
    second = scrape(ports["storage"])
    assert 0 < value(first, "walbops_storage_rpo_seconds", vol=VOL) < value(second, "walbops_storage_rpo_seconds",
                                                                            vol=VOL)
    assert value(second, "walbops_storage_unshipped_bytes", vol=VOL) >= MiB
    assert value(second, "walbops_storage_log_usage_bytes", vol=VOL) >= MiB
    cluster.start("proxy")
    cluster.ctl.run("s0", "kick", vol=VOL)
    wait_until(lambda: value(scrape(ports["storage"]), "walbops_storage_rpo_seconds", vol=VOL) == 0, 60,
               "the logs shipped after the proxy came back")
    assert value(scrape(ports["storage"]), "walbops_storage_unshipped_bytes", vol=VOL) == 0


def test_the_metrics_endpoint_answers_only_metrics(cluster):
    port = free_port()
    cluster.agent_args["archive"] = ["--metrics-listen", f"127.0.0.1:{port}"]
    cluster.start("archive")
    for path in ("/", "/metrics/x"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        refused.value.close()
        assert refused.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST", data=b"x"),
                               timeout=10)
    refused.value.close()
    assert refused.value.code == 405
    # Junk instead of a request head gets nothing, and the endpoint serves on.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\0" * 10000)
        assert sock.recv(4096) == b""
    # A failed handshake on the agent's own port is counted, by reason.
    with socket.create_connection(("127.0.0.1", cluster.ports["archive"]), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        sock.recv(4096)
    wait_until(lambda: value(scrape(port), "walbops_handshake_failures_total", reason="frame too large") == 1, 10,
               "the refused handshake counted")
