"""LvmStore with real lvm2 on a loop device, activation disabled: metadata works, data IO says why not.

lvm2 reads a private lvm.conf (LVM_SYSTEM_DIR) that sees only the test's loop device
and never activates (tests/lvmtest.py), so the host's VGs and /etc/lvm are not touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lvmtest import EXTENT, PrivateLvm, private_lvm

from walbops.diff.engine import DiscardPolicy
from walbops.errors import OperationError
from walbops.store import open_store
from walbops.store.lvmstore import LvmStore, device_mapper_missing

MiB = 1 << 20
LB = 512
VOL = "vol-1"


@dataclass
class Vg:
    name: str
    env: dict[str, str]
    lvm: PrivateLvm


@pytest.fixture
def vg(tmp_path: Path) -> Iterator[Vg]:
    """A VG on a 64 MiB loop device, seen only through a private lvm.conf; removed after."""
    with private_lvm(tmp_path) as lvm:
        name = f"wbtest{os.getpid()}"
        lvm.make_vg(name, lvm.add_disk(64 * MiB))
        yield Vg(name, lvm.env, lvm)


def lv_sizes(vg: Vg) -> dict[str, int]:
    return vg.lvm.lv_sizes(vg.name)


def test_metadata_operations_on_real_lvm(vg: Vg, tmp_path: Path):
    store = open_store("lvm", vg=vg.name, env=vg.env, config="global{activation=0}")
    assert isinstance(store, LvmStore)
    assert not store.base_exists(VOL) and store.volumes() == []

    # create: rounded up to whole extents; a second create is refused and changes nothing.
    assert store.create_base(VOL, 10 * MiB // LB) == f"/dev/{vg.name}/wb_{VOL}"
    assert lv_sizes(vg) == {f"wb_{VOL}": 12 * MiB}
    assert store.base_exists(VOL) and store.base_size_lb(VOL) == 12 * MiB // LB
    with pytest.raises(OperationError, match=f"volume {VOL}: a base LV {vg.name}/wb_{VOL} exists already"):
        store.create_base(VOL, 10 * MiB // LB)
    assert lv_sizes(vg) == {f"wb_{VOL}": 12 * MiB}

    # extend: never shrinks.
    assert store.grow_base(VOL, 20 * MiB // LB) == 20 * MiB // LB
    assert store.grow_base(VOL, 8 * MiB // LB) == 20 * MiB // LB
    assert lv_sizes(vg)[f"wb_{VOL}"] == 20 * MiB

    # A restore that died after its snapshot (made by hand here: snapshots need device-mapper),
    # and one completed by the rename restore() ends with.
    store.lvm.create(f"wr_{VOL}_5_tmp", EXTENT)
    store.lvm.create(f"wr_{VOL}_7_tmp", EXTENT)
    store.lvm.rename(f"wr_{VOL}_7_tmp", f"wr_{VOL}_7")
    store.lvm.create("wr_other_3", EXTENT)
    assert store.restored(VOL) == [7], "tmp LVs and other volumes' LVs are not restored images"
    assert store.volumes() == ["other", VOL]
    assert store.cleanup(VOL) == [f"{vg.name}/wr_{VOL}_5_tmp"]
    assert store.cleanup(VOL) == []
    assert sorted(lv_sizes(vg)) == [f"wb_{VOL}", "wr_other_3", f"wr_{VOL}_7"]

    store.delete_restored(VOL, 7)
    assert store.restored(VOL) == []
    with pytest.raises(OperationError, match=f"volume {VOL}: gid 7 is not restored \\(no LV {vg.name}/wr_{VOL}_7\\)"):
        store.delete_restored(VOL, 7)

    store.remove_volume(VOL)
    store.remove_volume(VOL)  # nothing left: nothing to do
    assert sorted(lv_sizes(vg)) == ["wr_other_3"]


def test_data_io_names_the_missing_device_mapper(vg: Vg, tmp_path: Path):
    store = LvmStore(vg.name, env=vg.env)  # activation=0 comes from the lvm.conf alone
    store.create_base(VOL, 8 * MiB // LB)
    store.lvm.create(f"wr_{VOL}_4", EXTENT)
    reason = device_mapper_missing()
    # This kernel has no device-mapper; on one that has it, activation=0 still yields no device.
    expected = "needs a kernel with device-mapper" if reason else "activation disabled .* device-mapper"
    with pytest.raises(OperationError, match=f"volume {VOL}: opening the base.*{expected}"), store.open_base(VOL):
        pass
    with pytest.raises(OperationError, match=f"volume {VOL}: opening the base: LV {vg.name}/wb_{VOL}.*{expected}"):
        store.apply_to_base(VOL, [], DiscardPolicy.ZERO)
    with pytest.raises(OperationError, match=f"volume {VOL}: attaching gid 4.*{expected}"):
        store.attach(VOL, 4)
    with pytest.raises(OperationError, match=f"volume {VOL}: zeroing the grown base.*{expected}"):
        store.grow_base(VOL, 16 * MiB // LB, zero_new=True)
    assert lv_sizes(vg)[f"wb_{VOL}"] == 8 * MiB, "refused before extending, so a retry still zeroes"
    with pytest.raises(OperationError, match=f"volume v2: zeroing the new base.*{expected}"):
        store.create_base("v2", 8 * MiB // LB, zero=True)
    assert not store.base_exists("v2"), "an unzeroed base is not left behind"
    if reason:
        with pytest.raises(OperationError, match=f"volume {VOL}: cannot restore gid 9: a snapshot of LV "
                                                 f"{vg.name}/wb_{VOL} needs device-mapper"):
            store.restore(VOL, 9, [])
        assert sorted(lv_sizes(vg)) == [f"wb_{VOL}", f"wr_{VOL}_4"], "no snapshot, no tmp LV left"
    with pytest.raises(OperationError, match=f"no base LV {vg.name}/wb_nothing"):
        store.restore("nothing", 1, [])
