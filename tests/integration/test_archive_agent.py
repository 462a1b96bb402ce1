"""The archive agent as a process on loopback: full backup, diffs with WalB's refusals, restore."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port

from walbops.agents import config as agent_config
from walbops.agents.archive import ArchiveAgent
from walbops.agents.transfers import file_chunks, send_full_backup, send_wdiff
from walbops.diff.engine import convert_to_sorted, log_ios
from walbops.diff.gen import GenConfig, generate_wlog
from walbops.diff.logs import WlogReader
from walbops.errors import AuthenticationError, ProtocolError, RemoteError
from walbops.gid import MetaDiff
from walbops.loop import devices_under
from walbops.net import messages
from walbops.net.auth import load_key, write_key
from walbops.net.frames import encode_json
from walbops.net.transport import open_connection
from walbops.store.dirstore import DirStore

SIZE_LB = 8192  # 4 MiB volume
MiB = 1 << 20


def start_archive(tmp_path: Path, port: int) -> subprocess.Popen:
    key = tmp_path / "cluster.key"
    process = subprocess.Popen(
        [sys.executable, "-m", "walbops.cli.main", "agent", "archive", "--listen", "127.0.0.1", "--port", str(port),
         "--id", "a0", "--base-dir", str(tmp_path / "a0"), "--cluster-key-file", str(key),
         "--log-file", str(tmp_path / "a0.log")])
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError((tmp_path / "a0.log").read_text())
            time.sleep(0.05)
    return process


@pytest.fixture
def archive(tmp_path):
    key = tmp_path / "cluster.key"
    write_key(key)
    port = free_port()
    process = start_archive(tmp_path, port)
    yield port, load_key(key), tmp_path
    process.terminate()
    process.wait(timeout=30)
    for device in devices_under(str(tmp_path)):  # restored images stay attached when the agent stops
        subprocess.run(["losetup", "--detach", device], capture_output=True)


async def ctl(port: int, key: bytes, command: str, **args):
    channel = await open_connection("127.0.0.1", port, key, "test", "controller")
    async with channel:
        return await channel.request(command, args)


async def send_image(port: int, key: bytes, path: Path, uuid: bytes = bytes(16), timestamp: int = 1) -> int:
    """A full backup of the image at ``path`` as a storage sends it; returns its gid."""
    fd = os.open(path, os.O_RDONLY)
    channel = await open_connection("127.0.0.1", port, key, "s0", "storage")
    try:
        async with channel:
            async def accepted() -> bytes:
                return uuid

            async def streamed() -> int:
                return 0

            return await send_full_backup(channel, "vol0", fd, SIZE_LB, 512, timestamp, accepted, streamed)
    finally:
        os.close(fd)


def image_with_data(path: Path) -> bytes:
    rng = random.Random(3)
    data = bytearray(SIZE_LB * 512)
    for _ in range(40):
        offset = rng.randrange(0, SIZE_LB - 64) * 512
        data[offset:offset + 16384] = rng.randbytes(16384)
    path.write_bytes(bytes(data))
    return bytes(data)


def wdiff_of_random_log(tmp_path: Path, index: int, uuid: bytes) -> tuple[Path, bytes]:
    """A sorted wdiff, and the wlog it came from, both for the test's volume."""
    raw = io.BytesIO()
    generate_wlog(raw, GenConfig(device_lb=SIZE_LB, log_pb=3000, seed=100 + index))
    wlog = tmp_path / f"{index}.wlog"
    wlog.write_bytes(raw.getvalue())
    path = tmp_path / f"{index}.wdiff"
    with open(wlog, "rb") as stream, open(path, "wb") as out:
        convert_to_sorted(log_ios(WlogReader(stream)), out, uuid)
    return path, raw.getvalue()


