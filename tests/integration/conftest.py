"""Fixtures for tests that run real walb devices: FUSE, loop devices, mounts (root only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from devices import Device, can_run_devices, make_files, next_name, walbops


@pytest.fixture(scope="session", autouse=True)
def private_device_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runtime files and /dev links of test devices go to temporary directories."""
    root = tmp_path_factory.mktemp("walbops-run")
    saved = {key: os.environ.get(key) for key in ("WALBOPS_RUN_DIR", "WALBOPS_DEV_DIR")}
    os.environ["WALBOPS_RUN_DIR"] = str(root / "run")
    os.environ["WALBOPS_DEV_DIR"] = str(root / "dev")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def device_factory(tmp_path: Path) -> Iterator:
    """Formats and creates walb devices on image files; deletes them afterwards."""
    reason = can_run_devices()
    if reason:
        pytest.fail(f"walb devices cannot run here: {reason}")
    created: list[Device] = []

    def make(pbs: int = 512, ldev_size: int = 64 << 20, ddev_size: int = 64 << 20, *options: str) -> Device:
        name = next_name()
        directory = tmp_path / name
        directory.mkdir()
        ldev, ddev = make_files(directory, ldev_size, ddev_size)
        walbops("wdev", "format-ldev", str(ldev), str(ddev), "--name", name, "--pbs", str(pbs), check=True)
        path = walbops("wdev", "create", str(ldev), str(ddev), "--name", name, *options, check=True).stdout.strip()
        device = Device(name, ldev, ddev, path)
        created.append(device)
        return device

    yield make
    for device in created:
        # --force also cleans up after a daemon a test killed.
        walbops("wdev", "delete", device.name, "--force")
