"""Channels over real sockets on 127.0.0.1: handshake, refusals, requests, streams, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import pytest

from walbops.errors import (
    AuthenticationError,
    FrameTooLarge,
    InvalidMessage,
    PeerTimeout,
    ProtocolError,
    RemoteError,
    VersionMismatch,
)
from walbops.net import messages
from walbops.net.auth import client_proof
from walbops.net.frames import HEADER, MAX_PAYLOAD_SIZE, DataFrame, FrameDecoder, FrameType, JsonFrame, encode_json
from walbops.net.stream import StreamDigest
from walbops.net.transport import Channel, accept_channel, open_connection, serve

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
HOST = "127.0.0.1"


def run(coro):
    async def bounded():
        async with asyncio.timeout(30):  # a hung test fails instead of hanging the suite
            return await coro
    return asyncio.run(bounded())


class Archive:
    """A test handler: records every request that reaches it and serves a few commands."""

    def __init__(self) -> None:
        self.requests: list[tuple[str | None, str]] = []
        self.received: list[bytes] = []
        self.aborted: list[str] = []

    async def __call__(self, channel: Channel) -> None:
        while (request := await channel.recv_request()) is not None:
            self.requests.append((channel.peer_id, request["command"]))
            command, rid = request["command"], request["id"]
            if command == "echo":
                await channel.respond(rid, {"args": request["args"], "peer": [channel.peer_id, channel.peer_role]})
            elif command == "refuse":
                await channel.refuse(rid, "vol0: a backup is running", "syncing")
            elif command == "slow":
                async with channel.keepalive(request["args"]["keepalive"]):
                    await asyncio.sleep(request["args"]["seconds"])
                await channel.respond(rid, "done")
            elif command == "upload":
                await channel.accept(rid)
                await self.receive(channel)

    async def receive(self, channel: Channel) -> None:
        digest = StreamDigest()
        parts = []
        while True:
            frame = await channel.recv()
            if isinstance(frame, DataFrame):
                digest.update(frame.data)
                parts.append(frame.data)
                continue
            if frame.message["type"] == "abort":
                self.aborted.append(frame.message["reason"])
                return
            end = frame.message
            try:
                digest.check(end)
            except Exception as exc:
                await channel.send_json(messages.abort(str(exc)))
                return
            self.received.append(b"".join(parts))
            await channel.send_json(messages.ack())
            return


@contextlib.asynccontextmanager
async def archive_server(handler=None, key=KEY, **options):
    handler = Archive() if handler is None else handler
    server = await serve(HOST, 0, key, "a0", "archive", handler, **options)
    try:
        yield handler, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def connect(port, key=KEY, client_id="s0", role="storage", **options) -> Channel:
    return await open_connection(HOST, port, key, client_id, role, **options)


async def raw_exchange(port: int, payload: bytes, half_close: bool = True) -> list:
    """Send bytes as a misbehaving client would; return the frames the server sends until it closes."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        if half_close:
            writer.write_eof()
        data = b""
        while chunk := await reader.read(1 << 16):
            data += chunk
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    decoder = FrameDecoder()
    decoder.feed(data)
    frames = list(decoder)
    decoder.eof()
    return frames


async def assert_serves_a_good_client(port: int, handler: Archive) -> None:
    async with await connect(port, client_id="good") as channel:
        assert await channel.request("echo", {"n": 1}) == {"args": {"n": 1}, "peer": ["good", "storage"]}
    assert handler.requests[-1] == ("good", "echo")


def error_reasons(frames) -> list[str]:
    return [f.message["reason"] for f in frames if isinstance(f, JsonFrame) and f.message["type"] == "error"]


# The handshake.

def test_handshake_and_requests():
    async def scenario():
        async with archive_server() as (handler, port):
            channel = await connect(port)
            assert (channel.peer_id, channel.peer_role) == ("a0", "archive")
            assert await channel.request("echo", {"vol": "vol0"}) == {"args": {"vol": "vol0"},
                                                                      "peer": ["s0", "storage"]}
            with pytest.raises(RemoteError) as info:
                await channel.request("refuse")
            assert (info.value.error, info.value.reason) == ("vol0: a backup is running", "syncing")
            # A refusal ends the request, not the connection.
            assert (await channel.request("echo"))["args"] == {}
            await channel.close()
            await channel.close()
            assert channel.closed
            await asyncio.sleep(0.05)
            assert handler.requests == [("s0", "echo"), ("s0", "refuse"), ("s0", "echo")]
    run(scenario())


