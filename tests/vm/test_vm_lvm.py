"""LVM for real: the lvm store, the archive agent on it and the LVM modules against device-mapper,
in a qemu guest.

This machine's kernel has no device-mapper, so the tests that need active LVs run in a guest
booted with Debian's kernel (tests/vm/vmguest.py): one boot for this module, with four scratch
disks. Each guest_*.py file is a pytest module that runs inside the guest on this checkout;
its output is shown when it fails. The archive agent runs in the guest on a port forwarded from
this machine's loopback, where the storage and proxy agents, the walb device and the controller
run as in the scenario tests.
"""

from __future__ import annotations

import os
import random
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import vmguest
from helpers import ROOT, free_port

sys.path.insert(0, str(ROOT / "tests" / "scenarios"))
import cluster as scenario  # noqa: E402  (tests/scenarios/cluster.py)

pytestmark = [pytest.mark.slow, pytest.mark.root]

MiB = 1 << 20
DISK_SIZE = 256 * MiB  # [bytes] each of /dev/vda … /dev/vdd in the guest (sparse files here)
GUEST_PYTEST_TIMEOUT = 900.0  # [s] for one guest_*.py module (Python runs about ten times slower there)
AGENT_START_TIMEOUT = 300.0  # [s] for the archive agents in the guest to answer (15 s of imports there, idle)
GUEST_JOB_TIMEOUT = 300.0  # [s] for a shell job in the guest
# [s] how long an agent or the controller waits for a silent peer when one end is in the guest, where
# one lvcreate takes about 10 s (the agents' default is walb-tools' 10 s).
GUEST_PEER_TIMEOUT = "120"
# The archive agents in the guest (role names of tests/scenarios/cluster.py): a0 on a thick VG
# (classic snapshots), a1 on a thin pool (thin snapshots), each VG on a scratch disk of its own.
GUEST_ARCHIVES = {"archive": ("wbarchthick", "/dev/vdc", None), "archive1": ("wbarchthin", "/dev/vdd", "pool")}


@pytest.fixture(scope="module")
def archive_ports() -> dict[str, int]:
    """A port of this machine's loopback per archive agent, forwarded to the same port in the guest."""
    return {role: free_port() for role in GUEST_ARCHIVES}


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, archive_ports: dict[str, int]) -> Iterator[vmguest.Guest]:
    reason = vmguest.unavailable()
    if reason is not None:
        pytest.skip(f"no test guest here: {reason}")
    with vmguest.booted_guest(tmp_path_factory.mktemp("guest"), [DISK_SIZE] * 4,
                              forwards=list(archive_ports.values())) as booted:
        yield booted


def guest_shell(guest: vmguest.Guest, script: str) -> str:
    """Run ``script`` in the guest; its output, or a failure with it."""
    result = guest.run(script, GUEST_JOB_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"in the guest: {script!r} exited {result.returncode}:\n{result.output}", pytrace=False)
    return result.output


def guest_pytest(guest: vmguest.Guest, module: str) -> None:
    """Run tests/vm/``module`` with pytest inside the guest; fail with its output unless all pass."""
    result = guest.python(["-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-ra", "-v", "--durations=10",
                           "--basetemp", f"/tmp/{Path(module).stem}", str(ROOT / "tests" / "vm" / module)],
                          GUEST_PYTEST_TIMEOUT, cwd=ROOT)
    summary = result.output.rstrip().splitlines()[-1] if result.output.strip() else "(no output)"
    if result.returncode != 0 or " passed" not in summary or "skipped" in summary:
        pytest.fail(f"{module} in the guest: exit {result.returncode}, {summary}\n{result.output[-20000:]}",
                    pytrace=False)


def test_the_guest_has_device_mapper_and_passes_exit_codes_back(guest: vmguest.Guest) -> None:
    result = guest.run("grep -w device-mapper /proc/misc && ls /dev/vda /dev/vdb && exit 7", 120)
    assert result.returncode == 7, result.output
    assert "device-mapper" in result.output and "/dev/vdb" in result.output


