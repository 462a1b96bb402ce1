"""LvmStore against a fake lvm2 whose LVs are files: the command lines and the restore flow.

The real lvm2 runs in tests/integration/test_store_lvm.py (metadata only: this kernel has no
device-mapper) and, with active LVs, in a qemu guest (tests/vm/guest_store_lvm.py); this file
checks the command lines and the failure branches the real runs cannot provoke.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import walbops.store.lvmstore as lvmstore
from walbops.diff.engine import DiscardPolicy
from walbops.diff.io import DiffIo
from walbops.diff.sorted_file import SortedDiffWriter
from walbops.errors import OperationError, UsageError
from walbops.lvm import Lvm
from walbops.store import CloneMethod, open_store
from walbops.store.lvmstore import LvmStore

LB = 512
EXTENT = 4 << 20  # [bytes] lvm2's default extent size
VOL = "v1"


class FakeLvm(Lvm):
    """lvm2 emulated on files in ``root``: one file per LV, sizes rounded to extents."""

    def __init__(self, root: Path, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.root = root
        self.calls: list[list[str]] = []  # whole command lines
        self.changes: list[list[str]] = []  # lvm command and arguments of all but lvs
        self.meta: dict[str, dict[str, str]] = {}  # name -> pool, origin
        self.fail: dict[str, str] = {}  # lvm command -> stderr to fail it with
        self.active: set[str] = set()  # LVs with a device: created, classic snapshots, lvchange -ay

    def path(self, lv: str) -> str:
        return str(self.root / lv)

    def _execute(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        config_at = argv.index("--config") if "--config" in argv else -1
        args = [arg for index, arg in enumerate(argv) if index not in (config_at, config_at + 1)]
        args = args[args.index("lvm") + 1:]
        command, rest = args[0], args[1:]
        if command != "lvs":
            self.changes.append(args)
        if command in self.fail:
            return subprocess.CompletedProcess(argv, 5, "", "  WARNING: noise\n  " + self.fail[command] + "\n")
        stdout = getattr(self, "_" + command)(rest) or ""
        return subprocess.CompletedProcess(argv, 0, stdout, "")

    @staticmethod
    def _option(args: list[str], name: str) -> str | None:
        return args[args.index(name) + 1] if name in args else None

    def _size(self, text: str) -> int:
        assert text.endswith("B")
        return math.ceil(int(text[:-1]) / EXTENT) * EXTENT

    def _lvs(self, args):
        rows = [{"lv_name": name, "lv_size": str(os.path.getsize(self.root / name)), "lv_attr": "-wi-a-----",
                 "pool_lv": self.meta[name]["pool"], "origin": self.meta[name]["origin"]}
                for name in sorted(os.listdir(self.root))]
        return json.dumps({"report": [{"lv": rows}]})

    def _lvcreate(self, args):
        name = self._option(args, "--name")
        assert name not in self.meta, "lvcreate of an existing LV"
        if "--snapshot" in args:
            origin = args[-1].split("/")[1]
            shutil.copyfile(self.root / origin, self.root / name)
            self.meta[name] = {"pool": self.meta[origin]["pool"], "origin": origin}
            if not self.meta[origin]["pool"]:  # a thin snapshot is made inactive, a classic one active
                self.active.add(name)
            return
        size = self._option(args, "--size") or self._option(args, "--virtualsize")
        with open(self.root / name, "wb") as stream:
            stream.truncate(self._size(size))
        self.meta[name] = {"pool": self._option(args, "--thinpool") or "", "origin": ""}
        self.active.add(name)

    def _lvextend(self, args):
        os.truncate(self.root / args[-1].split("/")[1], self._size(self._option(args, "--size")))

    def _lvrename(self, args):
        _vg, old, new = args
        os.rename(self.root / old, self.root / new)
        self.meta[new] = self.meta.pop(old)
        if old in self.active:
            self.active.discard(old)
            self.active.add(new)

    def _lvremove(self, args):
        name = args[-1].split("/")[1]
        os.unlink(self.root / name)
        del self.meta[name]
        self.active.discard(name)

    def _lvchange(self, args):
        assert args[:4] == ["--yes", "--activate", "y", "--ignoreactivationskip"]
        self.active.add(args[-1].split("/")[1])


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeLvm:
    """A store whose lvm2 is FakeLvm and whose kernel has device-mapper."""
    root = tmp_path / "lvs"
    root.mkdir()
    monkeypatch.setattr(lvmstore, "device_mapper_missing", lambda: None)
    fake = FakeLvm(root, "vg0", config="global{activation=1}", command_prefix=["nice"], env={"X": "1"})
    monkeypatch.setattr(lvmstore, "is_block_device", lambda path: Path(path).name in fake.active)
    return fake


def store_on(fake: FakeLvm, thinpool: str | None = None) -> LvmStore:
    store = LvmStore("vg0", thinpool)
    store.lvm = fake
    return store


def write_diff(path: Path, ios: list[DiffIo]) -> str:
    with open(path, "wb") as out:
        writer = SortedDiffWriter(out, bytes(16))
        for io in ios:
            writer.write(io)
        writer.close()
    return str(path)


def test_commands_carry_prefix_config_and_env(monkeypatch):
    seen = {}

    def run(argv, **kwargs):
        seen.update(argv=argv, env=kwargs["env"])
        return subprocess.CompletedProcess(argv, 0, '{"report": [{"lv": []}]}', "")

    monkeypatch.setattr(subprocess, "run", run)
    lvm = Lvm("vg0", config="global{activation=0}", command_prefix=["sudo", "-n"], env={"LVM_SYSTEM_DIR": "/x"})
    assert lvm.lvs() == {}
    assert seen["argv"][:6] == ["sudo", "-n", "lvm", "lvs", "--config", "global{activation=0}"]
    assert seen["argv"][-1] == "vg0"
    assert seen["env"]["LVM_SYSTEM_DIR"] == "/x" and seen["env"]["LVM_SUPPRESS_FD_WARNINGS"] == "1"


def test_names_are_validated():
    with pytest.raises(UsageError, match="volume group '-vg'"):
        LvmStore("-vg")
    with pytest.raises(UsageError, match="thin pool 'a/b'"):
        LvmStore("vg", thinpool="a/b")
    with pytest.raises(UsageError, match=r"\[0-9A-Za-z-\]"):
        LvmStore("vg").base_path("a_b")
    assert LvmStore("vg").restored_path(VOL, 3) == "/dev/vg/wr_v1_3"
    assert isinstance(open_store("lvm", vg="vg", thinpool="pool"), LvmStore)


def test_thick_and_thin_bases(fake):
    thick = store_on(fake)
    assert thick.create_base(VOL, 1000) == fake.path("wb_v1")
    assert fake.changes[-1] == ["lvcreate", "--yes", "--name", "wb_v1", "--size", f"{1000 * LB}B", "vg0"]
    assert fake.calls[-1][:2] == ["nice", "lvm"] and "global{activation=1}" in fake.calls[-1]
    assert thick.base_size_lb(VOL) == EXTENT // LB, "rounded up to a whole extent"
    with pytest.raises(OperationError, match="volume v1: a base LV vg0/wb_v1 exists already"):
        thick.create_base(VOL, 1000)
    thin = store_on(fake, "pool")
    thin.create_base("v2", 1000)
    assert fake.changes[-1] == ["lvcreate", "--yes", "--name", "wb_v2", "--virtualsize", f"{1000 * LB}B",
                                "--thinpool", "pool", "vg0"]
    assert thin.volumes() == ["v1", "v2"]


def test_grow_zeroes_the_new_range_of_a_thick_base(fake):
    store = store_on(fake)
    store.create_base(VOL, 8)
    with open(fake.path("wb_v1"), "r+b") as stream:  # stale data past the old end, as a reused extent holds
        stream.write(b"\x01" * EXTENT)
    assert store.grow_base(VOL, 8) == EXTENT // LB, "no shrink, no lvextend"
    assert not any(change[0] == "lvextend" for change in fake.changes)
    os.truncate(fake.path("wb_v1"), EXTENT)
    with open(fake.path("wb_v1"), "ab") as stream:  # what an lvextend onto used extents may show
        stream.write(b"\x02" * EXTENT)
    os.truncate(fake.path("wb_v1"), EXTENT)
    assert store.grow_base(VOL, EXTENT // LB + 1, zero_new=True) == 2 * EXTENT // LB
    data = Path(fake.path("wb_v1")).read_bytes()
    assert data[:EXTENT] == b"\x01" * EXTENT and data[EXTENT:] == bytes(EXTENT)


@pytest.mark.parametrize("thinpool", [None, "pool"])
def test_restore_snapshots_applies_and_renames(fake, tmp_path, thinpool):
    store = store_on(fake, thinpool)
    store.create_base(VOL, 64)
    with store.open_base(VOL) as target:
        os.pwrite(target.fd, b"\x03" * 64 * LB, 0)
    diff = write_diff(tmp_path / "d.wdiff", [DiffIo.normal(2, b"\x07" * 2 * LB)])
    restored = store.restore(VOL, 5, [diff], DiscardPolicy.IGNORE)
    snapshot = next(change for change in fake.changes if "--snapshot" in change)
    if thinpool:
        assert restored.clone == CloneMethod.LVM_THIN_SNAPSHOT and "--setactivationskip" in snapshot
        assert "--size" not in snapshot
    else:
        assert restored.clone == CloneMethod.LVM_SNAPSHOT
        cow = int(snapshot[snapshot.index("--size") + 1][:-1])
        assert cow == math.ceil(EXTENT * 1.2 / LB) * LB
    assert snapshot[-3:] == ["--name", "wr_v1_5_tmp", "vg0/wb_v1"]
    # A thin snapshot is activated to write into it; a classic one is active once made.
    activation = [["lvchange", "--yes", "--activate", "y", "--ignoreactivationskip", "vg0/wr_v1_5_tmp"]]
    assert fake.changes[-1 - bool(thinpool):] == [*activation * bool(thinpool),
                                                  ["lvrename", "vg0", "wr_v1_5_tmp", "wr_v1_5"]]
    assert restored.path == fake.path("wr_v1_5") and store.restored(VOL) == [5]
    data = Path(restored.path).read_bytes()
    assert data[:2 * LB] == b"\x03" * 2 * LB and data[2 * LB:4 * LB] == b"\x07" * 2 * LB
    assert Path(fake.path("wb_v1")).read_bytes()[2 * LB:4 * LB] == b"\x03" * 2 * LB
    with pytest.raises(OperationError, match="gid 5 is restored already as LV vg0/wr_v1_5"):
        store.restore(VOL, 5, [])


def test_failed_restore_removes_the_tmp_lv(fake, tmp_path, monkeypatch):
    store = store_on(fake)
    store.create_base(VOL, 64)

    def crash(paths, target):
        raise OSError(5, "simulated IO error")

    monkeypatch.setattr(lvmstore, "apply_diffs", crash)
    with pytest.raises(OSError, match="simulated"):
        store.restore(VOL, 5, [])
    assert sorted(fake.meta) == ["wb_v1"]


def test_stale_tmp_is_replaced_and_cleaned(fake):
    store = store_on(fake)
    store.create_base(VOL, 64)
    fake.create("wr_v1_5_tmp", EXTENT)
    fake.create("wr_v1_6_tmp", EXTENT)
    assert store.restored(VOL) == []
    store.restore(VOL, 5, [])
    assert store.restored(VOL) == [5]
    assert store.cleanup(VOL) == ["vg0/wr_v1_6_tmp"]
    assert sorted(fake.meta) == ["wb_v1", "wr_v1_5"]


def test_remove_volume_removes_snapshots_before_the_origin(fake):
    store = store_on(fake)
    store.create_base(VOL, 64)
    store.restore(VOL, 5, [])
    store.remove_volume(VOL)
    removed = [change[-1] for change in fake.changes if change[0] == "lvremove"]
    assert removed == ["vg0/wr_v1_5", "vg0/wb_v1"]
    assert fake.meta == {}


def test_without_device_mapper_data_io_is_refused_before_any_change(fake, tmp_path, monkeypatch):
    store = store_on(fake)
    store.create_base(VOL, 64)
    monkeypatch.setattr(lvmstore, "device_mapper_missing", lambda: "this kernel has no device-mapper (test)")
    before = len(fake.changes)
    with pytest.raises(OperationError, match="volume v1: cannot restore gid 5: .*needs device-mapper"):
        store.restore(VOL, 5, [])
    assert fake.changes[before:] == [], "nothing created, nothing activated"
    refused = "volume v1: opening the base: LV vg0/wb_v1 must be active as .* kernel with device-mapper"
    with pytest.raises(OperationError, match=refused), store.open_base(VOL):
        pass


def test_lvm_failures_carry_lvm2s_message(fake):
    store = store_on(fake)
    fake.fail["lvcreate"] = "Volume group \"vg0\" has insufficient free space (3 extents): 5 required."
    with pytest.raises(OperationError, match="lvcreate .*insufficient free space") as caught:
        store.create_base(VOL, 64)
    assert "WARNING" not in str(caught.value)


@pytest.mark.parametrize("thinpool", [None, "pool"])
def test_apply_to_base_verifies_then_records_then_writes(fake, tmp_path, thinpool):
    """The archive's apply on the lvm store: every diff verified before ``on_verified`` (where the
    archive records its applying base state), then the merged IOs written into the base LV."""
    store = store_on(fake, thinpool)
    store.create_base(VOL, 64)
    older = write_diff(tmp_path / "1.wdiff", [DiffIo.normal(2, b"\x01" * 4 * LB)])
    newer = write_diff(tmp_path / "2.wdiff", [DiffIo.normal(4, b"\x02" * 2 * LB)])
    events = []
    store.apply_to_base(VOL, [older, newer], DiscardPolicy.ZERO, on_verified=lambda: events.append("recorded"),
                        on_io=lambda: events.append("io"))
    assert events == ["recorded", "io", "io"]
    data = Path(fake.path("wb_v1")).read_bytes()
    assert data[2 * LB:4 * LB] == b"\x01" * 2 * LB and data[4 * LB:6 * LB] == b"\x02" * 2 * LB
    corrupt = bytearray(Path(newer).read_bytes())
    corrupt[-600] ^= 1  # inside the record's data
    Path(newer).write_bytes(bytes(corrupt))
    events.clear()
    with pytest.raises(OperationError, match="cannot apply to the base"):
        store.apply_to_base(VOL, [older, newer], on_verified=lambda: events.append("recorded"))
    assert events == []