def test_full_backup_diffs_and_restore_over_the_network(archive):
    port, key, tmp_path = archive
    volume = image_with_data(tmp_path / "volume.img")
    uuid = os.urandom(16)
    asyncio.run(ctl(port, key, "init-vol", vol="vol0"))

    assert asyncio.run(send_image(port, key, tmp_path / "volume.img", uuid, int(time.time()))) == 0
    assert asyncio.run(ctl(port, key, "get", target="state", vol="vol0")) == "Archived"
    again = subprocess.run([sys.executable, "-m", "walbops.cli.main", "ctl", "-a", "127.0.0.1", "-p", str(port),
                            "--key", str(tmp_path / "cluster.key"), "get", "restorable", "vol0"],
                           capture_output=True, text=True)
    # A list of records prints as a table.
    header, row = again.stdout.splitlines()
    assert again.returncode == 0 and sorted(header.split()) == ["EXPLICIT", "GID", "TEXT", "TIMESTAMP"], again.stdout
    assert row.split()[header.split().index("GID")] == "0", again.stdout

    expected = {0: hashlib.sha1(volume).hexdigest()}
    image = bytearray(volume)
    for gid in range(3):
        path, raw = wdiff_of_random_log(tmp_path, gid, uuid)
        for io_ in log_ios(WlogReader(io.BytesIO(raw))):
            start, end = io_.address * 512, io_.end * 512
            image[start:end] = io_.data() if io_.kind == 0 else bytes(end - start)

        async def send(path=path, gid=gid) -> None:
            channel = await open_connection("127.0.0.1", port, key, "p0", "proxy")
            async with channel:
                await send_wdiff(channel, "vol0", uuid, SIZE_LB, MetaDiff(gid, gid + 1, timestamp=1700000000 + gid),
                                 file_chunks(str(path)))

        asyncio.run(send())
        expected[gid + 1] = hashlib.sha1(image).hexdigest()

    async def refused(diff: MetaDiff, uuid_: bytes = uuid, size: int = SIZE_LB) -> str | None:
        channel = await open_connection("127.0.0.1", port, key, "p0", "proxy")
        async with channel:
            try:
                await send_wdiff(channel, "vol0", uuid_, size, diff, [b""])
            except RemoteError as exc:
                return exc.reason
        return None

    assert asyncio.run(refused(MetaDiff(0, 1))) == "too-old-diff"
    assert asyncio.run(refused(MetaDiff(7, 8))) == "too-new-diff"
    assert asyncio.run(refused(MetaDiff(3, 4), uuid_=bytes(16))) == "different-uuid"
    assert asyncio.run(refused(MetaDiff(3, 4), size=SIZE_LB * 2)) == "smaller-lv-size"

    restorable = asyncio.run(ctl(port, key, "get", target="restorable", vol="vol0"))
    assert [entry["gid"] for entry in restorable] == [0, 1, 2, 3]
    for gid in (0, 2, 3):
        assert asyncio.run(ctl(port, key, "restore", vol="vol0", gid=gid))["accepted"] is True
        deadline = time.monotonic() + 30
        while gid not in asyncio.run(ctl(port, key, "get", target="restored", vol="vol0")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        path = tmp_path / "a0" / "images" / "vol0" / "restored" / f"wr_vol0_{gid}.img"
        assert hashlib.sha1(path.read_bytes()).hexdigest() == expected[gid], f"snapshot {gid}"
        asyncio.run(ctl(port, key, "del-restored", vol="vol0", gid=gid))


def backing_files() -> dict[str, str]:
    listing = subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                             capture_output=True, text=True, check=True).stdout
    return {name: back for name, _, back in (line.strip().partition(" ") for line in listing.splitlines())}


