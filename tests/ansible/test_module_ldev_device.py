"""walb_ldev and walb_device on real devices: format once, run once, refuse, stop, clean up after a dead daemon."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import ROOT
from modules import WALBOPS_BIN, ModuleFailed, run_module

from walbops import loop
from walbops.converge.ldev import formatted_super
from walbops.device.registry import DevicePaths, pid_alive, read_info

sys.path.insert(0, str(ROOT / "tests" / "integration"))
from devices import can_run_devices, make_files  # noqa: E402

MiB = 1 << 20
_names = itertools.count()


@dataclass
class Leftovers:
    """What a test made that must go, whatever happened: mounts, then devices, then loop devices."""

    mounts: list[Path] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    loop_files: list[Path] = field(default_factory=list)

    def device_name(self) -> str:
        name = f"m{os.getpid()}x{next(_names)}"
        self.devices.append(name)
        return name

    def attach(self, image: Path) -> str:
        self.loop_files.append(image)
        return loop.attach(str(image), read_only=False)

    def mount(self, device: str, where: Path) -> None:
        where.mkdir(exist_ok=True)
        self.mounts.append(where)
        subprocess.run(["mount", device, str(where)], check=True)

    def clean(self) -> None:
        for where in self.mounts:
            while os.path.ismount(where):
                if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", str(where)], capture_output=True)
        for name in self.devices:
            # --force also stops a mounted device and cleans up after a dead daemon.
            subprocess.run([WALBOPS_BIN, "wdev", "delete", name, "--force"], capture_output=True)
        loop.detach(*(str(image) for image in self.loop_files))


@pytest.fixture
def leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Leftovers]:
    """Private runtime and /dev link directories (the walbops commands inherit them), emptied afterwards."""
    reason = can_run_devices()
    if reason:
        pytest.fail(f"walb devices cannot run here: {reason}")
    monkeypatch.setenv("WALBOPS_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("WALBOPS_DEV_DIR", str(tmp_path / "dev"))
    made = Leftovers()
    try:
        yield made
    finally:
        made.clean()


def ldev_args(ldev: Path | str, ddev: Path | str, **options: object) -> dict[str, object]:
    return {"ldev": str(ldev), "ddev": str(ddev), **options}


def device_args(name: str, ldev: Path | str, ddev: Path | str, **options: object) -> dict[str, object]:
    return {"name": name, "ldev": str(ldev), "ddev": str(ddev), **options}


def test_ldev_is_formatted_once_and_again_only_with_force(tmp_path: Path) -> None:
    ldev, ddev = make_files(tmp_path, 8 * MiB, 8 * MiB)
    predicted = run_module("walb_ldev", ldev_args(ldev, ddev, name="vol0"), check=True)
    assert predicted["changed"] and predicted["uuid"] is None and predicted["pbs"] == 512
    assert predicted["diff"]["before"]["formatted"] is False and predicted["diff"]["after"]["formatted"] is True
    assert formatted_super(str(ldev)) is None
    formatted = run_module("walb_ldev", ldev_args(ldev, ddev, name="vol0"))
    assert formatted["changed"] and len(formatted["uuid"]) == 32 and formatted["name"] == "vol0"
    assert formatted["pbs"] == 512 and formatted["ring_buffer_size"] > 0
    assert formatted_super(str(ldev)).uuid_hex == formatted["uuid"]
    for check in (False, True):
        again = run_module("walb_ldev", ldev_args(ldev, ddev, name="other", pbs=512), check=check)
        assert not again["changed"] and again["uuid"] == formatted["uuid"] and again["name"] == "vol0"
        with pytest.raises(ModuleFailed, match="formatted with pbs 512, not 4096; force: true"):
            run_module("walb_ldev", ldev_args(ldev, ddev, pbs=4096), check=check)
    forced_check = run_module("walb_ldev", ldev_args(ldev, ddev, pbs=4096, force=True), check=True)
    assert forced_check["changed"] and forced_check["diff"]["after"]["pbs"] == 4096
    assert formatted_super(str(ldev)).uuid_hex == formatted["uuid"]
    forced = run_module("walb_ldev", ldev_args(ldev, ddev, pbs=4096, force=True))
    assert forced["changed"] and forced["pbs"] == 4096 and forced["uuid"] != formatted["uuid"]
    assert forced["diff"]["before"]["uuid"] == formatted["uuid"]
    with pytest.raises(ModuleFailed, match="missing.img: no such device or file"):
        run_module("walb_ldev", ldev_args(ldev, tmp_path / "missing.img"))


def test_device_runs_once_over_the_same_devices(tmp_path: Path, leftovers: Leftovers) -> None:
    name = leftovers.device_name()
    ldev_image, ddev = make_files(tmp_path, 16 * MiB, 16 * MiB)
    ldev = leftovers.attach(ldev_image)  # a block device, reached below by another path too
    with pytest.raises(ModuleFailed, match="holds no walbops/WalB super sector; format it first with walb_ldev"):
        run_module("walb_device", device_args(name, ldev, ddev))
    run_module("walb_ldev", ldev_args(ldev, ddev, name=name))

    predicted = run_module("walb_device", device_args(name, ldev, ddev), check=True)
    link = DevicePaths(name).link
    assert predicted["changed"] and predicted["path"] == link and "lsids" not in predicted
    assert read_info(name) is None and not os.path.lexists(link)
    created = run_module("walb_device", device_args(name, ldev, ddev))
    assert created["changed"] and created["path"] == link and os.path.realpath(link).startswith("/dev/loop")
    assert created["lsids"]["latest"] == 0 and created["log_usage_pb"] == 0 and created["log_capacity_pb"] > 0
    assert created["diff"] == {"before": {"name": name, "running": False, "ldev": None, "ddev": None, "stale": False},
                               "after": {"name": name, "running": True, "ldev": ldev, "ddev": str(ddev),
                                         "stale": False}}
    other_path = tmp_path / "ldev-link"
    other_path.symlink_to(ldev)
    for check in (False, True):
        again = run_module("walb_device", device_args(name, other_path, ddev), check=check)
        assert not again["changed"] and again["pid"] == created["pid"]

    with pytest.raises(ModuleFailed, match=f"'{name}' runs over ldev {ldev} and ddev {ddev}, not .*; remove it first "
                                           "with state=absent"):
        run_module("walb_device", device_args(name, ldev, ldev_image))
    with pytest.raises(ModuleFailed, match=f"in use by the running walb device '{name}'; remove it first with "
                                           "walb_device state=absent"):
        run_module("walb_ldev", ldev_args(ldev, ddev, force=True))
    with pytest.raises(ModuleFailed, match="overflow overwrite, not error; the policy is set at creation"):
        run_module("walb_device", device_args(name, ldev, ddev, overflow="error"))
    interval = run_module("walb_device", device_args(name, ldev, ddev, checkpoint_interval_ms=5000))
    assert interval["changed"] and interval["checkpoint_interval_ms"] == 5000
    assert interval["diff"]["before"]["checkpoint_interval_ms"] == 10000
    assert not run_module("walb_device", device_args(name, ldev, ddev, checkpoint_interval_ms=5000))["changed"]

    assert run_module("walb_device", {"name": name, "state": "absent"}, check=True)["changed"]
    assert read_info(name) is not None
    removed = run_module("walb_device", {"name": name, "state": "absent"})
    assert removed["changed"] and removed["path"] is None and removed["ldev"] == ldev
    assert read_info(name) is None and not os.path.lexists(link) and not pid_alive(created["pid"])
    assert not run_module("walb_device", {"name": name, "state": "absent"})["changed"]
    with pytest.raises(ModuleFailed, match="state is present but all of the following are missing: ldev, ddev"):
        run_module("walb_device", {"name": name})


def test_absent_refuses_a_mounted_device_unless_forced(tmp_path: Path, leftovers: Leftovers) -> None:
    name = leftovers.device_name()
    ldev, ddev = make_files(tmp_path, 16 * MiB, 16 * MiB)
    run_module("walb_ldev", ldev_args(ldev, ddev))
    path = run_module("walb_device", device_args(name, ldev, ddev))["path"]
    subprocess.run(["mkfs.ext4", "-q", path], check=True)
    where = tmp_path / "mnt"
    leftovers.mount(path, where)
    for check in (True, False):
        with pytest.raises(ModuleFailed, match=f"is mounted at {where}; unmount it first, or force: true"):
            run_module("walb_device", {"name": name, "state": "absent"}, check=check)
    pid = read_info(name)["pid"]
    forced = run_module("walb_device", {"name": name, "state": "absent", "force": True})
    assert forced["changed"] and read_info(name) is None and not pid_alive(pid)


def test_a_dead_daemon_counts_as_absent(tmp_path: Path, leftovers: Leftovers) -> None:
    name = leftovers.device_name()
    ldev, ddev = make_files(tmp_path, 16 * MiB, 16 * MiB)
    run_module("walb_ldev", ldev_args(ldev, ddev))
    first = run_module("walb_device", device_args(name, ldev, ddev))
    kill(first["pid"])
    restarted = run_module("walb_device", device_args(name, ldev, ddev))
    assert restarted["changed"] and restarted["pid"] != first["pid"]
    assert restarted["diff"]["before"]["stale"] is True
    kill(restarted["pid"])
    predicted = run_module("walb_device", {"name": name, "state": "absent"}, check=True)
    assert predicted["changed"] and predicted["cleared_stale"] and os.path.lexists(DevicePaths(name).link)
    cleared = run_module("walb_device", {"name": name, "state": "absent"})
    assert cleared["changed"] and cleared["cleared_stale"] and cleared["diff"]["before"]["stale"] is True
    assert not os.path.lexists(DevicePaths(name).link) and not os.path.exists(DevicePaths(name).info)
    assert not loop.attachments(DevicePaths(name).volume)
    assert not run_module("walb_device", {"name": name, "state": "absent"})["changed"]


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"device daemon {pid} survived SIGKILL"
        time.sleep(0.02)