def test_lvm_store_on_active_lvs(guest: vmguest.Guest) -> None:
    guest_pytest(guest, "guest_store_lvm.py")


def test_lvm_modules_on_active_lvs(guest: vmguest.Guest) -> None:
    guest_pytest(guest, "guest_lvm_modules.py")


@dataclass
class GuestArchiveCluster(scenario.Cluster):
    """The scenario tests' backup group with its archives a0 and a1 in the guest, on lvm stores.

    Each archive listens on its port of every guest address: from this machine through the port
    forwarded from the same port of its loopback, from the other archive (a replication) on the
    guest's loopback. The cluster key reaches them through the guest's share.
    """

    restore_timeout: ClassVar[float] = GUEST_JOB_TIMEOUT

    guest: vmguest.Guest | None = None
    archive_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for kind in ("storage", "proxy"):
            self.tuning[kind] = [*self.tuning.get(kind, []), "--socket-timeout", GUEST_PEER_TIMEOUT]
        self.ports.update(self.archive_ports)
        self._write_layout()
        self.ctl.timeout = float(GUEST_PEER_TIMEOUT)
        assert self.guest is not None
        self.share = self.guest.workdir
        (self.share / "cluster.key").write_bytes(self.key.read_bytes())
        os.chmod(self.share / "cluster.key", 0o600)

    def start_all(self) -> None:
        """The archives in the guest (started together: each takes a while to import), then the
        proxy and the storage here."""
        for role in self.archive_ports:
            self._launch_in_guest(role)
        for role in self.archive_ports:
            self.wait_for_agent(role, AGENT_START_TIMEOUT)
        for role in ("proxy", "storage"):
            self.start(role)

    def _launch_in_guest(self, role: str) -> None:
        assert self.guest is not None
        vg, _, pool = GUEST_ARCHIVES[role]
        argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "walbops.cli.main", "agent", "archive",
                "--listen", "0.0.0.0", "--port", str(self.ports[role]), "--id", scenario.agent_id(role),
                "--base-dir", f"/tmp/{role}", "--store", f"lvm:{vg}/{pool}" if pool else f"lvm:{vg}",
                "--cluster-key-file", "/run/share/cluster.key", "--log-file", f"/run/share/{role}.log",
                "--shutdown-timeout", "10", "--socket-timeout", GUEST_PEER_TIMEOUT]
        guest_shell(self.guest, f"nohup {shlex.join(argv)} >/run/share/{role}.out 2>&1 </dev/null &\n"
                                f"echo $! >/run/share/{role}.pid\n")

    def log(self, role: str) -> str:
        """An agent's log; for one in the guest, with what it printed before it could log."""
        if role not in self.archive_ports:
            return super().log(role)
        return "".join(path.read_text(errors="replace") for path in (self.share / f"{role}.log",
                                                                     self.share / f"{role}.out") if path.exists())

    def stop_archives(self) -> None:
        """SIGTERM to the archive agents in the guest, waited for."""
        assert self.guest is not None
        for role in self.archive_ports:
            guest_shell(self.guest, f"pid=$(cat /run/share/{role}.pid); kill $pid\n"
                                    "while kill -0 $pid 2>/dev/null; do sleep 0.2; done\n")

    def image_sha1(self, path: str, size: int | None = None) -> str:
        """sha1 of the first ``size`` bytes (the volume's) of ``path`` in the guest: an LV is rounded
        up to extents."""
        assert self.guest is not None
        count = size or self.device_size
        return guest_shell(self.guest, f"head -c {count} {shlex.quote(path)} | sha1sum").split()[0]