def test_a_restored_snapshot_is_a_loop_device_and_get_restored_path_changes_nothing(archive):
    port, key, tmp_path = archive
    image_with_data(tmp_path / "volume.img")
    asyncio.run(ctl(port, key, "init-vol", vol="vol0"))
    asyncio.run(send_image(port, key, tmp_path / "volume.img"))
    asyncio.run(ctl(port, key, "restore", vol="vol0", gid=0))
    deadline = time.monotonic() + 30
    while 0 not in asyncio.run(ctl(port, key, "get", target="restored", vol="vol0")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    image = str(tmp_path / "a0" / "images" / "vol0" / "restored" / "wr_vol0_0.img")
    device = asyncio.run(ctl(port, key, "get", target="restored-path", vol="vol0", args=0))
    assert backing_files().get(device) == image

    async def refusals() -> list[tuple[str | None, str]]:
        # One connection: each refusal ends its request, not the connection.
        channel = await open_connection("127.0.0.1", port, key, "test", "controller")
        found = []
        async with channel:
            for args in ("abc", [1.5], True, ["1", "2"], None, 7):
                try:
                    await channel.request("get", {"target": "restored-path", "vol": "vol0", "args": args})
                except RemoteError as exc:
                    found.append((exc.reason, str(exc)))
            assert await channel.request("get", {"target": "host-type"}) == "archive"
        return found

    found = asyncio.run(refusals())
    assert [reason for reason, _ in found] == ["bad-args"] * 5 + [None]
    assert "not restored" in found[-1][1]
    assert "Traceback" not in (tmp_path / "a0.log").read_text()

    subprocess.run(["losetup", "--detach", device], check=True)
    assert asyncio.run(ctl(port, key, "get", target="restored-path", vol="vol0", args=0)) == image
    assert image not in backing_files().values(), "get restored-path attached a loop device"
    stop_agent(port, key)
    restarted = start_archive(tmp_path, port)
    try:
        deadline = time.monotonic() + 20  # the agent attaches after it starts listening
        while (device := asyncio.run(ctl(port, key, "get", target="restored-path", vol="vol0", args=0))) == image:
            assert time.monotonic() < deadline, "the restart did not attach the restored snapshot again"
            time.sleep(0.1)
        assert backing_files().get(device) == image
        asyncio.run(ctl(port, key, "del-restored", vol="vol0", gid=0))
        assert image not in backing_files().values()
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)


def stop_agent(port: int, key: bytes) -> None:
    asyncio.run(ctl(port, key, "shutdown"))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b'{"state": "Archived", "base": "<|nonsense"}',
                                    b'{"state": "NoSuchState"}', b'{"state": "Archived", "size_lb": "big"}',
                                    b"\xff\xfe"])
def test_a_corrupt_meta_json_breaks_its_volume_only(archive, damage):
    port, key, tmp_path = archive
    for vol in ("vol0", "vol1"):
        asyncio.run(ctl(port, key, "init-vol", vol=vol))
    meta = tmp_path / "a0" / "vol1" / "meta.json"
    good = meta.read_bytes()
    stop_agent(port, key)
    meta.write_bytes(damage)
    restarted = start_archive(tmp_path, port)
    try:
        status = asyncio.run(ctl(port, key, "status"))
        assert status["volumes"]["vol0"]["state"] == "SyncReady"
        broken = status["volumes"]["vol1"]
        assert broken["state"] == "Broken" and broken["error"].startswith(str(meta) + ": ")
        with pytest.raises(RemoteError) as info:
            asyncio.run(ctl(port, key, "get", target="state", vol="vol1"))
        assert info.value.reason == "broken-volume" and str(meta) in str(info.value)
        assert asyncio.run(ctl(port, key, "get", target="state", vol="vol0")) == "SyncReady"
        assert "volume vol1 is broken, the others are served" in (tmp_path / "a0.log").read_text()
        # Repaired, it is served again without a restart.
        meta.write_bytes(good)
        assert asyncio.run(ctl(port, key, "get", target="state", vol="vol1")) == "SyncReady"
        assert "Traceback" not in (tmp_path / "a0.log").read_text()
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)


@pytest.mark.parametrize("cut", ["before the first bulk", "after the last bulk"])
def test_a_failed_full_backup_leaves_no_partial_base(archive, cut):
    port, key, tmp_path = archive
    image_with_data(tmp_path / "volume.img")
    asyncio.run(ctl(port, key, "init-vol", vol="vol0"))
    base = tmp_path / "a0" / "images" / "vol0" / "base.img"

    async def cut_short() -> None:
        fd = os.open(tmp_path / "volume.img", os.O_RDONLY)
        channel = await open_connection("127.0.0.1", port, key, "s0", "storage")
        try:
            async with channel:
                async def accepted() -> bytes:
                    assert base.exists()  # the archive made the base before it accepted
                    if cut == "before the first bulk":
                        raise ConnectionResetError("cut")
                    return bytes(16)

                async def streamed() -> int:
                    raise ConnectionResetError("cut")

                await send_full_backup(channel, "vol0", fd, SIZE_LB, 512, 1, accepted, streamed)
        finally:
            os.close(fd)

    with pytest.raises(ConnectionResetError):
        asyncio.run(cut_short())
    deadline = time.monotonic() + 20
    while base.exists() or asyncio.run(ctl(port, key, "get", target="state", vol="vol0")) != "SyncReady":
        assert time.monotonic() < deadline, "the partial base was left behind"
        time.sleep(0.05)
    assert "removed the partial base of a failed full backup" in (tmp_path / "a0.log").read_text()
    assert asyncio.run(send_image(port, key, tmp_path / "volume.img")) == 0
    assert base.exists() and asyncio.run(ctl(port, key, "get", target="state", vol="vol0")) == "Archived"


