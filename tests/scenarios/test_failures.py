"""WalB's failure scenarios (stest/scenario0.py n4, e1, e2, e3, e12, m1) on one machine.

Every scenario ends as WalB's do: the writer stops, the sha1 of the device is taken, a
snapshot is taken, and once it is restorable on the archive the restored image must have
the same sha1. Agents are stopped with SIGTERM (graceful) or SIGKILL (crash) and started
again on the same port and base directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from cluster import (
    MiB,
    RandomWriter,
    fill_random,
    fill_random_at,
    sha1_of_device,
    wait_until,
    write_random,
    write_zeros,
)
from helpers import end_of_valid_logs, write_torn_pack

from walbops.agents.transfers import send_wdiff, send_wlog
from walbops.controller import Controller, Layout
from walbops.device.registry import pid_alive
from walbops.errors import AuthenticationError, RemoteError, WalbopsError
from walbops.gid import MetaDiff, MetaSnap
from walbops.net.auth import client_proof, load_key, write_key
from walbops.net.frames import FrameDecoder, encode_json
from walbops.net.transport import open_connection

VOL = "vol0"


def backed_up(cluster, name: str = "wdev0") -> str:
    return cluster.backed_up(VOL, name)


def test_n4_restart_every_agent_under_writes(cluster):
    """n4: under continuous writes, stop and start each agent in turn (SIGTERM, then SIGKILL),
    and a subset of them together, as WalB's n4b does with random subsets of {s0, p0, a0}."""
    device = backed_up(cluster)
    steps = [
        (("storage",), signal.SIGTERM), (("proxy",), signal.SIGTERM), (("archive",), signal.SIGTERM),
        (("proxy", "archive"), signal.SIGTERM), (("storage", "proxy", "archive"), signal.SIGTERM),
        (("storage",), signal.SIGKILL), (("proxy",), signal.SIGKILL), (("archive",), signal.SIGKILL),
    ]
    with RandomWriter(device, seed=4) as writer:
        for roles, sig in steps:
            writer.wait_for_writes(20)
            for role in roles:
                cluster.stop(role, sig)
            writer.wait_for_writes(8)
            for role in reversed(roles):
                cluster.start(role)
        writer.wait_for_writes(20)
        assert writer.stop() > 0
    assert cluster.ctl.get_state("s0", VOL) == "Target"
    cluster.ctl.wait_for_state("p0", VOL, {"Started"}, timeout=30)  # not WlogRecv
    cluster.ctl.wait_for_state("a0", VOL, {"Archived"}, timeout=30)  # not WdiffRecv
    cluster.snapshot_and_verify(VOL)
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 0


def test_e1_proxy_killed_then_back(cluster):
    """e1: the only proxy is killed; logs wait in the ring (no overflow) until it is back and kicked."""
    device = backed_up(cluster)
    cluster.stop("proxy", signal.SIGKILL)
    rng = random.Random(11)
    write_random(device, rng, count=200)  # about 7 MiB, well below the 64 MiB ring
    usage = cluster.ctl.get("s0", "log-usage", VOL)
    assert 0 < usage["usage_pb"] < usage["capacity_pb"]
    time.sleep(1)  # the storage tries and fails to ship meanwhile
    assert cluster.ctl.get_state("s0", VOL) == "Target"
    cluster.start("proxy")
    cluster.ctl.run("s0", "kick", vol=VOL)
    cluster.snapshot_and_verify(VOL)
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 0
    assert cluster.ctl.get_state("s0", VOL) == "Target"


def test_e1_spare_proxy_takes_over(cluster):
    """e1 as WalB runs it: p0 killed, more than the whole ring written; p1 drains it; no overflow."""
    cluster.ldev_size = 16 * MiB
    cluster.add_spare_proxy()
    device = backed_up(cluster)
    cluster.stop("proxy", signal.SIGKILL)
    capacity = cluster.ctl.get("s0", "log-usage", VOL)["capacity_pb"]
    rng = random.Random(21)
    written = 0
    while written < 3 * MiB * 8:  # 24 MiB through a ring of about 16 MiB
        wait_until(lambda: cluster.ctl.get("s0", "log-usage", VOL)["usage_pb"] < capacity // 2, 60,
                   "the logs to drain through p1")
        for _ in range(4):
            fill_random_at(device, rng, rng.randrange(0, 31) * MiB)
        written += 4 * MiB
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 0
    assert f"to 127.0.0.1:{cluster.ports['proxy1']}" in cluster.log("storage")
    cluster.start("proxy")
    cluster.ctl.run("s0", "kick", vol=VOL)
    cluster.snapshot_and_verify(VOL)
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 0


