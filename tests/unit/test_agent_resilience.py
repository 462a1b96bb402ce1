"""A bug in one round of log shipping or forwarding is logged and retried, never the end of it.

The round itself is replaced (an error branch: mocks are fine here); the loop around it is
the agents' real one.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from walbops.agents import config as agent_config
from walbops.agents.storage import StorageAgent
from walbops.agents.storage_volume import StorageVolume
from walbops.net.auth import write_key


def storage_with_a_target_volume(tmp_path) -> tuple[StorageAgent, StorageVolume]:
    """A storage agent (not started) and a volume of it in Target, whose proxy never answers."""
    write_key(tmp_path / "key")
    config = agent_config.load("storage", overrides={
        "base_dir": str(tmp_path), "cluster_key_file": str(tmp_path / "key"), "archive": "127.0.0.1:1",
        "proxies": ["127.0.0.1:2"], "retry_delay": 0.0, "port": 1})
    volume = StorageVolume(str(tmp_path), "vol0")
    volume.init_vol("dev0")
    volume.machine.force("Target")
    return StorageAgent(config), volume


def test_storage_shipper_survives_an_unexpected_error(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    agent, volume = storage_with_a_target_volume(tmp_path)
    rounds = []

    async def ship_once(shipped_volume: StorageVolume) -> bool:
        rounds.append(shipped_volume.vol)
        if len(rounds) == 1:
            raise TypeError("a bug in this round")
        agent.should_exit = True
        return True

    agent._ship_once = ship_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        asyncio.run(asyncio.wait_for(agent._ship(volume), 10))
    assert rounds == ["vol0", "vol0"]
    assert "unexpected error" in caplog.text and "a bug in this round" in caplog.text


def test_storage_shipper_survives_the_device_vanishing_while_it_waits_for_logs(tmp_path, caplog) -> None:
    """The fresh-clone run of a61bac6 lost its shipper this way: the device daemon was killed while
    the shipper waited for new logs, and the wait's error ended the shipper for good."""
    from walbops.errors import OperationError

    agent, volume = storage_with_a_target_volume(tmp_path)
    rounds = []

    async def ship_once(shipped_volume: StorageVolume) -> bool:
        rounds.append("ship")
        if len(rounds) > 1:
            agent.should_exit = True
        return False  # nothing to send: the shipper waits for logs

    async def wait_for_logs(waiting_volume: StorageVolume) -> None:
        raise OperationError("walb device 'dev0' is not running")

    agent._ship_once = ship_once  # type: ignore[method-assign]
    agent._wait_for_logs = wait_for_logs  # type: ignore[method-assign]
    agent.wakeups["vol0"] = asyncio.Event()
    with caplog.at_level(logging.WARNING):
        asyncio.run(asyncio.wait_for(agent._ship(volume), 10))
    assert rounds == ["ship", "ship"]
    assert "log shipping failed, retrying" in caplog.text and "is not running" in caplog.text


def test_a_second_signal_cancels_what_a_graceful_shutdown_waits_for(tmp_path) -> None:
    """The first signal waits up to shutdown_timeout for running work; a second one cuts that short."""
    import time

    from walbops.agents.archive import ArchiveAgent

    write_key(tmp_path / "key")
    config = agent_config.load("archive", overrides={
        "base_dir": str(tmp_path), "cluster_key_file": str(tmp_path / "key"), "port": 1, "shutdown_timeout": 60.0})
    agent = ArchiveAgent(config)
    cancelled = []

    async def scenario() -> float:
        async def slow_work() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        agent.spawn(slow_work(), "slow work")
        agent.handle_exit()  # the first signal: graceful
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, agent.handle_exit)  # the second, while shutdown waits
        started = time.monotonic()
        await agent.shutdown()
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert cancelled == [True] and waited < 10


def archive_agent_on_a_free_port(tmp_path):
    """An archive agent (not started) listening on a free loopback port."""
    import socket

    from walbops.agents.archive import ArchiveAgent

    write_key(tmp_path / "key")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = agent_config.load("archive", overrides={
        "base_dir": str(tmp_path), "cluster_key_file": str(tmp_path / "key"), "port": port, "listen": "127.0.0.1"})
    return ArchiveAgent(config)


