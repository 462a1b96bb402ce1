"""walb_lvm_vg and walb_lvm_lv against real lvm2 on loop devices, through a private lvm.conf.

The modules' walbops finds the lvm.conf through LVM_SYSTEM_DIR, set in this process's
environment for each test (tests/lvmtest.py). LVs are never active here (no
device-mapper): creating, resizing and removing them edits the VG's metadata only. Thin
pools and thin volumes can only be made through device-mapper, so the thin tests plant
them in the metadata and run the modules against what lvm2 then reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT
from lvmtest import EXTENT, MiB, PrivateLvm, private_lvm
from modules import ModuleFailed, run_module

from walbops.lvm import device_mapper_missing

VG = f"wbans{os.getpid()}"
VG_EXTENTS = 15  # a 64 MiB disk less lvm2's metadata area


@pytest.fixture
def lvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateLvm]:
    with private_lvm(tmp_path) as private:
        monkeypatch.setenv("LVM_SYSTEM_DIR", private.env["LVM_SYSTEM_DIR"])
        yield private


@pytest.fixture
def vg(lvm: PrivateLvm) -> PrivateLvm:
    """``VG`` on one 64 MiB disk (15 extents of 4 MiB)."""
    lvm.make_vg(VG, lvm.add_disk())
    return lvm


def vg_module(check: bool = False, **args: Any) -> dict[str, Any]:
    return run_module("walb_lvm_vg", {"vg": VG, **args}, check=check)


def lv_module(check: bool = False, **args: Any) -> dict[str, Any]:
    return run_module("walb_lvm_lv", {"vg": VG, **args}, check=check)


def refused(match: str, module: str, **args: Any) -> None:
    """The module refuses, in check mode and for real, with a message matching ``match``."""
    for check in (True, False):
        with pytest.raises(ModuleFailed, match=match):
            run_module(module, {"vg": VG, **args}, check=check)


# -- walb_lvm_vg ----------------------------------------------------------------------------


def test_vg_create_then_unchanged_and_check_mode_predicts(lvm: PrivateLvm) -> None:
    disk = lvm.add_disk()
    predicted = vg_module(pvs=[disk], check=True)
    assert predicted["changed"] and predicted["pvs"] == [disk] and predicted["size"] is None
    assert lvm.vg_names() == [] and lvm.lvm("pvs", "--noheadings").stdout.strip() == "", "check mode made nothing"
    created = vg_module(pvs=[disk])
    assert created["changed"] and created["pvs"] == [disk]
    assert created["extent_size"] == EXTENT and created["size"] == created["free"] == VG_EXTENTS * EXTENT
    assert created["diff"]["before"]["exists"] is False and created["diff"]["after"]["pvs"] == [disk]
    assert lvm.vg_names() == [VG] and lvm.pv_names(VG) == [disk]
    assert not vg_module(pvs=[disk])["changed"]
    assert not vg_module(pvs=[disk], check=True)["changed"]
    assert not vg_module()["changed"], "without pvs an existing VG is left as it is"


def test_vg_pesize_of_a_new_vg(lvm: PrivateLvm) -> None:
    created = vg_module(pvs=[lvm.add_disk()], pesize="8")
    assert created["extent_size"] == 8 * MiB
    with pytest.raises(ModuleFailed, match="pesize='3K' must be a power of 2"):
        vg_module(vg="other", pvs=[lvm.add_disk()], pesize="3K")


def test_vg_adds_a_listed_pv_and_drops_an_unused_one(vg: PrivateLvm) -> None:
    first = vg.pv_names(VG)[0]
    second = vg.add_disk()
    predicted = vg_module(pvs=[first, second], check=True)
    assert predicted["changed"] and predicted["pvs"] == sorted([first, second])
    assert vg.pv_names(VG) == [first], "check mode added nothing"
    added = vg_module(pvs=[first, second])
    assert added["changed"] and added["pvs"] == sorted([first, second]) and added["size"] == 2 * VG_EXTENTS * EXTENT
    assert vg.pv_names(VG) == sorted([first, second])
    assert not vg_module(pvs=[second, first])["changed"]
    dropped = vg_module(pvs=[second])
    assert dropped["changed"] and dropped["diff"]["before"]["pvs"] == sorted([first, second])
    assert vg.pv_names(VG) == [second]


def test_vg_refuses_to_drop_a_pv_holding_lvs(vg: PrivateLvm) -> None:
    first = vg.pv_names(VG)[0]
    vg.lvm("lvcreate", "--yes", "--name", "data", "--size", "8M", VG)
    refused(f"{first} is not in pvs but holds 8 MiB of LVs; list it in pvs", "walb_lvm_vg", pvs=[vg.add_disk()])
    assert vg.pv_names(VG) == [first], "refused before vgextend"


def test_vg_refuses_a_pv_of_another_vg_and_a_signature_without_force(vg: PrivateLvm) -> None:
    first = vg.pv_names(VG)[0]
    refused(f"{first} is a PV of volume group {VG}; take it out of {VG} first", "walb_lvm_vg",
            vg="other", pvs=[first])
    if shutil.which("mkfs.ext4") is None:
        pytest.fail("missing mkfs.ext4: apt install e2fsprogs")
    formatted = vg.add_disk()
    subprocess.run(["mkfs.ext4", "-q", formatted], check=True, capture_output=True)
    refused(f"{formatted} holds a signature \\(ext4\\); set force: true to overwrite it", "walb_lvm_vg",
            pvs=[first, formatted])
    assert vg.pv_names(VG) == [first]
    assert vg_module(pvs=[first, formatted], force=True)["changed"]
    assert vg.pv_names(VG) == sorted([first, formatted])


def test_vg_absent_refuses_lvs_without_force(vg: PrivateLvm) -> None:
    vg.lvm("lvcreate", "--yes", "--name", "data", "--size", "8M", VG)
    refused(f"volume group {VG} holds LVs \\(data\\); set force: true to remove them", "walb_lvm_vg", state="absent")
    assert vg.vg_names() == [VG]
    predicted = vg_module(state="absent", force=True, check=True)
    assert predicted["changed"] and vg.vg_names() == [VG]
    removed = vg_module(state="absent", force=True)
    assert removed["changed"] and removed["removed_lvs"] == ["data"] and removed["size"] is None
    assert vg.vg_names() == []
    assert not vg_module(state="absent")["changed"]


def test_vg_missing_pvs_and_devices_are_named(lvm: PrivateLvm, tmp_path: Path) -> None:
    with pytest.raises(ModuleFailed, match=f"volume group {VG} does not exist; give pvs to create it"):
        vg_module()
    with pytest.raises(ModuleFailed, match=f"device {tmp_path}/nope does not exist"):
        vg_module(pvs=[str(tmp_path / "nope")])


# -- walb_lvm_lv ----------------------------------------------------------------------------


def test_lv_create_then_unchanged_and_check_mode_predicts(vg: PrivateLvm) -> None:
    predicted = lv_module(lv="lv1", size="10M", check=True)
    assert predicted["changed"] and predicted["size"] == 12 * MiB, "a size rounds up to whole extents"
    assert vg.lv_sizes(VG) == {}, "check mode made nothing"
    created = lv_module(lv="lv1", size="10M")
    assert created["changed"] and created["size"] == 12 * MiB and created["device"] == f"/dev/{VG}/lv1"
    assert created["thinpool"] is None and created["diff"]["before"]["exists"] is False
    assert vg.lv_sizes(VG) == {"lv1": 12 * MiB}
    for same in ("10M", "12M", "12", "12582912b", "24576s"):
        assert not lv_module(lv="lv1", size=same)["changed"], same
    assert not lv_module(lv="lv1", size="12M", check=True)["changed"]
    assert not lv_module(lv="lv1")["changed"], "no size: left as it is"


def test_lv_grows_by_size_plus_and_percentages(vg: PrivateLvm) -> None:
    lv_module(lv="lv1", size="8M")
    predicted = lv_module(lv="lv1", size="20M", check=True)
    assert predicted["changed"] and predicted["size"] == 20 * MiB and predicted["diff"]["before"]["size"] == 8 * MiB
    assert vg.lv_sizes(VG) == {"lv1": 8 * MiB}, "check mode grew nothing"
    assert lv_module(lv="lv1", size="20M")["size"] == 20 * MiB
    assert lv_module(lv="lv1", size="+4M")["size"] == 24 * MiB
    assert lv_module(lv="lv1", size="+1M")["size"] == 28 * MiB, "+N rounds up to whole extents"
    assert lv_module(lv="lv1", size="60%VG")["size"] == 9 * EXTENT, "60% of 15 extents"
    assert vg.lv_sizes(VG) == {"lv1": 9 * EXTENT}
    assert lv_module(lv="lv1", size="+50%FREE")["size"] == 12 * EXTENT, "half the 6 free extents more"
    assert lv_module(lv="lv1", size="+100%FREE")["size"] == VG_EXTENTS * EXTENT
    refused(f"{VG}/lv2: size=4M needs 4 MiB more, but volume group {VG} has 0 bytes free", "walb_lvm_lv",
            lv="lv2", size="4M")


def test_lv_percent_of_free_on_create_and_again(vg: PrivateLvm) -> None:
    lv_module(lv="lv1", size="4M")
    created = lv_module(lv="lv2", size="50%FREE")
    assert created["size"] == 7 * EXTENT, "half of 14 free extents"
    # Again: 50% of the 7 extents now free asks for less, as lvol reads it.
    assert not lv_module(lv="lv2", size="50%FREE", shrink=False)["changed"]
    refused(f"{VG}/lv2 is 28 MiB; size=50%FREE would shrink it to 12 MiB; set force: true", "walb_lvm_lv",
            lv="lv2", size="50%FREE")
    lv_module(lv="lv2", size="+100%FREE")
    refused(f"{VG}/lv2 is 56 MiB; size=100%FREE would shrink it to nothing; set shrink: false", "walb_lvm_lv",
            lv="lv2", size="100%FREE", force=True)


def test_lv_shrinks_only_with_force_and_never_with_shrink_false(vg: PrivateLvm) -> None:
    lv_module(lv="lv1", size="32M")
    refused(f"{VG}/lv1 is 32 MiB; size=16M would shrink it to 16 MiB; set force: true to shrink", "walb_lvm_lv",
            lv="lv1", size="16M")
    refused("set force: true to shrink", "walb_lvm_lv", lv="lv1", size="-8M")
    assert vg.lv_sizes(VG) == {"lv1": 32 * MiB}
    for force in (False, True):
        left = lv_module(lv="lv1", size="16M", shrink=False, force=force)
        assert not left["changed"] and left["size"] == 32 * MiB
    predicted = lv_module(lv="lv1", size="16M", force=True, check=True)
    assert predicted["changed"] and predicted["size"] == 16 * MiB and vg.lv_sizes(VG) == {"lv1": 32 * MiB}
    shrunk = lv_module(lv="lv1", size="16M", force=True)
    assert shrunk["changed"] and shrunk["size"] == 16 * MiB and vg.lv_sizes(VG) == {"lv1": 16 * MiB}
    assert lv_module(lv="lv1", size="-8M", force=True)["size"] == 8 * MiB
    assert vg.lv_sizes(VG) == {"lv1": 8 * MiB}


def test_lv_remove_needs_force(vg: PrivateLvm) -> None:
    lv_module(lv="lv1", size="8M")
    refused(f"{VG}/lv1 exists; set force: true to remove it", "walb_lvm_lv", lv="lv1", state="absent")
    predicted = lv_module(lv="lv1", state="absent", force=True, check=True)
    assert predicted["changed"] and predicted["removed"] == ["lv1"] and vg.lv_sizes(VG) == {"lv1": 8 * MiB}
    removed = lv_module(lv="lv1", state="absent", force=True)
    assert removed["changed"] and removed["device"] is None and removed["diff"]["before"]["size"] == 8 * MiB
    assert vg.lv_sizes(VG) == {}
    assert not lv_module(lv="lv1", state="absent", force=True)["changed"]
    assert not lv_module(vg="novg", lv="lv1", state="absent")["changed"], "no VG: nothing to remove"


def test_lv_bad_requests_are_named(vg: PrivateLvm) -> None:
    with pytest.raises(ModuleFailed, match=f"{VG}/lv1 does not exist; give size to create it"):
        lv_module(lv="lv1")
    with pytest.raises(ModuleFailed, match="size='12Q' is not a size"):
        lv_module(lv="lv1", size="12Q")
    with pytest.raises(ModuleFailed, match="a percentage is of VG, PVS or FREE"):
        lv_module(lv="lv1", size="10%ORIGIN")
    with pytest.raises(ModuleFailed, match="volume group novg does not exist"):
        lv_module(vg="novg", lv="lv1", size="4M")
    with pytest.raises(ModuleFailed, match="one of the following is required: lv, thinpool"):
        lv_module(size="4M")


# -- thin pools and thin volumes ------------------------------------------------------------


def test_thin_pool_and_volume_creation_need_device_mapper(vg: PrivateLvm) -> None:
    # Without device-mapper walbops refuses; with it but activation off, lvm2 does ("... device-mapper ...").
    expected = "creating a thin pool needs device-mapper" if device_mapper_missing() else "device-mapper"
    refused(expected, "walb_lvm_lv", thinpool="pool", size="16M")
    assert vg.lv_sizes(VG) == {}
    refused(f"thin pool {VG}/pool does not exist; create it first", "walb_lvm_lv", lv="thin1", thinpool="pool",
            size="64M")


def test_planted_thin_pool_and_volume(vg: PrivateLvm) -> None:
    vg.plant_thin_pool(VG, "pool", 4, {"thin1": 8})
    pool = lv_module(thinpool="pool", size="16M")
    assert not pool["changed"] and pool["lv"] == "pool" and pool["thinpool"] == "pool" and pool["size"] == 16 * MiB
    assert not lv_module(thinpool="pool", size="16M", check=True)["changed"]
    refused(f"{VG}/pool is 16 MiB; size=8M would shrink it, and lvm2 cannot shrink a thin pool", "walb_lvm_lv",
            thinpool="pool", size="8M", force=True)
    assert not lv_module(thinpool="pool", size="8M", shrink=False)["changed"]

    thin = lv_module(lv="thin1", thinpool="pool", size="32M")
    assert not thin["changed"] and thin["thinpool"] == "pool" and thin["size"] == 32 * MiB
    predicted = lv_module(lv="thin1", thinpool="pool", size="128M", check=True)
    assert predicted["changed"] and predicted["size"] == 128 * MiB and vg.lv_sizes(VG)["thin1"] == 32 * MiB
    grown = lv_module(lv="thin1", thinpool="pool", size="128M")
    assert grown["changed"] and grown["size"] == 128 * MiB, "a thin volume's size is virtual: beyond the VG"
    assert vg.lv_sizes(VG)["thin1"] == 128 * MiB
    with pytest.raises(ModuleFailed, match="a thin volume's virtual size is not a percentage"):
        lv_module(lv="thin1", thinpool="pool", size="50%VG")

    vg.lvm("lvcreate", "--yes", "--name", "thick", "--size", "4M", VG)
    refused(f"{VG}/thick exists and is a thick LV, not in thin pool pool; remove it first", "walb_lvm_lv",
            lv="thick", thinpool="pool", size="4M")
    refused(f"{VG}/thin1 exists and is a thin volume in pool pool, not a thin pool", "walb_lvm_lv",
            thinpool="thin1", size="4M")
    refused(f"{VG}/thick is a thick LV, not a thin pool", "walb_lvm_lv", lv="thin2", thinpool="thick", size="4M")

    predicted = lv_module(thinpool="pool", state="absent", force=True, check=True)
    assert predicted["removed"] == ["pool", "thin1"] and "pool" in vg.lv_sizes(VG)
    removed = lv_module(thinpool="pool", state="absent", force=True)
    assert removed["changed"] and removed["removed"] == ["pool", "thin1"]
    assert vg.lv_sizes(VG) == {"thick": 4 * MiB}, "lvremove takes the pool's thin volumes with it"


# -- documentation --------------------------------------------------------------------------


def test_ansible_doc_renders_both_modules() -> None:
    # From the repository root, so ansible.cfg (the collection) is found; the venv's ansible-doc.
    command = [str(Path(sys.executable).parent / "ansible-doc"), "--json", "walbops.walbops.walb_lvm_vg",
               "walbops.walbops.walb_lvm_lv"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    docs = {fqcn.removeprefix("walbops.walbops."): doc for fqcn, doc in json.loads(result.stdout).items()}
    for name, options in (("walb_lvm_vg", {"vg", "pvs", "pesize", "state", "force", "walbops_bin"}),
                          ("walb_lvm_lv", {"vg", "lv", "size", "state", "force", "shrink", "thinpool"})):
        assert docs[name]["doc"]["module"] == name
        assert options <= set(docs[name]["doc"]["options"])
        assert docs[name]["examples"].strip() and docs[name]["return"]["size"]["type"] == "int"
