"""Shared fixtures: WalB's reference files."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest
from helpers import VECTORS
from hypothesis import HealthCheck, settings

# Shared machines are noisy: no per-example deadline, and slow data generation is no failure.
settings.register_profile("walbops", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("walbops")


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
