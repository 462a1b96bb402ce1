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

# The order test directories are handed to the workers (scripts/test: --dist loadfile gives each
# file whole to one worker, in collection order): the long files first (a guest boot, netns
# fleets, whole clusters), the many short ones last, so that they fill the end of both workers'
# time instead of one worker finishing a long file alone. Files of one directory keep their order.
DIRECTORY_ORDER = {"vm": 0, "ansible": 1, "scenarios": 2, "integration": 3, "unit": 4}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    items.sort(key=lambda item: DIRECTORY_ORDER.get(item.path.relative_to(tests).parts[0], len(DIRECTORY_ORDER)))


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