def test_sizes_a_peer_announces_are_bounded(archive):
    port, key, tmp_path = archive
    asyncio.run(ctl(port, key, "init-vol", vol="vol0"))

    async def announce(size_lb: int) -> RemoteError:
        channel = await open_connection("127.0.0.1", port, key, "s0", "storage")
        async with channel:
            with pytest.raises(RemoteError) as info:
                await channel.request(messages.DIRTY_FULL_SYNC, {"vol": "vol0", "size_lb": size_lb, "bulk_lb": 512,
                                                                 "timestamp": 1})
            return info.value

    refusal = asyncio.run(announce(2 ** 63))
    assert refusal.reason == "bad-args" and "max_volume_size" in str(refusal)
    assert not (tmp_path / "a0" / "images" / "vol0").exists()
    assert asyncio.run(ctl(port, key, "get", target="state", vol="vol0")) == "SyncReady"

    # A diff stream longer than any diff of the volume can be (2 x 4 MiB + 64 MiB) is cut off.
    image_with_data(tmp_path / "volume.img")
    asyncio.run(send_image(port, key, tmp_path / "volume.img"))

    async def endless_diff() -> None:
        channel = await open_connection("127.0.0.1", port, key, "p0", "proxy")
        async with channel:
            await send_wdiff(channel, "vol0", bytes(16), SIZE_LB, MetaDiff(0, 1), (bytes(MiB) for _ in range(100)))

    with pytest.raises((RemoteError, ProtocolError)) as info:
        asyncio.run(endless_diff())
    assert "exceeds" in str(info.value) or "exceeds" in (tmp_path / "a0.log").read_text()
    assert asyncio.run(ctl(port, key, "get", target="state", vol="vol0")) == "Archived"
    assert [entry["gid"] for entry in asyncio.run(ctl(port, key, "get", target="restorable", vol="vol0"))] == [0]
    assert not list((tmp_path / "a0" / "vol0").glob("*.wdiff*"))


def test_each_command_takes_only_the_roles_that_may_call_it(archive):
    port, key, tmp_path = archive
    asyncio.run(ctl(port, key, "init-vol", vol="vol0"))

    async def as_role(role: str, command: str, **args):
        channel = await open_connection("127.0.0.1", port, key, f"{role}-probe", role)
        async with channel:
            return await channel.request(command, args)

    for role in ("proxy", "storage", "archive"):
        with pytest.raises(RemoteError) as info:
            asyncio.run(as_role(role, "clear-vol", vol="vol0"))
        assert info.value.reason == "forbidden"
        assert f"clear-vol on the archive agent needs role controller; this connection is {role}" in str(info.value)
    with pytest.raises(RemoteError, match="needs role storage") as info:
        asyncio.run(as_role("proxy", messages.DIRTY_FULL_SYNC, vol="vol0", size_lb=8, bulk_lb=8, timestamp=1))
    with pytest.raises(RemoteError, match="needs role archive or proxy"):
        asyncio.run(as_role("storage", messages.WDIFF_TRANSFER, vol="vol0"))
    assert asyncio.run(as_role("proxy", "version"))["version"]
    assert asyncio.run(ctl(port, key, "get", target="state", vol="vol0")) == "SyncReady"
    assert "refused clear-vol from proxy proxy-probe" in (tmp_path / "a0.log").read_text()