async def refusal_then_next_answer(agent, command: str):
    """Start ``agent``, send ``command`` (which must be refused), then ``get host-type`` on the same
    connection; the refusal and that answer."""
    from walbops.errors import RemoteError
    from walbops.net.transport import open_connection

    await agent.startup()
    try:
        channel = await open_connection("127.0.0.1", agent.port, agent.key, "c0", "controller")
        async with channel:
            with pytest.raises(RemoteError) as info:
                await channel.request(command, {})
            return info.value, await channel.request("get", {"target": "host-type"})
    finally:
        agent.should_exit = True
        await agent.shutdown()


def test_a_command_that_fails_unexpectedly_is_refused_and_the_connection_serves_on(tmp_path, caplog) -> None:
    """A bug in one command (replaced here: an error branch) answers ``internal-error``, logs the
    traceback, and the same connection is served on."""
    from walbops.agents._server import Command

    agent = archive_agent_on_a_free_port(tmp_path)

    async def broken(request):
        raise KeyError("a bug")

    agent.commands["broken"] = Command(broken)
    with caplog.at_level(logging.ERROR):
        refusal, host_type = asyncio.run(asyncio.wait_for(refusal_then_next_answer(agent, "broken"), 30))
    assert refusal.reason == "internal-error" and "its log has the traceback" in refusal.error
    assert host_type == "archive"
    assert "broken: internal error" in caplog.text and "KeyError: 'a bug'" in caplog.text


def test_a_command_whose_own_peer_breaks_is_refused_and_the_connection_serves_on(tmp_path) -> None:
    """A command that fails because a connection it opened broke (here a peer that accepts and
    hangs up at once) is refused with ``peer-failed``; the caller's connection is not the one
    that broke, so it stays open and serves the next request."""
    from walbops.agents._server import Command
    from walbops.net.transport import open_connection

    agent = archive_agent_on_a_free_port(tmp_path)

    async def scenario():
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        rude = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        rude_port = rude.sockets[0].getsockname()[1]

        async def ask_the_rude_peer(request):
            async with await open_connection("127.0.0.1", rude_port, agent.key, "a0", "archive"):
                return None

        agent.commands["ask"] = Command(ask_the_rude_peer)
        try:
            return await refusal_then_next_answer(agent, "ask")
        finally:
            rude.close()

    refusal, host_type = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert refusal.reason == "peer-failed" and refusal.error.startswith("ask: 127.0.0.1:")
    assert host_type == "archive"


def test_an_archive_keeps_the_link_alive_while_it_computes_hashes(tmp_path, monkeypatch) -> None:
    """The archive's side of a hash backup sends keepalives while a batch of hashes is computed:
    on a chain of 1,800 diffs the first batch took longer than the storage's socket timeout, and
    the storage gave up on every retry (found by scripts/chaos). The computation is replaced by a
    slow one here (an error branch of timing); the channels are real."""
    import time

    from walbops.diff import bhash
    from walbops.net import messages
    from walbops.net.stream import HashSyncCursor
    from walbops.net.transport import open_connection, serve

    agent = archive_agent_on_a_free_port(tmp_path)
    key = bytes(range(32))
    size_lb, bulk_lb = 16, 8

    def slow_hashes(base_fd, paths, size_lb, bulk_bytes, seed, batch):
        time.sleep(3.5)  # more than the storage's socket timeout below, and than the keepalive interval
        yield bytes(2 * messages.HASH_SIZE)

    monkeypatch.setattr(bhash, "virtual_bulk_hashes", slow_hashes)

    async def scenario():
        async def send(channel) -> None:
            await agent._send_hashes(channel, HashSyncCursor(size_lb, bulk_lb), -1, [], size_lb, bulk_lb, 7)
            await channel.recv_request()  # until the storage hangs up

        server = await serve("127.0.0.1", 0, key, "a0", "archive", send)
        port = server.sockets[0].getsockname()[1]
        try:
            async with await open_connection("127.0.0.1", port, key, "s0", "storage", timeout=2.5) as channel:
                return await channel.recv_json("hashes"), await channel.recv()
        finally:
            server.close()

    announced, frame = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert announced["offset_lb"] == 0 and announced["count"] == 2
    assert frame.data == bytes(2 * messages.HASH_SIZE)
