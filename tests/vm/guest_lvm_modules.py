"""walb_lvm_vg and walb_lvm_lv against active LVs: runs inside the test guest (tests/vm/test_vm_lvm.py).

tests/ansible/test_module_lvm.py covers the modules' arguments and refusals on metadata-only
lvm2; here every LV they make is active, thin pools and thin volumes are made by lvm2 itself,
and data written to an LV survives growing and shrinking it. Each state-changing call runs
twice: the second reports ``changed: false``.

A module call starts the walbops command, which takes about ten seconds in the emulated guest,
so the first steps of each test go through the modules (in-process, as Ansible's own module
tests run them) and the others call what the modules' command runs, ``walbops.converge.lvm``,
directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import ROOT

from walbops.blockdev import size_of_path
from walbops.converge.lvm import ensure_lv, ensure_vg
from walbops.errors import WalbopsError

if os.environ.get("WALBOPS_VM_GUEST") != "1":
    pytest.skip("runs inside the test guest (tests/vm/test_vm_lvm.py)", allow_module_level=True)

sys.path.append(str(ROOT / "tests" / "ansible"))
from modules import run_module  # noqa: E402  (tests/ansible is not on the path by itself)

MiB = 1 << 20
VG = "wbvmmod"
ENGINES = {"walb_lvm_vg": ensure_vg, "walb_lvm_lv": ensure_lv}


def call(module: str, check: bool = False, via_module: bool = False, **args: Any) -> dict[str, Any]:
    """``module``'s result for ``args``: through the module itself, or its engine in-process."""
    if via_module:
        return run_module(module, {"vg": VG, **args}, check=check)
    return ENGINES[module](VG, **args, check=check).as_json()


def converged(module: str, via_module: bool = False, check_again: bool = False, **args: Any) -> dict[str, Any]:
    """Run ``module`` for real, then again (and in check mode if ``check_again``): no change then."""
    result = call(module, via_module=via_module, **args)
    for check in (False, True)[:1 + check_again]:
        again = call(module, check=check, via_module=via_module, **args)
        assert not again["changed"], (module, args, check, again)
    return result


def refused(match: str, module: str, **args: Any) -> None:
    with pytest.raises(WalbopsError, match=match):
        call(module, **args)


def lv_names() -> list[str]:
    output = subprocess.run(["lvm", "lvs", "--noheadings", "--options", "lv_name", VG], capture_output=True,
                            text=True, check=True).stdout
    return sorted(output.split())


def write_and_read(path: str, data: bytes) -> bytes:
    """Write ``data`` at the start of the device ``path``, bypassing the page cache, and read it back."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return os.pread(fd, len(data), 0)
    finally:
        os.close(fd)


@pytest.fixture
def vg_on(request: pytest.FixtureRequest) -> Iterator[str]:
    """The disk the test's VG goes on; whatever the test left of the VG is removed after."""
    disk = request.param
    yield disk
    subprocess.run(["lvm", "vgremove", "--yes", "--force", VG], capture_output=True)
    subprocess.run(["lvm", "pvremove", "--yes", disk], capture_output=True)


@pytest.mark.parametrize("vg_on", ["/dev/vda"], indirect=True)
def test_vg_and_a_thick_lv_that_is_active_grows_and_shrinks(vg_on: str) -> None:
    predicted = call("walb_lvm_vg", check=True, via_module=True, pvs=[vg_on])
    assert predicted["changed"]
    assert subprocess.run(["lvm", "vgs", VG], capture_output=True).returncode != 0, "check mode made nothing"
    assert converged("walb_lvm_vg", via_module=True, pvs=[vg_on])["changed"]

    created = converged("walb_lvm_lv", via_module=True, check_again=True, lv="data", size="32M")
    path = created["device"]
    assert created["changed"] and created["size"] == 32 * MiB and path == f"/dev/{VG}/data"
    assert size_of_path(path) == 32 * MiB, "the LV is active: its device is there"
    data = os.urandom(MiB)
    assert write_and_read(path, data) == data

    predicted = call("walb_lvm_lv", check=True, lv="data", size="64M")
    assert predicted["changed"] and predicted["size"] == 64 * MiB and size_of_path(path) == 32 * MiB
    assert converged("walb_lvm_lv", lv="data", size="64M")["size"] == 64 * MiB
    assert size_of_path(path) == 64 * MiB

    refused("set force: true to shrink", "walb_lvm_lv", lv="data", size="48M")
    assert size_of_path(path) == 64 * MiB
    assert converged("walb_lvm_lv", lv="data", size="48M", force=True)["size"] == 48 * MiB
    assert size_of_path(path) == 48 * MiB
    with open(path, "rb") as device:
        assert device.read(MiB) == data, "the data before the cut survives a shrink"

    assert converged("walb_lvm_lv", lv="data", state="absent", force=True)["changed"]
    assert not os.path.exists(path) and lv_names() == []
    assert converged("walb_lvm_vg", state="absent")["changed"]


@pytest.mark.parametrize("vg_on", ["/dev/vdb"], indirect=True)
def test_a_thin_pool_and_thin_volumes_made_by_lvm2(vg_on: str) -> None:
    converged("walb_lvm_vg", pvs=[vg_on])

    predicted = call("walb_lvm_lv", check=True, thinpool="pool", size="64M")
    assert predicted["changed"] and predicted["size"] == 64 * MiB and lv_names() == []
    pool = converged("walb_lvm_lv", check_again=True, thinpool="pool", size="64M")
    assert pool["changed"] and pool["thinpool"] == "pool" and pool["size"] == 64 * MiB

    thin = converged("walb_lvm_lv", via_module=True, lv="thin1", thinpool="pool", size="512M")
    assert thin["changed"] and thin["size"] == 512 * MiB, "a thin volume's size is virtual: beyond the VG"
    assert size_of_path(thin["device"]) == 512 * MiB
    data = os.urandom(MiB)
    assert write_and_read(thin["device"], data) == data
    grown = converged("walb_lvm_lv", lv="thin1", thinpool="pool", size="1G")
    assert grown["size"] == 1024 * MiB and size_of_path(thin["device"]) == 1024 * MiB
    with open(thin["device"], "rb") as device:
        assert device.read(MiB) == data
    assert converged("walb_lvm_lv", thinpool="pool", size="96M")["size"] == 96 * MiB, "a pool grows"
    refused("lvm2 cannot shrink a thin pool", "walb_lvm_lv", thinpool="pool", size="64M", force=True)

    held = os.open(thin["device"], os.O_RDONLY)  # in use: lvremove would fail on it
    try:
        refused(f"{VG}/thin1 is open", "walb_lvm_lv", thinpool="pool", state="absent", force=True)
    finally:
        os.close(held)
    predicted = call("walb_lvm_lv", check=True, thinpool="pool", state="absent", force=True)
    assert predicted["removed"] == ["pool", "thin1"] and lv_names() == ["pool", "thin1"]
    removed = converged("walb_lvm_lv", thinpool="pool", state="absent", force=True)
    assert removed["removed"] == ["pool", "thin1"] and lv_names() == []
    assert not os.path.exists(thin["device"])
