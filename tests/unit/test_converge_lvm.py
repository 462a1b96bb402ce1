"""walbops.converge.lvm without lvm2: sizes as lvol reads them, refusals made before lvm2 runs, and lvm2 failing.

Everything that lvm2 can do on this machine runs for real in tests/ansible/test_module_lvm.py.
The one exception is here: making a thin pool or a thin volume needs device-mapper, so its
command lines are checked against a recording runner.
"""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

import walbops.converge.lvm as converge_lvm
from walbops.converge.lvm import VgInfo, ensure_lv, ensure_vg, human_size, parse_extent_size, parse_lv_size
from walbops.errors import OperationError, UsageError
from walbops.lvm import Lvm

MiB = 1 << 20
EXTENT = 4 * MiB  # [bytes]
GROUP = VgInfo("vg0", 15 * EXTENT, 6 * EXTENT, EXTENT, extent_count=15, free_count=6)


@pytest.mark.parametrize(("text", "sign", "amount", "basis"), [
    ("512", "", 512 * MiB, None),  # a bare number is MiB, as lvol reads it
    ("64M", "", 64 * MiB, None),
    ("64m", "", 64 * MiB, None),
    ("1.5G", "", 1536 * MiB, None),
    ("2048s", "", MiB, None),
    ("4096b", "", 4096, None),
    ("1T", "", 1 << 40, None),
    ("+16M", "+", 16 * MiB, None),
    ("-16k", "-", 16 << 10, None),
    ("50%VG", "", 50, "VG"),
    ("100%free", "", 100, "FREE"),
    ("+20%PVS", "+", 20, "PVS"),
])
def test_lv_sizes_in_lvols_forms(text: str, sign: str, amount: int, basis: str | None) -> None:
    size = parse_lv_size(text)
    assert (size.sign, size.amount, size.basis) == (sign, Fraction(amount), basis)


@pytest.mark.parametrize(("text", "message"), [
    ("", "is not a size"),
    ("12Q", "is not a size"),
    ("M", "is not a size"),
    ("1,5G", "is not a size"),
    ("0", "must be more than 0"),
    ("0%VG", "a whole number from 1 to 100"),
    ("101%FREE", "a whole number from 1 to 100"),
    ("1.5%VG", "a whole number from 1 to 100"),
    ("10%ORIGIN", "a percentage is of VG, PVS or FREE"),
])
def test_bad_lv_sizes_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_lv_size(text)


@pytest.mark.parametrize(("text", "current", "extents"), [
    ("4M", 0, 1),
    ("4097K", 0, 2),  # a size rounds up to whole extents
    ("1b", 0, 1),
    ("+1M", 3, 4),
    ("-1M", 3, 3),  # 11 MiB rounds up to 3 extents: nothing to shrink
    ("-4M", 3, 2),
    ("50%VG", 0, 7),  # a percentage rounds down: 7.5 extents
    ("50%PVS", 9, 7),
    ("50%FREE", 0, 3),
    ("+50%FREE", 9, 12),
    ("-20%VG", 9, 6),
    ("1%FREE", 0, 0),
])
def test_extents_asked_for(text: str, current: int, extents: int) -> None:
    assert parse_lv_size(text).extents(current, GROUP) == extents


@pytest.mark.parametrize(("text", "size"), [
    ("4", 4 * MiB), ("128K", 128 << 10), ("3M", 3 * MiB), ("512b", 512), ("1g", 1 << 30), ("0.5", 512 << 10),
])
def test_extent_sizes(text: str, size: int) -> None:
    assert parse_extent_size(text) == size


@pytest.mark.parametrize("text", ["3K", "100b", "0", "+4", "50%VG", "0.3k"])
def test_bad_extent_sizes(text: str) -> None:
    with pytest.raises(UsageError, match="pesize"):
        parse_extent_size(text)


