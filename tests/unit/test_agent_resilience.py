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


def test_storage_shipper_survives_an_unexpected_error(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    write_key(tmp_path / "key")
    config = agent_config.load("storage", overrides={
        "base_dir": str(tmp_path), "cluster_key_file": str(tmp_path / "key"), "archive": "127.0.0.1:1",
        "proxies": ["127.0.0.1:2"], "retry_delay": 0.0, "port": 1})
    agent = StorageAgent(config)
    volume = StorageVolume(str(tmp_path), "vol0")
    volume.init_vol("dev0")
    volume.machine.force("Target")
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
