"""Shared fixtures: WalB's reference files."""

from __future__ import annotations

import asyncio
import lzma
import shutil
from pathlib import Path

import pytest
from helpers import VECTORS, take_asyncio_debug
from hypothesis import HealthCheck, settings

# Shared machines are noisy: no per-example deadline, and slow data generation is no failure.
settings.register_profile("walbops", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("walbops")


class _DebugLoops(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.set_debug(True)
        return loop


if take_asyncio_debug():
    asyncio.set_event_loop_policy(_DebugLoops())


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"WalB test vectors not found at {VECTORS}: they are part of the repository")
    return VECTORS


@pytest.fixture(scope="session")
def l512_ldev(tmp_path_factory: pytest.TempPathFactory, vectors: Path) -> Path:
    """The unpacked L512.ldev.img (32 MiB)."""
    target = tmp_path_factory.mktemp("ldev") / "L512.ldev.img"
    with lzma.open(vectors / "L512.ldev.img.xz") as packed, open(target, "wb") as out:
        shutil.copyfileobj(packed, out, 1 << 20)
    return target