def test_human_size() -> None:
    assert [human_size(size) for size in (0, 512, 4096, 12 * MiB, 3 << 30, MiB + 1)] == \
        ["0 bytes", "512 bytes", "4 KiB", "12 MiB", "3 GiB", f"{MiB + 1} bytes"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: ensure_vg("vg0", ["/dev/x"], state="gone"), "state must be present or absent"),
    (lambda: ensure_vg("-vg", ["/dev/x"]), "volume group '-vg' is not a valid LVM name"),
    (lambda: ensure_vg("vg0", ["/dev/x"], pesize="3K"), "pesize='3K'"),
    (lambda: ensure_lv("vg0", state="gone"), "state must be present or absent"),
    (lambda: ensure_lv("vg0"), "give lv, or thinpool to manage a thin pool"),
    (lambda: ensure_lv("vg0", "lv/1", "4M"), "logical volume 'lv/1' is not a valid LVM name"),
    (lambda: ensure_lv("vg0", "lv1", "4M", thinpool="p p"), "thin pool 'p p' is not a valid LVM name"),
    (lambda: ensure_lv("vg0", "lv1", "50%VG", thinpool="pool"), "virtual size is not a percentage"),
])
def test_bad_arguments_are_refused_before_lvm2_runs(monkeypatch: pytest.MonkeyPatch, call, message: str) -> None:
    monkeypatch.setattr(Lvm, "_execute", lambda self, argv: pytest.fail(f"lvm2 ran: {argv}"))
    with pytest.raises(UsageError, match=message):
        call()


def test_missing_lvm2_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OperationError, match="lvm: command not found \\(install lvm2\\)"):
        ensure_vg("vg0", ["/dev/x"])


def test_lvm2_failures_and_odd_output_are_operation_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(stdout: str, returncode: int = 0, stderr: str = ""):
        return lambda self, argv: subprocess.CompletedProcess(argv, returncode, stdout, stderr)

    monkeypatch.setattr(Lvm, "_execute", answer("", 5, "  WARNING: noise\n  Locking failed.\n"))
    with pytest.raises(OperationError, match="lvm vgs .*: Locking failed.$"):
        ensure_lv("vg0", "lv1", "4M")
    monkeypatch.setattr(Lvm, "_execute", answer("not json"))
    with pytest.raises(OperationError, match="lvm vgs: unexpected output"):
        ensure_vg("vg0", ["/dev/x"])
    monkeypatch.setattr(Lvm, "_execute", answer(json.dumps({"report": [{"vg": [{"vg_name": "vg0", "vg_size": "x"}]}]})))
    with pytest.raises(OperationError, match="lvm vgs: unexpected row"):
        ensure_vg("vg0", ["/dev/x"])


def test_missing_blkid_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OperationError, match="blkid: command not found \\(install util-linux\\)"):
        converge_lvm._signature("/dev/null")


class RecordingLvm(Lvm):
    """lvm2 answering for vg0 (15 free extents of 4 MiB) and a thin pool ``pool``; records what changes."""

    changes: list[list[str]] = []

    def _execute(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        command = argv[argv.index("lvm") + 1]
        if command == "vgs":
            rows = {"vg": [{"vg_name": "vg0", "vg_size": str(15 * EXTENT), "vg_free": str(15 * EXTENT),
                            "vg_extent_size": str(EXTENT), "vg_extent_count": "15", "vg_free_count": "15"}]}
        elif command == "lvs":
            rows = {"lv": [{"lv_name": "pool", "lv_size": str(4 * EXTENT), "lv_attr": "twi-a-tz--", "pool_lv": "",
                            "origin": ""}]}
        else:
            RecordingLvm.changes.append(argv[argv.index("lvm") + 1:])
            rows = {}
        return subprocess.CompletedProcess(argv, 0, json.dumps({"report": [rows]}), "")


def test_thin_pool_and_thin_volume_command_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only with device-mapper, which this machine lacks: the real lvm2 cannot run these here.
    monkeypatch.setattr(converge_lvm, "Lvm", RecordingLvm)
    monkeypatch.setattr(converge_lvm, "device_mapper_missing", lambda: None)
    monkeypatch.setattr(RecordingLvm, "changes", [])
    assert ensure_lv("vg0", None, "30M", thinpool="pool2").changed
    assert ensure_lv("vg0", "thin1", "1G", thinpool="pool").changed
    assert ensure_lv("vg0", None, "24M", thinpool="pool").changed
    assert RecordingLvm.changes == [
        ["lvcreate", "--yes", "--type", "thin-pool", "--extents", "8", "--name", "pool2", "vg0"],
        ["lvcreate", "--yes", "--name", "thin1", "--virtualsize", f"{1 << 30}B", "--thinpool", "pool", "vg0"],
        ["lvextend", "--size", f"{6 * EXTENT}B", "vg0/pool"],
    ]