def test_archive_agents_on_lvm_stores(guest: vmguest.Guest, archive_ports: dict[str, int], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive agent with ``--store lvm:VG`` (a0: classic snapshots) and ``lvm:VG/POOL`` (a1:
    thin snapshots) on active LVs: a full backup of an ext4 volume written into a0's base LV, a0
    replicating to a1, snapshots restored as LVs on both with the device's sha1, a restored ext4
    clean and mounted, del-restored, applies into both base LVs and restores from them."""
    monkeypatch.setenv("WALBOPS_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("WALBOPS_DEV_DIR", str(tmp_path / "dev"))
    for vg, disk, pool in GUEST_ARCHIVES.values():
        setup = f"lvm pvcreate --yes {disk} && lvm vgcreate {vg} {disk}"
        guest_shell(guest, setup + (f" && lvm lvcreate --yes --type thin-pool --size 160M --name {pool} {vg}"
                                    if pool else ""))
    (tmp_path / "group").mkdir()
    group = GuestArchiveCluster(tmp_path / "group", guest=guest, archive_ports=archive_ports)
    thick, thin = (vg for vg, _, _ in GUEST_ARCHIVES.values())

    def lvs(vg: str) -> list[str]:
        return sorted(guest_shell(guest, f"lvm lvs --noheadings -o lv_name {vg}").split())

    try:
        device = group.make_device(f"vmarch{os.getpid()}")
        subprocess.run(["mkfs.ext4", "-q", device], check=True)
        group.start_all()
        group.setup_volume()
        formatted = scenario.sha1_of_device(device)
        group.full_backup(timeout=GUEST_JOB_TIMEOUT)
        assert group.image_sha1(f"/dev/{thick}/wb_vol0") == formatted, "the full backup's base LV"

        mnt = tmp_path / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", device, str(mnt)], check=True)
        try:
            (mnt / "hello.txt").write_text("restored from an LV\n")
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        first, first_sha1 = group.snapshot_restorable(timeout=GUEST_JOB_TIMEOUT)
        assert group.ctl.replicate_once("a0", "vol0", "a1", timeout=GUEST_JOB_TIMEOUT) == first

        # On a1, the first snapshot restored as a thin snapshot of the base LV, with a read-only loop
        # device over it (docs/stores.md): the device's sha1; its ext4 clean and mounted there;
        # gone with del-restored.
        restored = group.ctl.restore("a1", "vol0", first, timeout=GUEST_JOB_TIMEOUT)
        assert restored.startswith("/dev/loop")
        assert lvs(thin) == sorted(["pool", "wb_vol0", f"wr_vol0_{first}"])
        assert group.image_sha1(restored) == group.image_sha1(f"/dev/{thin}/wr_vol0_{first}") == first_sha1
        shown = guest_shell(guest, f"e2fsck -fn {restored} && mkdir -p /mnt/r && mount -o ro {restored} /mnt/r "
                                   "&& cat /mnt/r/hello.txt; umount /mnt/r")
        assert "restored from an LV" in shown
        group.ctl.del_restored("a1", "vol0", first)
        assert lvs(thin) == ["pool", "wb_vol0"]

        # On a0, a later snapshot restored as a classic snapshot; then applied into the base LV,
        # and a restore from the applied base.
        scenario.write_random(device, random.Random(7), count=48)
        second, second_sha1 = group.snapshot_restorable(timeout=GUEST_JOB_TIMEOUT)
        assert group.restored_sha1("vol0", second) == second_sha1
        group.ctl.apply("a0", "vol0", second, timeout=GUEST_JOB_TIMEOUT)
        assert group.image_sha1(f"/dev/{thick}/wb_vol0") == second_sha1
        assert first not in group.ctl.get_restorable("a0", "vol0", include_implicit=True)
        scenario.write_random(device, random.Random(8), count=16)
        third, third_sha1 = group.snapshot_restorable(timeout=GUEST_JOB_TIMEOUT)
        assert group.restored_sha1("vol0", third) == third_sha1
        assert lvs(thick) == ["wb_vol0"]

        # a1 catches up by replication and applies into its thin base LV too.
        assert group.ctl.replicate_once("a0", "vol0", "a1", timeout=GUEST_JOB_TIMEOUT) == third
        group.ctl.apply("a1", "vol0", third, timeout=GUEST_JOB_TIMEOUT)
        assert group.image_sha1(f"/dev/{thin}/wb_vol0") == third_sha1
        assert group.restored_sha1("vol0", third, archive="a1") == third_sha1
        assert lvs(thin) == ["pool", "wb_vol0"]
        group.stop_archives()
    finally:
        group.close()
