"""walbops.device.lifecycle without a daemon: its checks, its results, and the converge layer's imports.

Starting and stopping real devices (the ready handshake, a graceful and a forced stop)
runs in tests/integration/test_device.py through ``walbops wdev`` and in
tests/ansible/test_module_ldev_device.py through the ensure operations. Here a device
"runs" when its info.json names a live pid (this test's own), which is all the checks read.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import walbops.converge
from walbops.device.lifecycle import Stopped, format_checked, start_device, stop_device
from walbops.device.registry import DevicePaths
from walbops.diff.logs import read_super
from walbops.errors import OperationError, UsageError

MiB = 1 << 20


@pytest.fixture
def disks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A sparse ldev and ddev, and private run and dev directories."""
    monkeypatch.setenv("WALBOPS_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("WALBOPS_DEV_DIR", str(tmp_path / "dev"))
    ldev, ddev = tmp_path / "ldev.img", tmp_path / "ddev.img"
    for path, size in ((ldev, 4 * MiB), (ddev, 8 * MiB)):
        with open(path, "wb") as stream:
            stream.truncate(size)
    return ldev, ddev


def pretend_running(name: str, ldev: Path, ddev: Path) -> None:
    paths = DevicePaths(name)
    os.makedirs(paths.run_dir)
    with open(paths.info, "w") as stream:
        json.dump({"name": name, "pid": os.getpid(), "ldev": str(ldev), "ddev": str(ddev)}, stream)


def test_format_checked_returns_the_written_super_sector(disks: tuple[Path, Path]) -> None:
    ldev, ddev = disks
    sector = format_checked(str(ldev), str(ddev), "vol0", 4096)
    assert (sector.name, sector.physical_bs, sector.device_size) == ("vol0", 4096, 8 * MiB // 512)
    fd = os.open(ldev, os.O_RDONLY)
    try:
        assert read_super(fd) == sector
    finally:
        os.close(fd)


def test_format_checked_refusals(disks: tuple[Path, Path], tmp_path: Path) -> None:
    ldev, ddev = disks
    with pytest.raises(UsageError, match="missing.img: no such device or file"):
        format_checked(str(ldev), str(tmp_path / "missing.img"))
    alias = tmp_path / "alias.img"
    alias.symlink_to(ldev)
    with pytest.raises(UsageError, match="the ldev and the ddev must be different devices"):
        format_checked(str(ldev), str(alias))
    pretend_running("busy", ldev, tmp_path / "elsewhere.img")
    with pytest.raises(OperationError, match=f"{ldev} is in use by walb device 'busy'; delete it first$"):
        format_checked(str(ldev), str(ddev))


def test_start_device_refusals_come_before_any_daemon(disks: tuple[Path, Path], tmp_path: Path) -> None:
    ldev, ddev = disks
    with pytest.raises(UsageError, match="device name"):
        start_device("bad/name", str(ldev), str(ddev))
    pretend_running("busy", ldev, tmp_path / "elsewhere.img")
    with pytest.raises(OperationError, match="walb device 'busy' is already running"):
        start_device("busy", str(ldev), str(ddev))
    with pytest.raises(OperationError, match=f"{ldev} is in use by walb device 'busy'$"):
        start_device("other", str(ldev), str(ddev))
    with pytest.raises(UsageError, match="missing.img: no such device or file"):
        start_device("other", str(tmp_path / "missing.img"), str(ddev))
    assert not os.path.exists(DevicePaths("other").run_dir)


def test_stop_device_without_a_daemon(disks: tuple[Path, Path]) -> None:
    with pytest.raises(OperationError, match="walb device 'gone' is not running$"):
        stop_device("gone")
    # A daemon that died leaves its /dev link (and maybe more) behind.
    link = DevicePaths("gone").link
    os.makedirs(os.path.dirname(link))
    os.symlink("/dev/null-walbops-test-missing", link)
    with pytest.raises(OperationError, match="left files behind; --force cleans them up"):
        stop_device("gone")
    assert os.path.lexists(link)
    assert stop_device("gone", force=True) == Stopped("gone", was_running=False, pid=None)
    assert not os.path.lexists(link)


def test_converge_does_not_import_the_command_line() -> None:
    """The ensure operations call the libraries; the CLI is one of their callers, never a dependency."""
    package = Path(walbops.converge.__file__).parent
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert not (node.level == 2 and module.split(".")[0] == "cli"), f"{source.name} imports ..{module}"
                assert not module.startswith("walbops.cli"), f"{source.name} imports {module}"
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("walbops.cli") for alias in node.names), source.name
