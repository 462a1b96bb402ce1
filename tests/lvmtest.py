"""Real lvm2 on loop devices, private to a test (importable as ``lvmtest``).

lvm2 reads a private lvm.conf, found through ``LVM_SYSTEM_DIR``, whose device filter
accepts only the test's loop devices; it keeps its locks in the test's directory, writes
no hints, backups or archives, and never activates. So the host's VGs, /etc/lvm and
/run/lvm are not touched. This kernel has no device-mapper: LVs are never active, and
only metadata operations (create, extend, reduce, rename, remove) run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1 << 20
EXTENT = 4 * MiB  # [bytes] lvm2's default extent size
DISK_SIZE = 64 * MiB  # [bytes] 15 extents once lvm2 has its metadata area

LVM_CONF = """\
devices {{
    scan = [ "/dev" ]
    filter = [ {accepted}"r|.*|" ]
    use_devicesfile = 0
    obtain_device_list_from_udev = 0
    hints = "none"
}}
global {{
    activation = 0
    locking_dir = "{root}/lock"
}}
activation {{
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}}
backup {{
    backup = 0
    archive = 0
}}
"""


class PrivateLvm:
    """lvm2 that sees only the loop devices :meth:`add_disk` makes; configured in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {"LVM_SYSTEM_DIR": str(root / "lvm")}
        self.disks: list[tuple[str, Path]] = []  # loop device, its image
        (root / "lvm").mkdir()
        (root / "lock").mkdir()
        self._write_conf()

    def _write_conf(self) -> None:
        accepted = "".join(f'"a|^{loop}$|", ' for loop, _ in self.disks)
        (self.root / "lvm" / "lvm.conf").write_text(LVM_CONF.format(accepted=accepted, root=self.root))

    def add_disk(self, size: int = DISK_SIZE) -> str:
        """A loop device over a new sparse image, added to the filter; returns the device."""
        image = self.root / f"disk{len(self.disks)}.img"
        with open(image, "wb") as stream:
            stream.truncate(size)
        loop = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                              check=True).stdout.strip()
        self.disks.append((loop, image))
        self._write_conf()
        return loop

    def lvm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["lvm", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", **self.env})
        if check and result.returncode != 0:
            raise AssertionError(f"lvm {' '.join(args)}: {result.stderr}")
        return result

    def make_vg(self, name: str, *devices: str) -> None:
        self.lvm("pvcreate", "--yes", *devices)
        self.lvm("vgcreate", name, *devices)

    def vg_names(self) -> list[str]:
        return self.lvm("vgs", "--noheadings", "--options", "vg_name").stdout.split()

    def pv_names(self, vg: str) -> list[str]:
        output = self.lvm("pvs", "--noheadings", "--options", "pv_name", "--select", f"vg_name={vg}").stdout
        return sorted(output.split())

    def lv_sizes(self, vg: str) -> dict[str, int]:
        """Size in bytes of each visible LV of ``vg``."""
        output = self.lvm("lvs", "--noheadings", "--units", "b", "--nosuffix", "--options", "lv_name,lv_size",
                          vg).stdout
        return {name: int(size) for name, size in (line.split() for line in output.splitlines() if line.strip())}

    def plant_thin_pool(self, vg: str, pool: str, pool_extents: int, thin: dict[str, int]) -> None:
        """Write a thin pool and its thin volumes (name: extents) into the metadata of ``vg``.

        lvm2 makes thin pools and thin volumes only through device-mapper, which this kernel
        lacks, so they are written as lvm2 would have recorded them, and restored with
        vgcfgrestore; what lvm2 then does to them (read, extend a thin volume, remove the
        pool) is real. ``vg`` must be on one PV and hold no LVs.
        """
        backup = self.root / f"{vg}.vg"
        self.lvm("vgcfgbackup", "--file", str(backup), vg)
        text = backup.read_text()
        if "logical_volumes" in text:
            raise AssertionError(f"plant_thin_pool: {vg} holds LVs already")
        sections = [
            _lv_section(pool, True, f'type = "thin-pool"\nmetadata = "{pool}_tmeta"\npool = "{pool}_tdata"\n'
                                    f'transaction_id = {len(thin)}\nchunk_size = 128\ndiscards = "passdown"\n'
                                    'zero_new_blocks = 1', pool_extents),
            _lv_section(f"{pool}_tmeta", False, 'type = "striped"\nstripe_count = 1\nstripes = ["pv0", 0]', 1),
            _lv_section(f"{pool}_tdata", False, 'type = "striped"\nstripe_count = 1\nstripes = ["pv0", 1]',
                        pool_extents),
            *(_lv_section(name, True, f'type = "thin"\nthin_pool = "{pool}"\ntransaction_id = {number}\n'
                                      f'device_id = {number + 1}', extents)
              for number, (name, extents) in enumerate(thin.items())),
        ]
        end = text.rindex("\n}")  # the VG's closing brace
        text = text[:end] + "\nlogical_volumes {\n" + "\n".join(sections) + "\n}" + text[end:]
        text = re.sub(r"seqno = (\d+)", lambda match: f"seqno = {int(match[1]) + 1}", text, count=1)
        backup.write_text(text)
        self.lvm("vgcfgrestore", "--force", "--file", str(backup), vg)  # --force: it has thin volumes
        backup.unlink()

    def close(self) -> None:
        """Remove every VG and PV label on the disks, detach them and delete their images."""
        for vg in self.vg_names():
            self.lvm("vgremove", "--yes", "--force", vg, check=False)
        for loop, image in self.disks:
            # -ff: also a PV a VG still names (a planted thin volume lvm2 cannot remove without device-mapper).
            self.lvm("pvremove", "--yes", "--force", "--force", loop, check=False)
            subprocess.run(["losetup", "--detach", loop], capture_output=True)
            image.unlink(missing_ok=True)
        self.disks.clear()


def _lv_section(name: str, visible: bool, segment: str, extents: int) -> str:
    lv_id = uuid.uuid4().hex
    lv_id = "-".join(lv_id[start:end] for start, end in ((0, 6), (6, 10), (10, 14), (14, 18), (18, 22), (22, 26),
                                                         (26, 32)))
    status = '["READ", "WRITE", "VISIBLE"]' if visible else '["READ", "WRITE"]'
    return (f'{name} {{\nid = "{lv_id}"\nstatus = {status}\nflags = []\nsegment_count = 1\n'
            f"segment1 {{\nstart_extent = 0\nextent_count = {extents}\n{segment}\n}}\n}}")


@contextlib.contextmanager
def private_lvm(root: Path) -> Iterator[PrivateLvm]:
    """A :class:`PrivateLvm` in ``root``; everything it made is removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("needs root (loop devices)")
    if shutil.which("lvm") is None or shutil.which("losetup") is None:
        pytest.fail("missing lvm or losetup: run scripts/bootstrap (lvm2, util-linux)")
    lvm = PrivateLvm(root)
    try:
        yield lvm
    finally:
        lvm.close()