def test_a_second_agent_on_the_same_base_dir_refuses_to_start(archive):
    port, key, tmp_path = archive
    second = subprocess.run(
        [sys.executable, "-m", "walbops.cli.main", "agent", "archive", "--listen", "127.0.0.1", "--port",
         str(free_port()), "--id", "a1", "--base-dir", str(tmp_path / "a0"), "--cluster-key-file",
         str(tmp_path / "cluster.key")], capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert f"{tmp_path / 'a0'} is in use by archive a0 (pid" in second.stderr, second.stderr
    assert asyncio.run(ctl(port, key, "get", target="host-type")) == "archive"


def test_full_backup_to_an_archived_volume_fails_clearly(archive):
    """WalB's m1: a second full backup while the archive is Archived is refused."""
    port, key, tmp_path = archive
    image_with_data(tmp_path / "volume.img")
    asyncio.run(ctl(port, key, "init-vol", vol="vol0"))
    asyncio.run(send_image(port, key, tmp_path / "volume.img"))
    with pytest.raises(RemoteError, match="SyncReady"):
        asyncio.run(send_image(port, key, tmp_path / "volume.img"))
    assert asyncio.run(ctl(port, key, "get", target="state", vol="vol0")) == "Archived"


def test_a_client_without_the_key_is_refused_and_the_agent_serves_on(archive, tmp_path):
    port, key, _ = archive
    with pytest.raises(AuthenticationError):
        asyncio.run(ctl(port, os.urandom(32), "status"))
    assert asyncio.run(ctl(port, key, "get", target="host-type")) == "archive"


def test_a_peers_words_cannot_forge_log_lines_or_reach_a_terminal_raw(archive):
    port, key, tmp_path = archive
    forged = "2026-01-01 00:00:00,000 walbops.archive INFO volume vol0 deleted"

    async def stranger() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_json(messages.error("protocol error", f"bye\n{forged}\n\x1b[2J")))
        await writer.drain()
        await reader.read()
        writer.close()

    asyncio.run(stranger())
    deadline = time.monotonic() + 10
    log = tmp_path / "a0.log"
    while "peer refused the handshake" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    refused = [line for line in lines if "peer refused the handshake" in line]
    assert len(refused) == 1 and "bye\\n2026-01-01" in refused[0] and "\\x1b[2J" in refused[0]
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert "\x1b" not in log.read_text()

    # ctl prints an agent's refusal, which quotes what it was sent, without the escape codes.
    result = subprocess.run([sys.executable, "-m", "walbops.cli.main", "ctl", "-a", "127.0.0.1", "-p", str(port),
                             "--key", str(tmp_path / "cluster.key"), "get", "state", "vol\x1b]0;owned\x07"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "vol\\x1b]0;owned\\x07" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


class ThickLikeStore(DirStore):
    """A dir store whose new bases hold old data, as a thick LV's extents do."""

    def create_base(self, vol: str, size_lb: int, zero: bool = False) -> str:
        path = super().create_base(vol, size_lb, zero)
        with open(path, "r+b") as stream:
            stream.write(b"\xab" * (size_lb * 512))
        return path

    @property
    def new_base_reads_zeros(self) -> bool:
        return False


def test_full_backup_zeroes_skipped_ranges_where_a_new_base_holds_old_data(tmp_path):
    """The zero ranges a full backup does not send must read as zeros on a thick LV too."""
    write_key(tmp_path / "cluster.key")
    port = free_port()
    config = agent_config.load("archive", overrides={
        "listen": "127.0.0.1", "port": port, "id": "a0", "base_dir": str(tmp_path / "a0"),
        "cluster_key_file": str(tmp_path / "cluster.key")})
    agent = ArchiveAgent(config)
    agent.store = ThickLikeStore(str(tmp_path / "images"))
    volume = image_with_data(tmp_path / "volume.img")  # mostly zeros: most of it goes as zero ranges
    key = load_key(tmp_path / "cluster.key")

    async def scenario() -> None:
        serving = asyncio.create_task(agent.serve())
        try:
            for _ in range(200):
                try:
                    await ctl(port, key, "init-vol", vol="vol0")
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            await send_image(port, key, tmp_path / "volume.img")
        finally:
            agent.handle_exit()
            await serving

    asyncio.run(scenario())
    assert hashlib.sha1(Path(agent.store.base_path("vol0")).read_bytes()).hexdigest() == \
        hashlib.sha1(volume).hexdigest()
