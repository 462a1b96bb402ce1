"""lvm2 on one volume group: the commands the ``lvm`` archive store and the LVM modules
(``walbops ensure vg|lv``, walbops/converge/lvm.py) run, and the names lvm2 accepts.

Apart from the store so that the modules' short commands need not import the store's diff
engine (numpy and lz4, about 0.5 s of each command's start).
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import OperationError, UsageError

# VG and LV names lvm2 accepts (lvm(8) "VALID NAMES"); 127 is NAME_LEN - 1.
_LVM_NAME_RE = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}")


def check_lvm_name(name: str, what: str) -> str:
    if not isinstance(name, str) or _LVM_NAME_RE.fullmatch(name) is None or name in (".", ".."):
        raise UsageError(f"{what} {name!r} is not a valid LVM name ([A-Za-z0-9+_.-], not starting with '-')")
    return name


def device_mapper_missing() -> str | None:
    """Why this kernel cannot activate LVs, or None if device-mapper answers.

    Opening /dev/mapper/control is what lvm2 does first; on a kernel with dm_mod as a
    module the open also loads it.
    """
    try:
        fd = os.open("/dev/mapper/control", os.O_RDWR)
    except FileNotFoundError:
        try:
            with open("/proc/misc") as stream:
                if any(line.split()[1:] == ["device-mapper"] for line in stream):
                    return None  # the driver is there; lvm2 creates the node itself
        except OSError:
            pass
        return "this kernel has no device-mapper (no /dev/mapper/control, none in /proc/misc)"
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            return f"this kernel has no device-mapper (/dev/mapper/control: {exc.strerror})"
        return f"device-mapper cannot be used (/dev/mapper/control: {exc.strerror})"
    os.close(fd)
    return None


@dataclass(frozen=True)
class LvInfo:
    """One row of ``lvs``."""

    name: str
    size: int  # [bytes]
    attr: str  # lv_attr, e.g. "-wi-a-----" ("X" in the state column when activation is off)
    pool: str  # thin pool, "" for a thick LV
    origin: str  # origin of a snapshot, ""

    @property
    def is_thin(self) -> bool:
        return bool(self.pool)

    @property
    def is_active(self) -> bool:
        return self.attr[4:5] == "a"  # lv_attr's fifth character: the state

    @property
    def is_open(self) -> bool:
        return self.attr[5:6] == "o"  # the sixth: open (mounted, in use)


class Lvm:
    """lvm2 commands on one volume group, with the configuration given at construction.

    Args:
        vg: the volume group.
        config: an ``--config`` override passed to every command, e.g.
            ``'global{activation=0}'``.
        command_prefix: prepended to every command, e.g. ``["sudo"]`` or ``["nsenter", ...]``.
        env: extra environment, e.g. ``{"LVM_SYSTEM_DIR": "/etc/walbops/lvm"}``.
    """

    def __init__(self, vg: str, config: str | None = None, command_prefix: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.vg = check_lvm_name(vg, "volume group")
        self.config = config
        self.command_prefix = list(command_prefix)
        self.env = dict(env or {})

    def argv(self, command: str, *args: str) -> list[str]:
        config = ["--config", self.config] if self.config else []
        return [*self.command_prefix, "lvm", command, *config, *args]

    def _execute(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        # lvm2 warns about every inherited fd; the warning is noise in an agent.
        env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", **self.env}
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise OperationError(f"{argv[0]}: command not found (install lvm2)") from None

    def run(self, command: str, *args: str) -> str:
        """Run ``lvm <command> <args>``; a failure is an OperationError with lvm2's message."""
        argv = self.argv(command, *args)
        result = self._execute(argv)
        if result.returncode != 0:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            errors = [line for line in lines if not line.startswith("WARNING:")] or lines
            raise OperationError(f"{' '.join(argv)}: {'; '.join(errors) or f'exit {result.returncode}'}")
        return result.stdout

    def path(self, lv: str) -> str:
        """The LV's device node (present only while it is active)."""
        return f"/dev/{self.vg}/{lv}"

    def lvs(self) -> dict[str, LvInfo]:
        """The LVs of the VG by name."""
        output = self.run("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                          "--options", "lv_name,lv_size,lv_attr,pool_lv,origin", self.vg)
        try:
            rows = [row for report in json.loads(output)["report"] for row in report.get("lv", [])]
            return {row["lv_name"]: LvInfo(row["lv_name"], int(row["lv_size"]), row["lv_attr"],
                                           row.get("pool_lv", ""), row.get("origin", "")) for row in rows}
        except (ValueError, KeyError, TypeError) as exc:
            raise OperationError(f"lvs {self.vg}: unexpected output ({exc}): {output[:200]!r}") from None

    def create(self, lv: str, size: int, thinpool: str | None = None) -> None:
        if thinpool:
            self.run("lvcreate", "--yes", "--name", lv, "--virtualsize", f"{size}B", "--thinpool", thinpool, self.vg)
        else:
            self.run("lvcreate", "--yes", "--name", lv, "--size", f"{size}B", self.vg)

    def snapshot(self, origin: str, lv: str, cow_size: int | None = None) -> None:
        """A snapshot of ``origin``: thin (no ``cow_size``) or classic with a ``cow_size`` CoW area."""
        if cow_size is None:
            # Thin snapshots are created with the activation-skip flag; clear it so they activate.
            self.run("lvcreate", "--snapshot", "--setactivationskip", "n", "--name", lv, f"{self.vg}/{origin}")
        else:
            self.run("lvcreate", "--snapshot", "--size", f"{cow_size}B", "--name", lv, f"{self.vg}/{origin}")

    def extend(self, lv: str, size: int) -> None:
        self.run("lvextend", "--size", f"{size}B", f"{self.vg}/{lv}")

    def rename(self, old: str, new: str) -> None:
        self.run("lvrename", self.vg, old, new)

    def remove(self, lv: str) -> None:
        self.run("lvremove", "--yes", f"{self.vg}/{lv}")

    def deactivate(self, lv: str) -> None:
        self.run("lvchange", "--activate", "n", f"{self.vg}/{lv}")

    def activate(self, lv: str) -> None:
        # --yes: activating a classic snapshot activates its origin too, which lvm2 asks about.
        self.run("lvchange", "--yes", "--activate", "y", "--ignoreactivationskip", f"{self.vg}/{lv}")
