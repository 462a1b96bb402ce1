"""The archive agent in TLS mode, as a process on loopback: certificates decide roles, and a
relay that changes one bit on the wire breaks the transfer, which stores nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port
from relay import Relay
from test_archive_agent import SIZE_LB, image_with_data, wdiff_of_random_log

from walbops import pki
from walbops.agents.transfers import file_chunks, send_full_backup, send_wdiff
from walbops.errors import AuthenticationError, ProtocolError, RemoteError, WalbopsError
from walbops.gid import MetaDiff
from walbops.net.auth import load_key, write_key
from walbops.net.tls import Credentials, TlsFiles
from walbops.net.transport import open_connection

HOST = "127.0.0.1"


class BitFlipper:
    """Flips one bit of the client's stream at byte ``at`` on its way through a relay."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.flipped = False

    def __call__(self, data: bytes, offset: int) -> bytes:
        if not offset <= self.at < offset + len(data):
            return data
        changed = bytearray(data)
        changed[self.at - offset] ^= 0x10
        self.flipped = True
        return bytes(changed)


def start_agent(args: list[str], port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "walbops.cli.main", "agent", "archive", "--listen", HOST,
                                "--port", str(port), "--id", "a0", "--log-file", str(log), *args])
    deadline = time.monotonic() + 20
    while "listening" not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(log.read_text() if log.exists() else "no log")
        time.sleep(0.05)
    return process


@pytest.fixture(params=["tls", "key"])
def archive(request, tmp_path):
    """An archive agent in TLS mode (and, to compare, in key mode), with one volume Archived."""
    mode = request.param
    ca = tmp_path / "pki"
    pki.init_ca(str(ca))
    for host, role in (("a0", "archive"), ("s0", "storage"), ("p0", "proxy"), ("ctl", "controller")):
        pki.issue(str(ca), host, role, names=[HOST])
    write_key(tmp_path / "cluster.key")

    key = load_key(tmp_path / "cluster.key")

    def secret(host: str) -> bytes | Credentials:
        if mode == "key":
            return key
        return Credentials(tls=TlsFiles(str(ca / f"{host}.crt"), str(ca / f"{host}.key"), str(ca / "ca.crt")))

    flags = (["--tls-cert", str(ca / "a0.crt"), "--tls-key", str(ca / "a0.key"), "--tls-ca", str(ca / "ca.crt")]
             if mode == "tls" else ["--cluster-key-file", str(tmp_path / "cluster.key")])
    port = free_port()
    process = start_agent([*flags, "--base-dir", str(tmp_path / "a0")], port, tmp_path / "a0.log")

    async def request(host: str, role: str, command: str, **args):
        channel = await open_connection(HOST, port, secret(host), host, role)
        async with channel:
            return await channel.request(command, args)

    asyncio.run(request("ctl", "controller", "init-vol", vol="vol0"))
    image_with_data(tmp_path / "volume.img")
    fd = os.open(tmp_path / "volume.img", os.O_RDONLY)
    uuid = os.urandom(16)

    async def backup() -> None:
        async with await open_connection(HOST, port, secret("s0"), "s0", "storage") as channel:
            async def accepted() -> bytes:
                return uuid

            async def streamed() -> int:
                return 0

            await send_full_backup(channel, "vol0", fd, SIZE_LB, 512, 1, accepted, streamed)

    try:
        asyncio.run(backup())
    finally:
        os.close(fd)
    yield mode, port, secret, request, uuid, tmp_path
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.parametrize("archive", ["tls"], indirect=True)  # in key mode a client's role is what it says
def test_a_proxy_certificate_cannot_clear_an_archive_volume(archive):
    mode, port, secret, request, uuid, tmp_path = archive
    with pytest.raises(RemoteError) as info:
        asyncio.run(request("p0", "proxy", "clear-vol", vol="vol0"))
    assert info.value.reason == "forbidden" and "needs role controller" in str(info.value)
    # Saying it is the controller does not help: the certificate says proxy.
    with pytest.raises(AuthenticationError, match="certificate is for role proxy"):
        asyncio.run(request("p0", "controller", "clear-vol", vol="vol0"))
    assert asyncio.run(request("ctl", "controller", "get", target="state", vol="vol0")) == "Archived"
    auth = asyncio.run(request("ctl", "controller", "status"))["auth"]
    assert auth["mode"] == "tls" and auth["certificate"]["role"] == "archive"
    assert 364 < auth["certificate"]["days_left"] <= 365
    assert ", TLS)" in (tmp_path / "a0.log").read_text()


def test_one_flipped_bit_on_the_wire_breaks_the_transfer_and_nothing_is_stored(archive):
    """A man in the middle changes one bit of a diff's data frame after the handshake: TLS detects
    it (bad record MAC), key mode's end-to-end checksum does; either way the archive rolls the
    transfer back and stores nothing, and the same diff goes through untouched afterwards."""
    mode, port, secret, request, uuid, tmp_path = archive
    path, _ = wdiff_of_random_log(tmp_path, 1, uuid)
    size = path.stat().st_size
    flipper = BitFlipper(at=4096 + size // 2)  # past the handshake, inside the diff's bytes
    relay = Relay(port, tamper=flipper)

    async def send(through: int) -> None:
        async with await open_connection(HOST, through, secret("p0"), "p0", "proxy") as channel:
            await send_wdiff(channel, "vol0", uuid, SIZE_LB, MetaDiff(0, 1, timestamp=1700000000),
                             file_chunks(str(path)))

    try:
        with pytest.raises((WalbopsError, OSError)) as info:
            asyncio.run(send(relay.port))
        assert flipper.flipped
        if mode == "key":
            assert isinstance(info.value, RemoteError) and "checksum" in str(info.value)
        else:
            assert isinstance(info.value, (ProtocolError, OSError))
    finally:
        relay.close()
    deadline = time.monotonic() + 20
    while asyncio.run(request("ctl", "controller", "get", target="state", vol="vol0")) != "Archived":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [r["gid"] for r in asyncio.run(request("ctl", "controller", "get", target="restorable", vol="vol0"))] == [0]
    assert not [name for name in os.listdir(tmp_path / "a0" / "vol0") if name.endswith((".wdiff", ".tmp"))]
    asyncio.run(send(port))
    assert [r["gid"] for r in asyncio.run(request("ctl", "controller", "get", target="restorable",
                                                  vol="vol0"))] == [0, 1]
