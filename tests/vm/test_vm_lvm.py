"""LVM for real: the lvm store and the LVM modules against device-mapper, in a qemu guest.

This machine's kernel has no device-mapper, so the tests that need active LVs run in a guest
booted with Debian's kernel (tests/vm/vmguest.py): one boot for this module, with two scratch
disks. Each guest_*.py file is a pytest module that runs inside the guest on this checkout;
its output is shown when it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import vmguest
from helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.root]

MiB = 1 << 20
DISK_SIZE = 256 * MiB  # [bytes] each of /dev/vda and /dev/vdb in the guest (sparse files here)
GUEST_PYTEST_TIMEOUT = 900.0  # [s] for one guest_*.py module (Python runs about ten times slower there)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vmguest.Guest]:
    reason = vmguest.unavailable()
    if reason is not None:
        pytest.skip(f"no test guest here: {reason}")
    with vmguest.booted_guest(tmp_path_factory.mktemp("guest"), [DISK_SIZE, DISK_SIZE]) as booted:
        yield booted


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