def test_client_with_wrong_key_is_refused_and_server_keeps_serving(caplog):
    async def scenario():
        async with archive_server() as (handler, port):
            # The server proves first, so a client with another key notices and gives up.
            with pytest.raises(AuthenticationError, match="server a0 .archive. cannot prove"):
                await connect(port, key=OTHER_KEY, client_id="intruder")
            # A client that ignores the challenge and sends a made-up proof is refused by the server.
            hello = messages.hello("intruder", "controller", os.urandom(32).hex())
            forged = messages.auth(client_proof(OTHER_KEY, b"\0" * 32, b"\0" * 32, "intruder").hex())
            frames = await raw_exchange(port, encode_json(hello) + encode_json(forged)
                                        + encode_json(messages.request(1, "echo", {})))
            assert [f.message["type"] for f in frames] == ["challenge", "error"]
            assert error_reasons(frames) == ["authentication failed"]
            assert handler.requests == []
            await assert_serves_a_good_client(port, handler)
            assert all(peer == "good" for peer, _ in handler.requests)
    with caplog.at_level(logging.WARNING, logger="walbops.net"):
        run(scenario())
    assert "handshake refused" in caplog.text


@pytest.mark.parametrize("payload, reason", [
    (encode_json(messages.request(1, "echo", {"vol": "vol0"})), "protocol error"),  # no key: a request first
    (HEADER.pack(2, FrameType.DATA) + b"x", "protocol error"),  # data before the handshake
    (b"GET / HTTP/1.1\r\nHost: a0\r\n\r\n", "frame too large"),  # garbage: the length field is huge
    (HEADER.pack(3, 0x7F) + b"\0\0", "protocol error"),  # an unknown frame type
    (encode_json({"type": "hello", "version": 2}), "protocol error"),  # a hello missing its members
    (encode_json({"type": "hello", "version": 3, "id": "s0"}), "version mismatch"),
    (encode_json({"type": "auth", "proof": "00" * 32}), "protocol error"),  # auth before hello
    # A hello that fits a normal frame but not the handshake limit.
    (encode_json({"type": "hello", "pad": "x" * 5000}), "frame too large"),
])
def test_clients_without_the_key_never_reach_the_handler(payload, reason):
    async def scenario():
        async with archive_server() as (handler, port):
            frames = await raw_exchange(port, payload)
            assert error_reasons(frames) == [reason]
            assert handler.requests == []
            await assert_serves_a_good_client(port, handler)
    run(scenario())


def test_server_with_wrong_key_is_detected_by_the_client():
    async def scenario():
        async with archive_server(key=OTHER_KEY) as (handler, port):
            with pytest.raises(AuthenticationError):
                await connect(port)
            assert handler.requests == []
    run(scenario())


def test_version_mismatch_reaches_the_client_as_an_error():
    async def scenario():
        async with archive_server() as (_, port):
            hello = messages.hello("s0", "storage", "c1" * 32, version=7)
            frames = await raw_exchange(port, encode_json(hello))
            assert frames[0].message["detail"] == ("client speaks protocol version 7; "
                                                   "this server speaks protocol version 2")
    run(scenario())


def test_handshake_deadline_on_the_server():
    async def scenario():
        async with archive_server(handshake_timeout=0.3) as (handler, port):
            # Connects, trickles a partial hello and never finishes: cut off at the deadline.
            hello = encode_json(messages.hello("s0", "storage", "c1" * 32))
            loop = asyncio.get_running_loop()
            started = loop.time()
            frames = await raw_exchange(port, hello[:10], half_close=False)
            assert error_reasons(frames) == ["timeout"]
            assert loop.time() - started < 5
            assert handler.requests == []
    run(scenario())


@contextlib.asynccontextmanager
async def silent_server():
    """A server that accepts connections and never answers; yields its port."""
    async def silent(reader, writer):
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def test_handshake_deadline_on_the_client():
    async def scenario():
        async with silent_server() as port:
            with pytest.raises(PeerTimeout, match="did not finish within 0.3 s"):
                await connect(port, handshake_timeout=0.3)
    run(scenario())