def test_e2_archive_down_not_restorable_until_back(cluster):
    """e2: with the archive down a snapshot is not restorable; once it is back and p0 kicked, it is."""
    device = backed_up(cluster)
    cluster.stop("archive", signal.SIGTERM)
    write_random(device, random.Random(12), count=64)
    expected = sha1_of_device(device)
    gid = int(cluster.ctl.run("s0", "snapshot", vol=VOL)["gid"])
    # The logs reach the proxy, which keeps them as diffs for a0 ...
    wait_until(lambda: any(cluster.ctl.get("p0", "proxy-diff", VOL)["a0"]), 30, "diffs queued for a0 on p0")
    # ... but the snapshot does not become restorable while the archive is down.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert not cluster.is_restorable(VOL, gid)
        time.sleep(0.3)
    with pytest.raises(OSError):
        cluster.ctl.wait_for_restorable("a0", VOL, gid, timeout=1)
    cluster.start("archive")
    cluster.ctl.run("p0", "kick", vol=VOL)
    cluster.ctl.wait_for_restorable("a0", VOL, gid, timeout=60)
    assert cluster.restored_sha1(VOL, gid) == expected


def test_e3_storage_killed_during_writes(cluster):
    """e3: the storage is killed while the device is written (three times); it comes back and ships
    everything, including logs a proxy acknowledged just before the kill."""
    device = backed_up(cluster)
    with RandomWriter(device, seed=13) as writer:
        for _ in range(3):
            writer.wait_for_writes(40)
            cluster.stop("storage", signal.SIGKILL)
            writer.wait_for_writes(40)
            cluster.start("storage")
        writer.wait_for_writes(40)
        writer.stop()
    assert cluster.ctl.get_state("s0", VOL) == "Target"
    cluster.snapshot_and_verify(VOL)
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 0


