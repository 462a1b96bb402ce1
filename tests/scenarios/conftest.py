"""Scenario fixtures: a backup group per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster


@pytest.fixture(scope="session", autouse=True)
def private_device_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    root = tmp_path_factory.mktemp("walbops-run")
    os.environ["WALBOPS_RUN_DIR"] = str(root / "run")
    os.environ["WALBOPS_DEV_DIR"] = str(root / "dev")
    yield


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    group = Cluster(tmp_path, asyncio_debug=request.node.get_closest_marker("agents_asyncio_debug") is not None)
    try:
        yield group
    finally:
        group.close()