def test_a_caller_cancelled_during_the_handshake_leaves_no_socket_open():
    async def scenario():
        async with silent_server() as port:
            before = open_sockets()
            connecting = asyncio.create_task(connect(port))
            await asyncio.sleep(0.2)
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            await asyncio.sleep(0.1)  # the transports close their sockets (the server sees EOF)
            assert open_sockets() == before
    run(scenario())


def open_sockets() -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


def test_connection_refused_is_an_os_error():
    async def scenario():
        server = await asyncio.start_server(lambda r, w: None, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            await connect(port)
    run(scenario())


def test_accept_channel_directly():
    async def scenario():
        accepted: asyncio.Queue = asyncio.Queue()

        async def on_connect(reader, writer):
            try:
                channel = await accept_channel(reader, writer, KEY, "p0", "proxy")
            except ProtocolError as exc:
                await accepted.put(exc)
                return
            await accepted.put(channel)
            await channel.respond((await channel.recv_request())["id"], "hi")
            await channel.close()

        server = await asyncio.start_server(on_connect, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with await connect(port) as channel:
                assert await channel.request("hello") == "hi"
            server_side = await accepted.get()
            assert (server_side.peer_id, server_side.peer_role) == ("s0", "storage")
            with pytest.raises(AuthenticationError):
                await connect(port, key=OTHER_KEY)
            assert isinstance(await accepted.get(), AuthenticationError)
        finally:
            server.close()
            await server.wait_closed()
    run(scenario())


class StrictWriter:
    """A StreamWriter stand-in that fails as asyncio's does on a write after write_eof."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.eof = self.closed = False

    def write(self, data: bytes) -> None:
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        self.written.append(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        pass

    def get_extra_info(self, name: str, default=None):
        return default


def test_a_receiver_abort_after_the_channel_failed_writes_nothing():
    """A stream cut inside a frame is answered by the channel itself (fail: error, EOF, close); the
    receiver's abort afterwards must not write to that connection."""
    async def scenario():
        reader = asyncio.StreamReader()
        reader.feed_eof()
        writer = StrictWriter()
        channel = Channel(reader, writer, timeout=1)  # type: ignore[arg-type]
        channel._stream_ended = False  # inside a transfer's stream
        await channel.fail(ProtocolError("a frame broke off"))
        sent = len(writer.written)
        await channel.abort_receiving("the diff could not be received")
        assert len(writer.written) == sent and writer.closed
    run(scenario())


# After the handshake.

def test_an_error_after_the_handshake_is_not_called_a_refused_handshake():
    async def scenario():
        reader = asyncio.StreamReader()
        reader.feed_data(encode_json(messages.error("timeout", "127.0.0.1:1 sent nothing for 10 s")))
        channel = Channel(reader, StrictWriter(), timeout=1)  # type: ignore[arg-type]
        channel._authenticated("s0", "storage")
        with pytest.raises(PeerTimeout, match=r"^peer gave up on the connection: timeout \(127.0.0.1:1 sent "):
            await channel.recv()
    run(scenario())


@pytest.mark.parametrize("bad, error", [
    (HEADER.pack(3, 0x09) + b"xy", ProtocolError),  # unknown frame type
    (HEADER.pack(MAX_PAYLOAD_SIZE + 2, FrameType.DATA), FrameTooLarge),  # oversized: refused unread
    (encode_json({"type": "request", "id": "one", "command": "echo", "args": {}}), ProtocolError),
    (encode_json({"type": "hello", "version": 2}), ProtocolError),
    (HEADER.pack(9, FrameType.JSON) + b"not json", ProtocolError),
])
def test_bad_frames_after_the_handshake_close_only_that_connection(bad, error):
    async def scenario():
        async with archive_server() as (handler, port):
            channel = await connect(port)
            assert (await channel.request("echo"))["args"] == {}
            channel._writer.write(bad)  # a peer with a bug
            with pytest.raises(error):
                await channel.recv()
            assert channel.closed
            await assert_serves_a_good_client(port, handler)
    run(scenario())


def test_data_where_a_request_belongs_is_refused():
    async def scenario():
        async with archive_server() as (handler, port):
            channel = await connect(port)
            await channel.send_data(b"stray")
            with pytest.raises(ProtocolError, match="protocol error"):
                await channel.recv()
            await assert_serves_a_good_client(port, handler)
    run(scenario())


def test_response_to_another_request_is_refused():
    async def scenario():
        async def confused(channel: Channel) -> None:
            request = await channel.recv_request()
            await channel.respond(request["id"] + 1, "not yours")
            with contextlib.suppress(ProtocolError):
                await channel.recv_request()

        async with archive_server(confused) as (_, port):
            channel = await connect(port)
            with pytest.raises(InvalidMessage, match="response to request 2, expected 1"):
                await channel.request("echo")
            assert channel.closed
    run(scenario())


def test_stream_transfer_and_ack():
    data = os.urandom(1 << 20) + bytes(3 << 20) + b"walb" * 100_000  # incompressible, zeros, repetitive

    async def scenario():
        async with archive_server() as (handler, port):
            channel = await connect(port)
            assert await channel.request("upload", {"vol": "vol0"}) == {"accepted": True}
            digest = StreamDigest()
            for piece in (data[:12345], data[12345:]):
                digest.update(piece)
                await channel.send_data(piece)
            await channel.send_json(digest.end())
            assert await channel.recv_json("ack") == {"type": "ack"}
            assert handler.received == [data]
            # The connection carries the next conversation.
            assert (await channel.request("echo"))["args"] == {}
            await channel.close()
    run(scenario())


def test_sender_abort_and_receiver_abort():
    async def scenario():
        async with archive_server() as (handler, port):
            channel = await connect(port)
            await channel.request("upload")
            await channel.send_data(b"partial")
            await channel.send_json(messages.abort("device overflow"))
            assert (await channel.request("echo"))["args"] == {}
            assert handler.aborted == ["device overflow"] and handler.received == []

            await channel.request("upload")
            await channel.send_data(b"some data")
            await channel.send_json(messages.end(9, "00" * 4))  # wrong checksum
            with pytest.raises(RemoteError) as info:
                await channel.recv_json("ack")
            assert info.value.reason == "aborted" and "checksum" in info.value.error
            await channel.close()
    run(scenario())


def test_keepalive_holds_a_slow_answer_and_silence_times_out():
    async def scenario():
        async with archive_server() as (_, port):
            channel = await connect(port, timeout=0.4)
            # 1 s of work, a keepalive every 0.1 s: the 0.4 s read timeout never fires.
            assert await channel.request("slow", {"seconds": 1.0, "keepalive": 0.1}) == "done"
            with pytest.raises(PeerTimeout, match="sent nothing for 0.4 s"):
                await channel.request("slow", {"seconds": 1.0, "keepalive": 10})
            assert channel.closed
    run(scenario())


def test_idle_server_side_timeout():
    async def scenario():
        async with archive_server(timeout=0.3) as (_, port):
            channel = await connect(port)
            await asyncio.sleep(0.6)  # idle longer than the server's socket timeout
            with pytest.raises(PeerTimeout, match="timeout"):
                await channel.recv()
    run(scenario())


def test_handler_errors_do_not_stop_the_server(caplog):
    async def scenario():
        calls = []

        async def flaky(channel: Channel) -> None:
            calls.append(channel.peer_id)
            if len(calls) == 1:
                raise RuntimeError("handler bug")
            await Archive()(channel)

        async with archive_server(flaky) as (_, port):
            first = await connect(port)
            with pytest.raises(ProtocolError):
                await first.request("echo")
            second = await connect(port)
            assert (await second.request("echo"))["args"] == {}
            await second.close()
            await first.close()
    with caplog.at_level(logging.ERROR, logger="walbops.net"):
        run(scenario())
    assert "handler bug" in caplog.text


def test_version_mismatch_from_a_future_server():
    async def scenario():
        async def future(reader, writer):
            await reader.read(1 << 12)
            writer.write(encode_json(messages.challenge("a9", "archive", "5e" * 32, "00" * 32, version=3)))
            await writer.drain()
            await reader.read(1 << 12)
            writer.close()

        server = await asyncio.start_server(future, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(VersionMismatch, match="server speaks protocol version 3"):
                await connect(port)
        finally:
            server.close()
            await server.wait_closed()
    run(scenario())


def test_cancelled_handler_closes_its_connection_quietly(caplog):
    async def scenario():
        running: asyncio.Queue = asyncio.Queue()

        async def stuck(channel: Channel) -> None:
            await running.put(asyncio.current_task())
            await asyncio.sleep(3600)

        async with archive_server(stuck) as (_, port):
            channel = await connect(port)
            task = await running.get()
            task.cancel()  # what an agent's shutdown does to a handler that will not finish
            await asyncio.wait([task])
            assert not task.cancelled()  # ended normally: nothing for asyncio to log
            with pytest.raises(ProtocolError):
                await channel.recv()
    with caplog.at_level(logging.ERROR):
        run(scenario())
    assert "Exception in callback" not in caplog.text


@pytest.mark.parametrize("version", ["1", 1.5, True, None, [1], {"v": 1}, -1, 2 ** 64])
def test_a_hello_with_a_version_that_is_not_an_integer_is_refused(version):
    hello = {**messages.hello("s0", "storage", os.urandom(32).hex()), "version": version}

    async def scenario():
        async with archive_server() as (handler, port):
            frames = await raw_exchange(port, encode_json(hello))
            assert error_reasons(frames) in (["protocol error"], ["version mismatch"])
            assert handler.requests == []
            await assert_serves_a_good_client(port, handler)
    run(scenario())


def test_handshakes_beyond_the_per_source_cap_are_told_busy_and_counted_out_when_they_end(caplog):
    async def scenario():
        async with archive_server(max_handshakes=100, max_handshakes_per_source=3) as (handler, port):
            # Three silent connections hold the source's handshake slots.
            silent = [await asyncio.open_connection(HOST, port) for _ in range(3)]
            await asyncio.sleep(0.1)
            with pytest.raises(ProtocolError, match="busy") as info:
                await connect(port)
            assert type(info.value).__name__ == "ServerBusy"
            for _, writer in silent:
                writer.close()
            await asyncio.sleep(0.2)
            # Their slots are free again; authenticated connections never count.
            channels = [await connect(port, client_id=f"c{n}") for n in range(6)]
            await assert_serves_a_good_client(port, handler)
            for channel in channels:
                await channel.close()
    with caplog.at_level(logging.WARNING, logger="walbops.net"):
        run(scenario())
    assert "connections are handshaking (3 from this address)" in caplog.text


def test_the_total_handshake_cap_holds_for_every_source(caplog):
    async def scenario():
        async with archive_server(max_handshakes=2, max_handshakes_per_source=50) as (handler, port):
            silent = [await asyncio.open_connection(HOST, port) for _ in range(2)]
            await asyncio.sleep(0.1)
            with pytest.raises(ProtocolError, match="busy"):
                await connect(port)
            for _, writer in silent:
                writer.close()
            await asyncio.sleep(0.2)
            await assert_serves_a_good_client(port, handler)
    run(scenario())


def test_refused_handshakes_are_logged_at_most_ten_a_minute(caplog):
    async def scenario():
        async with archive_server() as (handler, port):
            for _ in range(25):
                await raw_exchange(port, encode_json(messages.request(1, "echo", {})))
            await asyncio.sleep(0.1)
    with caplog.at_level(logging.WARNING, logger="walbops.net"):
        run(scenario())
    assert caplog.text.count("handshake refused") == 10


def test_a_receiver_that_aborts_before_end_closes_and_after_end_stays_open():
    """docs/protocol.md §7.2: before ``end`` the sender may still be sending, so the receiver
    closes after its abort; after ``end`` the connection serves the next request."""
    outcomes = []

    async def receiver(channel: Channel) -> None:
        while not channel.closed and (request := await channel.recv_request()) is not None:
            await channel.accept(request["id"])
            if request["command"] == "early":
                await channel.recv()  # one data frame, then give up
                await channel.abort_receiving("disk full")
            else:
                while not isinstance(await channel.recv(), JsonFrame):
                    pass
                await channel.abort_receiving("checksum mismatch")
            outcomes.append((request["command"], channel.closed))

    async def scenario():
        async with archive_server(receiver) as (_, port):
            async with await connect(port) as channel:
                await channel.request("late")
                await channel.send_data(b"x" * 1000)
                await channel.send_json(messages.end(1000, "00000000"))
                with pytest.raises(RemoteError, match="checksum mismatch"):
                    await channel.recv_json("ack")
                await channel.request("early")
                with pytest.raises((RemoteError, ProtocolError, OSError)):
                    for _ in range(10000):  # the receiver's close stops a sender that keeps sending
                        await channel.send_data(os.urandom(1 << 16))
                    await channel.recv_json("ack")
    run(scenario())
    assert outcomes == [("late", False), ("early", True)]
