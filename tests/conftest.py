"""Shared fixtures: paths to WalB's vectors and helpers to build logs."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors" / "walb-tools-1.0.19"


def sha1_of(path: Path | str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"WalB test vectors not found at {VECTORS}: the shared/ folder must sit beside the repository")
    return VECTORS


@pytest.fixture(scope="session")
def l512_ldev(tmp_path_factory: pytest.TempPathFactory, vectors: Path) -> Path:
    """The unpacked L512.ldev.img (32 MiB)."""
    target = tmp_path_factory.mktemp("ldev") / "L512.ldev.img"
    with lzma.open(vectors / "L512.ldev.img.xz") as packed, open(target, "wb") as out:
        shutil.copyfileobj(packed, out, 1 << 20)
    return target


def zero_image(path: Path, size: int) -> Path:
    with open(path, "wb") as stream:
        stream.truncate(size)
    return path


def bytes_stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def read_fd(path: Path | str) -> int:
    return os.open(path, os.O_RDONLY)
