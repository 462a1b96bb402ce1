"""walb_loopdev: attach once, grow, refuse to shrink, detach; check mode predicts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from modules import ModuleFailed, run_module

from walbops import loop


def test_create_attach_then_unchanged(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    predicted = run_module("walb_loopdev", {"file": str(image), "size": "8M"}, check=True)
    assert predicted["changed"] and predicted["device"] is None and not image.exists()
    first = run_module("walb_loopdev", {"file": str(image), "size": "8M"})
    try:
        assert first["changed"] and first["device"].startswith("/dev/loop")
        assert first["diff"]["before"]["exists"] is False and first["diff"]["after"]["devices"] == [first["device"]]
        assert os.path.getsize(image) == 8 << 20
        second = run_module("walb_loopdev", {"file": str(image), "size": "8M"})
        assert not second["changed"] and second["device"] == first["device"]
        assert [a.device for a in loop.attachments(str(image))] == [first["device"]]
        assert not run_module("walb_loopdev", {"file": str(image)}, check=True)["changed"]
    finally:
        loop.detach(str(image))


def test_grow_refreshes_capacity_and_shrink_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    device = run_module("walb_loopdev", {"file": str(image), "size": "4M"})["device"]
    try:
        grown = run_module("walb_loopdev", {"file": str(image), "size": "6M"})
        assert grown["changed"] and grown["device"] == device
        with open(device, "rb") as stream:
            assert stream.seek(0, os.SEEK_END) == 6 << 20
        with pytest.raises(ModuleFailed, match="never shrunk"):
            run_module("walb_loopdev", {"file": str(image), "size": "2M"})
        with pytest.raises(ModuleFailed, match="never shrunk"):
            run_module("walb_loopdev", {"file": str(image), "size": "2M"}, check=True)
        assert os.path.getsize(image) == 6 << 20
    finally:
        loop.detach(str(image))


def test_absent_detaches_and_check_mode_leaves_it(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    device = run_module("walb_loopdev", {"file": str(image), "size": "4M"})["device"]
    predicted = run_module("walb_loopdev", {"file": str(image), "state": "absent"}, check=True)
    assert predicted["changed"] and loop.attachments(str(image))
    removed = run_module("walb_loopdev", {"file": str(image), "state": "absent"})
    assert removed["changed"] and removed["detached"] == [device]
    assert not loop.attachments(str(image))
    assert not run_module("walb_loopdev", {"file": str(image), "state": "absent"})["changed"]


def test_missing_file_without_size_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ModuleFailed, match="does not exist; give size"):
        run_module("walb_loopdev", {"file": str(tmp_path / "nope.img")})


def test_read_only_mismatch_names_state_absent(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    run_module("walb_loopdev", {"file": str(image), "size": "4M"})
    try:
        with pytest.raises(ModuleFailed, match="state=absent first to change read_only"):
            run_module("walb_loopdev", {"file": str(image), "read_only": True})
    finally:
        loop.detach(str(image))


def test_bad_walbops_bin_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModuleFailed, match="walbops_bin=/nonexistent"):
        run_module("walb_loopdev", {"file": str(tmp_path / "x"), "walbops_bin": "/nonexistent"})