def test_device_daemon_killed_during_writes_while_logs_ship(cluster):
    """The walb device's own daemon is SIGKILLed under writes, twice, once inside a log write
    (a torn last pack: its header and all but its last IO on the ldev): `wdev create` redoes the
    logs, the storage agent, which keeps running, ships on from before the torn pack, and the
    snapshot after restores to the device's sha1."""
    device = backed_up(cluster)
    ldev, ddev = str(cluster.root / "ldev.img"), str(cluster.root / "ddev.img")
    rng = random.Random(31)
    for torn in (True, False):
        writer = RandomWriter(device, seed=rng.randrange(1 << 30)).start()
        writer.wait_for_writes(60)
        pid = int(json.loads(cluster.cli("wdev", "status", cluster.device_name, "--json"))["pid"])
        os.kill(pid, signal.SIGKILL)
        writer.__exit__()  # a write in flight fails (the device is gone): not an error here
        wait_until(lambda pid=pid: not pid_alive(pid), 30, "the device daemon to die")
        if torn:
            ios = [(rng.randrange(32 * MiB // 4096) * 8, rng.randbytes(4096 * rng.randint(1, 4))) for _ in range(3)]
            write_torn_pack(ldev, end_of_valid_logs(ldev), ios)
        assert cluster.cli("wdev", "create", ldev, ddev, "--name", cluster.device_name) == device
    cluster.ctl.run("s0", "kick", vol=VOL)
    cluster.snapshot_and_verify(VOL)
    assert cluster.ctl.get_state("s0", VOL) == "Target"
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 0


def test_full_backup_under_writes_is_made_consistent_by_the_logs(cluster):
    """WalB's dirty full sync: the full backup reads the ddev while the device is written (blocks
    the scan passed and blocks ahead of it, many not yet applied to the ddev when read); the
    logs from its reset-wal on make the archive right, so the snapshot after restores to the
    device's sha1."""
    device = cluster.make_device("wdev0")
    cluster.start_all()
    cluster.setup_volume(VOL)
    rng = random.Random(18)
    fill_random(device, rng, cluster.device_size)
    with RandomWriter(device, seed=19, pause=0.01) as writer:
        writer.wait_for_writes(20)
        # Small bulks make the scan take seconds, so that writes run all along it.
        cluster.ctl.run("s0", "full-bkp", vol=VOL, bulk_size=4096)
        during = writer.writes
        cluster.ctl.wait_for_state("s0", VOL, {"Target"}, timeout=120)
        assert writer.writes - during > 40, "writes ran during the full backup"
        writer.stop()
    cluster.snapshot_and_verify(VOL)


def test_e12_archive_killed_during_full_backup(cluster):
    """e12: the full backup is cut: both sides roll back to SyncReady and a retry works."""
    device = cluster.make_device("wdev0")
    cluster.start_all()
    cluster.setup_volume(VOL)
    rng = random.Random(14)
    fill_random(device, rng, cluster.device_size)  # no zero bulk: every bulk travels
    # One-LB bulks make the backup slow (a frame pair per 512 bytes), long enough to cut it.
    cluster.ctl.run("s0", "full-bkp", vol=VOL, bulk_size=512)
    assert cluster.ctl.get_state("a0", VOL) == "FullSync"
    wait_until(lambda: cluster.ctl.get("s0", "progress", VOL) > MiB // 512, 60, "1 MiB of the full backup")
    cluster.stop("archive", signal.SIGKILL)
    cluster.ctl.wait_for_state("s0", VOL, {"SyncReady"}, timeout=30)
    cluster.start("archive")
    assert cluster.ctl.get_state("a0", VOL) == "SyncReady"
    # Zero data the first attempt already copied: the retry must not keep the old bytes.
    write_zeros(device, 0, MiB // 2)
    cluster.full_backup(VOL)
    write_random(device, rng, count=32)
    cluster.snapshot_and_verify(VOL)


def test_e12_storage_stopped_during_full_backup(cluster):
    """e12 from the storage's side: it is stopped (SIGTERM, then SIGKILL) during the full backup; the
    archive rolls back to SyncReady by itself, the restarted storage is SyncReady, a retry works."""
    cluster.agent_args["storage"] = ["--shutdown-timeout", "1"]
    device = cluster.make_device("wdev0")
    cluster.start_all()
    cluster.setup_volume(VOL)
    rng = random.Random(17)
    fill_random(device, rng, cluster.device_size)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        cluster.ctl.run("s0", "full-bkp", vol=VOL, bulk_size=512)
        wait_until(lambda: cluster.ctl.get("a0", "progress", VOL) > MiB // 512, 60, "1 MiB of the full backup")
        cluster.stop("storage", sig)
        cluster.ctl.wait_for_state("a0", VOL, {"SyncReady"}, timeout=30)
        cluster.start("storage")
        assert cluster.ctl.get_state("s0", VOL) == "SyncReady"
        write_zeros(device, 0, MiB // 2)
        fill_random_at(device, rng, 4 * MiB)
    cluster.full_backup(VOL)
    write_random(device, rng, count=32)
    cluster.snapshot_and_verify(VOL)


def test_e12_network_cut_during_full_backup(cluster):
    """e12 as WalB runs it: the network between s0 and a0 goes silent during the full backup; both
    agents time out and roll back to SyncReady by themselves; once it is back a retry works."""
    for role in ("storage", "archive"):
        cluster.agent_args[role] = ["--socket-timeout", "3"]
    relay = cluster.add_relay("storage", "archive")
    device = cluster.make_device("wdev0")
    cluster.start_all()
    cluster.setup_volume(VOL)
    rng = random.Random(16)
    fill_random(device, rng, cluster.device_size)
    cluster.ctl.run("s0", "full-bkp", vol=VOL, bulk_size=512)
    wait_until(lambda: cluster.ctl.get("a0", "progress", VOL) > MiB // 512, 60, "1 MiB of the full backup")
    relay.cut(silent=True)
    cluster.ctl.wait_for_state("s0", VOL, {"SyncReady"}, timeout=60)
    cluster.ctl.wait_for_state("a0", VOL, {"SyncReady"}, timeout=60)
    assert cluster.alive("storage") and cluster.alive("archive")
    relay.restore()
    write_zeros(device, 0, MiB // 2)
    cluster.full_backup(VOL)
    write_random(device, rng, count=32)
    cluster.snapshot_and_verify(VOL)


def test_e9_network_down_between_storage_and_proxy(cluster):
    """e9: s0 cannot reach p0: nothing becomes restorable; once the network is back, it does."""
    cluster.agent_args["storage"] = ["--socket-timeout", "3"]
    cluster.agent_args["proxy"] = ["--socket-timeout", "3"]
    relay = cluster.add_relay("storage", "proxy")
    device = backed_up(cluster)
    relay.cut(silent=True)
    write_random(device, random.Random(19), count=64)
    expected = sha1_of_device(device)
    gid = int(cluster.ctl.run("s0", "snapshot", vol=VOL)["gid"])
    with pytest.raises(WalbopsError, match="not restorable"):
        cluster.ctl.wait_for_restorable("a0", VOL, gid, timeout=4)
    assert cluster.ctl.get_state("s0", VOL) == "Target"
    relay.restore()
    cluster.ctl.run("s0", "kick", vol=VOL)
    cluster.ctl.wait_for_restorable("a0", VOL, gid, timeout=60)
    assert cluster.restored_sha1(VOL, gid) == expected
    assert cluster.ctl.get("s0", "is-overflow", VOL) == 0


def test_e11_network_down_between_proxy_and_archive(cluster):
    """e11: p0 cannot reach a0: the diffs wait on p0, nothing becomes restorable; network back and
    p0 kicked, the snapshot becomes restorable."""
    cluster.agent_args["proxy"] = ["--socket-timeout", "3"]
    cluster.agent_args["archive"] = ["--socket-timeout", "3"]
    relay = cluster.add_relay("proxy", "archive")
    device = backed_up(cluster)
    relay.cut(silent=True)
    write_random(device, random.Random(20), count=64)
    expected = sha1_of_device(device)
    gid = int(cluster.ctl.run("s0", "snapshot", vol=VOL)["gid"])
    wait_until(lambda: any(cluster.ctl.get("p0", "proxy-diff", VOL)["a0"]), 30, "diffs queued for a0 on p0")
    with pytest.raises(WalbopsError, match="not restorable"):
        cluster.ctl.wait_for_restorable("a0", VOL, gid, timeout=4)
    relay.restore()
    cluster.ctl.run("p0", "kick", vol=VOL)
    cluster.ctl.wait_for_restorable("a0", VOL, gid, timeout=60)
    assert cluster.restored_sha1(VOL, gid) == expected
    cluster.ctl.wait_for_state("a0", VOL, {"Archived"}, timeout=30)


def test_m1_full_backup_to_an_archived_volume_fails(cluster):
    """m1: a second full backup to an Archived volume is refused; nothing changes on either side."""
    device = backed_up(cluster)
    base = cluster.ctl.get("a0", "base", VOL)
    archive_uuid = cluster.ctl.get("a0", "archive-uuid", VOL)
    cluster.ctl.run("s0", "stop", vol=VOL)
    cluster.ctl.run("s0", "reset-vol", vol=VOL)
    assert cluster.ctl.get_state("s0", VOL) == "SyncReady"
    with pytest.raises(RemoteError) as refused:
        cluster.ctl.run("s0", "full-bkp", vol=VOL)
    assert refused.value.reason == "not-sync-ready"
    assert "SyncReady" in str(refused.value)
    assert cluster.ctl.get_state("s0", VOL) == "SyncReady"
    assert cluster.ctl.get_state("a0", VOL) in ("Archived", "WdiffRecv")
    assert cluster.ctl.get("a0", "base", VOL) == base
    assert cluster.ctl.get("a0", "archive-uuid", VOL) == archive_uuid
    # The archive still restores what it had.
    gid = cluster.ctl.get_restorable("a0", VOL)[-1]
    cluster.restored_sha1(VOL, gid)
    # After the archive volume is reset, the full backup goes through.
    cluster.ctl.run("a0", "stop", vol=VOL)
    cluster.ctl.run("a0", "reset-vol", vol=VOL)
    write_random(device, random.Random(15), count=32)
    cluster.full_backup(VOL)
    cluster.snapshot_and_verify(VOL)


def _raw_frames(sock: socket.socket) -> list[dict]:
    """Read JSON frames until the peer closes; a decoder that stops at the first bad frame."""
    decoder, frames = FrameDecoder(), []
    while True:
        data = sock.recv(65536)
        if not data:
            return frames
        decoder.feed(data)
        frames += [frame.message for frame in decoder]


def _client_with_key(port: int, key: bytes) -> list[dict]:
    """A handshake that does not check the server's proof and answers with ``key``'s: what the
    server answers to a client that does not hold the cluster key."""
    nonce = os.urandom(32)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(encode_json({"type": "hello", "version": 2, "id": "intruder", "role": "controller",
                                  "nonce": nonce.hex()}))
        decoder = FrameDecoder()
        while (frame := decoder.next_frame()) is None:
            decoder.feed(sock.recv(65536))
        challenge = frame.message
        assert challenge["type"] == "challenge", challenge
        proof = client_proof(key, bytes.fromhex(challenge["nonce"]), nonce, "intruder")
        sock.sendall(encode_json({"type": "auth", "proof": proof.hex()}))
        # Sent at once, as if the welcome were sure: must never run.
        sock.sendall(encode_json({"type": "request", "id": 1, "command": "shutdown", "args": {}}))
        return list(decoder) + _raw_frames(sock)


def test_wrong_key_and_bad_frames_are_refused(cluster, tmp_path):
    """Every agent refuses a client with another key, and survives garbage on its port, while the
    volume is written and backed up; the backup is intact afterwards."""
    if cluster.tls:
        pytest.skip("key mode's handshake in raw frames; TLS mode's refusals: tests/integration/test_tls_agents.py")
    device = backed_up(cluster)
    other_key = tmp_path / "other.key"
    write_key(other_key)
    intruder = Controller(Layout(cluster.ctl.layout.servers, str(other_key)), timeout=5)
    wrong = load_key(other_key)
    garbage = [
        b"\x00\x00\x00\x00\x00",  # length 0
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # length reads as 542 393 671
        struct.pack("<IB", 1 << 24 | 2, 1),  # over the handshake limit
        struct.pack("<IB", 3, 9) + b"ab",  # unknown frame type
        struct.pack("<IB", 3, 2) + b"ab",  # data before the handshake
        encode_json({"type": "request", "id": 1, "command": "shutdown", "args": {}}),  # no handshake
        # An older protocol's hello (version 1: proofs keyed with the cluster key itself).
        encode_json({"type": "hello", "version": 1, "id": "x", "role": "controller", "nonce": "00" * 32}),
        encode_json({"type": "hello", "version": 2, "id": "x", "role": "root", "nonce": "00" * 32}),
        encode_json({"type": "keepalive"}),
        struct.pack("<IB", 20, 1) + b"{not json at all!!!",
        struct.pack("<IB", 4001, 1) + b"[" * 4000,  # nested deeper than the JSON parser goes
        b"\xff" * 4096,
    ]
    idle = []
    with RandomWriter(device, seed=25) as writer:
        try:
            for name, role in (("s0", "storage"), ("p0", "proxy"), ("a0", "archive")):
                port = cluster.ports[role]
                # Connections that say nothing, or stop inside a frame, stay open meanwhile.
                for _ in range(12):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
                    sock.sendall(b"\x10\x00")
                    idle.append(sock)
                with pytest.raises(AuthenticationError):
                    intruder.run(name, "shutdown")  # our side refuses the server's proof
                answer = _client_with_key(port, wrong)
                assert [(frame["type"], frame.get("reason")) for frame in answer] == \
                    [("error", "authentication failed")], answer  # and the request was never answered
                for data in garbage:
                    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
                        sock.sendall(data)
                        sock.shutdown(socket.SHUT_WR)
                        answer = _raw_frames(sock)  # the agent answers with an error (or nothing), closes
                        assert all(frame["type"] == "error" for frame in answer), (data, answer)
                # Garbage after an authenticated handshake: oversized, unknown type, bad JSON, truncated.
                for data in (struct.pack("<IB", (16 << 20) + 2, 2), struct.pack("<IB", 3, 7) + b"xy",
                             struct.pack("<IB", 6, 1) + b"[1,2]", struct.pack("<IB", 1000, 2) + b"short",
                             encode_json({"type": "request", "id": 1, "command": "get", "args": []}),
                             encode_json({"type": "welcome"})):
                    asyncio.run(_send_raw_after_handshake(cluster, role, data))
                assert cluster.alive(role), cluster.log(role)
                assert cluster.ctl.get(name, "host-type") == role
            writer.wait_for_writes(20)
        finally:
            for sock in idle:
                sock.close()
        writer.stop()
    assert cluster.ctl.get_state("s0", VOL) == "Target"
    cluster.snapshot_and_verify(VOL)


async def _send_raw_after_handshake(cluster, role: str, data: bytes) -> None:
    channel = await open_connection("127.0.0.1", cluster.ports[role], cluster.ctl.key, "rogue", "controller",
                                    timeout=15)
    try:
        channel._writer.write(data)
        channel._writer.write_eof()
        try:
            while True:
                await channel.recv()
        except (WalbopsError, OSError):
            pass  # the agent says why and closes
    finally:
        await channel.close()


def test_bad_transfers_are_refused_and_change_nothing(cluster):
    """Authenticated but wrong transfers: garbage wlogs and wdiffs, oversized and abandoned streams,
    a full backup to an Archived volume, unknown commands. Each is refused or aborted, the volume
    stays as it was, and the backup goes on."""
    device = backed_up(cluster)
    write_random(device, random.Random(22), count=16)
    cluster.snapshot_and_verify(VOL)
    wait_until(lambda: not any(cluster.ctl.get("p0", "proxy-diff", VOL)["a0"]), 30, "p0 to send everything")
    latest = MetaSnap.parse(cluster.ctl.get("a0", "latest-snap", VOL))
    diffs = cluster.ctl.get("a0", "diff", VOL)
    s_uuid = cluster.ctl.get("s0", "uuid", VOL)
    a_uuid = cluster.ctl.get("a0", "uuid", VOL)
    size_lb = cluster.ctl.get("a0", "vol-size", VOL)
    fake = MetaDiff(latest.gid_e, latest.gid_e + 1, timestamp=int(time.time()))
    garbage = random.Random(23).randbytes(256 * 1024)

    async def connect(server: str, role: str):
        """A connection to ``server`` that says it is a ``role`` (each transfer needs its sender's)."""
        return await open_connection("127.0.0.1", cluster.ports[server], cluster.secret(role), "rogue", role,
                                     timeout=10)

    async def attacks() -> list[str]:
        outcomes = []
        # A wlog that is not one (the stream itself is intact: the checksum matches).
        async with await connect("proxy", "storage") as channel:
            with pytest.raises(RemoteError) as refused:
                await send_wlog(channel, VOL, bytes.fromhex(s_uuid), 512, 0, size_lb, fake, 1 << 20, [garbage])
            outcomes.append(str(refused.value))
        # More than the announced size.
        async with await connect("proxy", "storage") as channel:
            with pytest.raises((RemoteError, WalbopsError, OSError)) as refused:
                await send_wlog(channel, VOL, bytes.fromhex(s_uuid), 512, 0, size_lb, fake, 1, [garbage] * 8)
            outcomes.append(str(refused.value))
        # A stream abandoned half way.
        async with await connect("proxy", "storage") as channel:
            await channel.request("wlog-transfer", {"vol": VOL, "uuid": s_uuid, "pbs": 512, "salt": 0,
                                                    "size_lb": size_lb, "diff": str(fake), "max_log_pb": 4096})
            await channel.send_data(garbage[:4096])
        # A wdiff that applies to the archive's latest snapshot but is not a wdiff.
        async with await connect("archive", "proxy") as channel:
            with pytest.raises(RemoteError) as refused:
                await send_wdiff(channel, VOL, bytes.fromhex(a_uuid), size_lb, fake, [garbage])
            outcomes.append(str(refused.value))
        # A wdiff whose checksum does not match what was sent.
        async with await connect("archive", "proxy") as channel:
            await channel.request("wdiff-transfer", {"vol": VOL, "uuid": a_uuid, "size_lb": size_lb,
                                                     "diff": str(fake)})
            await channel.send_data(garbage)
            await channel.send_json({"type": "end", "size": len(garbage), "checksum": "00000000"})
            with pytest.raises((RemoteError, WalbopsError)) as refused:
                await channel.recv_json("ack")
            outcomes.append(str(refused.value))
        # A wdiff from another volume's lineage, and one already applied.
        async with await connect("archive", "proxy") as channel:
            with pytest.raises(RemoteError) as refused:
                await send_wdiff(channel, VOL, bytes(16), size_lb, fake, [garbage])
            assert refused.value.reason == "different-uuid"
            with pytest.raises(RemoteError) as refused:
                await send_wdiff(channel, VOL, bytes.fromhex(a_uuid), size_lb, MetaDiff(0, 1), [garbage])
            assert refused.value.reason == "too-old-diff"
            # The same connection still serves requests after refusals.
            with pytest.raises(RemoteError) as refused:
                await channel.request("no-such-command", {})
            assert refused.value.reason == "unknown-command"
            # A transfer from a client of the wrong role.
            with pytest.raises(RemoteError) as refused:
                await channel.request("dirty-full-sync", {"vol": VOL, "size_lb": size_lb, "bulk_lb": 8,
                                                          "timestamp": 0})
            assert refused.value.reason == "forbidden"
        async with await connect("archive", "storage") as channel:
            with pytest.raises(RemoteError) as refused:
                await send_wdiff(channel, VOL, bytes.fromhex(a_uuid), size_lb, fake, [garbage])
            assert refused.value.reason == "forbidden"
            with pytest.raises(RemoteError) as refused:
                await channel.request("dirty-full-sync", {"vol": VOL, "size_lb": size_lb, "bulk_lb": 8,
                                                          "timestamp": 0})
            assert refused.value.reason == "not-sync-ready"
        async with await connect("archive", "controller") as channel:
            assert await channel.request("get", {"target": "state", "vol": VOL}) == "Archived"
        return outcomes

    outcomes = asyncio.run(attacks())
    assert all(outcomes), outcomes
    cluster.ctl.wait_for_state("p0", VOL, {"Started"}, timeout=30)
    cluster.ctl.wait_for_state("a0", VOL, {"Archived"}, timeout=30)
    assert cluster.ctl.get("a0", "diff", VOL) == diffs
    assert cluster.ctl.get("a0", "latest-snap", VOL) == str(latest)
    assert not any(cluster.ctl.get("p0", "proxy-diff", VOL)["a0"])
    write_random(device, random.Random(24), count=32)
    cluster.snapshot_and_verify(VOL)


def test_deleting_a_device_leaves_a_reused_loop_device_alone(cluster):
    """A device being deleted releases its loop device before its daemon exits; whoever attaches that
    loop device meanwhile (another device, a restored image) must keep it."""
    device = cluster.make_device("wdev0")
    loop = os.path.realpath(device)
    other = cluster.root / "other.img"
    other.write_bytes(bytes(MiB))
    backing = f"/sys/block/{os.path.basename(loop)}/loop/backing_file"
    deleter = subprocess.Popen([sys.executable, "-m", "walbops.cli.main", "wdev", "delete", "wdev0"],
                               stdout=subprocess.DEVNULL)
    attached = False
    try:
        while deleter.poll() is None and not attached:
            if not os.path.exists(backing):
                attached = subprocess.run(["losetup", loop, str(other)], capture_output=True).returncode == 0
        assert deleter.wait(timeout=60) == 0
        cluster.device_name = ""  # deleted
        if not attached:
            pytest.skip("the device was deleted before its loop device could be taken")
        try:
            with open(backing) as stream:
                now = stream.read().strip()
        except FileNotFoundError:
            now = "nothing"
        assert now == str(other), f"wdev delete detached {loop} (now backed by {now}), no longer its own"
    finally:
        if attached:
            subprocess.run(["losetup", "--detach", loop], capture_output=True)
