"""LVM volume groups and logical volumes (the ``walb_lvm_vg`` and ``walb_lvm_lv`` modules).

They do what community.general's ``lvg`` and ``lvol`` do with the options walbops uses
(vg, pvs, pesize, state, force; vg, lv, size, state, force, shrink, thinpool), and differ
where those lose data silently or mispredict in check mode:

- every refusal is made before anything changes, in check mode too, so ``--check``
  predicts what a real run does (lvg's check mode reports a change where it then refuses);
- a device that carries a signature (a filesystem, a partition table) becomes a PV only
  with ``force``; lvg overwrites it;
- sizes are compared and handed to lvm2 in whole extents, so the size check mode
  predicts is the size lvm2 makes;
- ``shrink: false`` never shrinks, not even for a ``-N`` size.

lvm2 runs through :class:`walbops.lvm.Lvm` (no shell, ``LVM_SUPPRESS_FD_WARNINGS``,
lvm2's message in the OperationError); its configuration is the caller's, so
``LVM_SYSTEM_DIR`` in the environment selects a private lvm.conf.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..errors import OperationError, UsageError
from ..lvm import LvInfo, Lvm, check_lvm_name, device_mapper_missing
from . import Outcome

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
SECTOR = 512  # [bytes] lvm2's "s" unit

# lvm2's input units, lower or upper case alike: all powers of 1024 (lvcreate(8) --size).
_UNITS = {"b": 1, "s": SECTOR, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
# A bare number is MiB, as lvcreate, vgcreate, lvg and lvol read it.
_DEFAULT_UNIT = "m"
_SIZE_RE = re.compile(r"(?P<sign>[+-]?)(?P<number>\d+(?:\.\d+)?)"
                      r"(?:%(?P<basis>[A-Za-z]+)|(?P<unit>[bBsSkKmMgGtTpPeE])?)")
PERCENT_BASES = ("VG", "PVS", "FREE")
# vgcreate(8): an extent size is a power of 2 of at least a sector, or a multiple of 128 KiB.
_EXTENT_GRANULE = 128 * KiB  # [bytes]

# lv_attr's first character for the LVs thin provisioning is made of (lvs(8)).
_THIN_POOL_ATTR = "t"
_THIN_VOLUME_ATTR = "V"


def human_size(size: int) -> str:
    """``64 MiB`` for a whole number of KiB, MiB or GiB; else bytes."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


# -- sizes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VgInfo:
    """One row of ``vgs``."""

    name: str
    size: int  # [bytes]
    free: int  # [bytes]
    extent_size: int  # [bytes]
    extent_count: int
    free_count: int  # [extents]


@dataclass(frozen=True)
class LvSize:
    """A ``size`` as lvol takes it: ``64M``, ``+16M``, ``-16M``, ``50%VG``, ``+100%FREE``, ``20%PVS``.

    ``amount`` is in bytes, or the percentage when ``basis`` is set.
    """

    text: str
    sign: str  # "" sets the size, "+" grows by amount, "-" shrinks by it
    amount: Fraction
    basis: str | None  # "VG", "PVS" (all PVs of the VG) or "FREE"

    def extents(self, current: int, group: VgInfo) -> int:
        """The size in extents this asks for, of an LV of ``current`` extents (0 for a new one)."""
        if self.basis is None:
            start = current * group.extent_size if self.sign else 0
            wanted = start - self.amount if self.sign == "-" else start + self.amount
            # lvm2 rounds a size up to whole extents.
            return math.ceil(wanted / group.extent_size)
        whole = group.free_count if self.basis == "FREE" else group.extent_count
        # ... and a percentage down (lvcreate(8) --extents).
        part = math.floor(self.amount * whole / 100)
        return {"": part, "+": current + part, "-": current - part}[self.sign]


def _number(text: str, option: str) -> re.Match[str]:
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"{option}={text!r} is not a size: give a number with an optional unit "
                         "(b, s, k, m, g, t; MiB when none: 512, 64M, 1.5G) or a percentage (50%VG, 100%FREE)")
    return match


def parse_lv_size(text: str) -> LvSize:
    """``size`` as lvol reads it (see :class:`LvSize`); a bare number is MiB."""
    match = _number(text, "size")
    number = Fraction(match["number"])
    if match["basis"] is not None:
        basis = match["basis"].upper()
        if basis not in PERCENT_BASES:
            raise UsageError(f"size={text!r}: a percentage is of VG, PVS or FREE "
                             "(ORIGIN is for snapshots, which walb_lvm_lv does not make)")
        if number.denominator != 1 or not 0 < number <= 100:
            raise UsageError(f"size={text!r}: a percentage is a whole number from 1 to 100")
        return LvSize(text, match["sign"], number, basis)
    amount = number * _UNITS[(match["unit"] or _DEFAULT_UNIT).lower()]
    if amount <= 0:
        raise UsageError(f"size={text!r} must be more than 0")
    return LvSize(text, match["sign"], amount, None)


def parse_extent_size(text: str) -> int:
    """``pesize`` in bytes, as lvg reads it: a bare number is MiB; lvm2's rule on the value."""
    match = _number(text, "pesize")
    if match["sign"] or match["basis"] is not None:
        raise UsageError(f"pesize={text!r} must be a plain size (e.g. 4, 128K, 32M)")
    size = Fraction(match["number"]) * _UNITS[(match["unit"] or _DEFAULT_UNIT).lower()]
    power_of_two = size.denominator == 1 and size >= SECTOR and int(size) & (int(size) - 1) == 0
    if not (power_of_two or (size.denominator == 1 and size > 0 and size % _EXTENT_GRANULE == 0)):
        raise UsageError(f"pesize={text!r} must be a power of 2 of at least 512 bytes, or a multiple of 128 KiB")
    return int(size)


# -- what lvm2 reports --------------------------------------------------------------------


@dataclass(frozen=True)
class PvInfo:
    """One row of ``pvs``."""

    device: str  # the device's real path
    vg: str  # "" for a PV in no volume group
    used: int  # [bytes] allocated to LVs


def _report(lvm: Lvm, command: str, section: str, fields: str, *args: str) -> list[dict[str, Any]]:
    output = lvm.run(command, "--reportformat", "json", "--units", "b", "--nosuffix", "--options", fields, *args)
    try:
        return [row for report in json.loads(output)["report"] for row in report.get(section, [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise OperationError(f"lvm {command}: unexpected output ({exc}): {output[:200]!r}") from None


def _volume_groups(lvm: Lvm) -> dict[str, VgInfo]:
    rows = _report(lvm, "vgs", "vg", "vg_name,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count")
    try:
        return {row["vg_name"]: VgInfo(row["vg_name"], int(row["vg_size"]), int(row["vg_free"]),
                                       int(row["vg_extent_size"]), int(row["vg_extent_count"]),
                                       int(row["vg_free_count"])) for row in rows}
    except (ValueError, KeyError) as exc:
        raise OperationError(f"lvm vgs: unexpected row ({exc!r}): {rows[:2]!r}") from None


def _physical_volumes(lvm: Lvm) -> dict[str, PvInfo]:
    rows = _report(lvm, "pvs", "pv", "pv_name,vg_name,pv_used")
    try:
        found = [PvInfo(os.path.realpath(row["pv_name"]), row["vg_name"], int(row["pv_used"] or 0)) for row in rows]
    except (ValueError, KeyError) as exc:
        raise OperationError(f"lvm pvs: unexpected row ({exc!r}): {rows[:2]!r}") from None
    return {pv.device: pv for pv in found}


def _signature(device: str) -> str | None:
    """What blkid finds on ``device`` (``a signature (ext4)``, ``a partition table (dos)``), or None."""
    try:
        result = subprocess.run(["blkid", "--probe", "--output", "export", device], capture_output=True, text=True)
    except FileNotFoundError:
        raise OperationError("blkid: command not found (install util-linux)") from None
    if result.returncode == 2:  # blkid's "nothing found"
        return None
    if result.returncode != 0:
        raise OperationError(f"blkid --probe {device}: {result.stderr.strip() or f'exit {result.returncode}'}")
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    if "TYPE" in found:
        return f"a signature ({found['TYPE']})"
    if "PTTYPE" in found:
        return f"a partition table ({found['PTTYPE']})"
    return None


def _require_device_mapper(what: str) -> None:
    """Refuse (in check mode too) what lvm2 does only with an active thin pool."""
    missing = device_mapper_missing()
    if missing is not None:
        raise OperationError(f"{what} needs device-mapper (an active thin pool), but {missing}")


# -- volume groups ------------------------------------------------------------------------


def _describe_vg(vg: str, group: VgInfo | None, physical: dict[str, PvInfo], lvs: Sequence[str]) -> dict[str, Any]:
    return {"vg": vg, "exists": group is not None,
            "pvs": sorted(pv.device for pv in physical.values() if pv.vg == vg),
            "extent_size": group.extent_size if group else None, "lvs": sorted(lvs)}


def _vg_values(description: dict[str, Any], group: VgInfo | None) -> dict[str, Any]:
    return {"vg": description["vg"], "pvs": description["pvs"], "extent_size": description["extent_size"],
            "size": group.size if group else None, "free": group.free if group else None}


def ensure_vg(vg: str, pvs: Sequence[str] | None = None, state: str = "present", force: bool = False,
              pesize: str | None = None, check: bool = False) -> Outcome:
    """Make volume group ``vg`` exist on exactly ``pvs`` (state present) or not exist (absent).

    present: a missing VG is created on ``pvs`` (pvcreate, vgcreate -s ``pesize``); an
    existing one gains the listed devices it lacks (vgextend) and loses the PVs not listed
    (vgreduce), which must hold no LV data. Without ``pvs`` an existing VG is left as it is;
    ``pesize`` applies only to a new VG. absent: vgremove; a VG holding LVs needs ``force``.
    """
    if state not in ("present", "absent"):
        raise UsageError(f"state must be present or absent, not {state!r}")
    extent_size = parse_extent_size(pesize) if pesize is not None else None
    lvm = Lvm(vg)
    group = _volume_groups(lvm).get(vg)
    physical = _physical_volumes(lvm)
    lvs = list(lvm.lvs()) if group else []
    before = _describe_vg(vg, group, physical, lvs)

    if state == "absent":
        if group is None:
            return Outcome(False, before, before, _vg_values(before, None))
        if lvs and not force:
            raise OperationError(f"volume group {vg} holds LVs ({', '.join(sorted(lvs))}); "
                                 "set force: true to remove them with it")
        if not check:
            lvm.run("vgremove", "--yes", "--force", vg)
        after = _describe_vg(vg, None, {}, [])
        return Outcome(True, before, after, {**_vg_values(after, None), "removed_lvs": sorted(lvs)})

    devices = list(dict.fromkeys(os.path.realpath(device) for device in pvs or ()))  # lvm2 names real paths
    if group is None and not devices:
        raise OperationError(f"volume group {vg} does not exist; give pvs to create it")
    for device in devices:
        if not os.path.exists(device):
            raise OperationError(f"volume group {vg}: device {device} does not exist")
        owner = physical[device].vg if device in physical else ""
        if owner and owner != vg:
            raise OperationError(f"volume group {vg}: {device} is a PV of volume group {owner}; "
                                 f"take it out of {owner} first (vgreduce {owner} {device})")
    current = before["pvs"]
    to_add = [device for device in devices if device not in current]
    to_remove = [device for device in current if device not in devices] if devices else []
    to_label = [device for device in to_add if device not in physical]
    for device in to_label:
        signature = _signature(device)
        if signature is not None and not force:
            raise OperationError(f"volume group {vg}: {device} holds {signature}; "
                                 "set force: true to overwrite it with a PV")
    for device in to_remove:
        if physical[device].used:
            raise OperationError(f"volume group {vg}: {device} is not in pvs but holds "
                                 f"{human_size(physical[device].used)} of LVs; list it in pvs, "
                                 "or move the data off it (pvmove) or remove those LVs first")
    if not to_add and not to_remove:
        return Outcome(False, before, before, _vg_values(before, group))

    if check:
        after = {**before, "exists": True, "pvs": sorted(set(current) - set(to_remove) | set(to_add)),
                 "extent_size": group.extent_size if group else extent_size}
        # The new size depends on each PV's metadata area: known once lvm2 has made it.
        return Outcome(True, before, after, _vg_values(after, None))
    for device in to_label:
        lvm.run("pvcreate", "--yes", device)
    if group is None:
        extent_option = ["--physicalextentsize", f"{extent_size}b"] if extent_size else []
        lvm.run("vgcreate", *extent_option, vg, *devices)
    else:
        if to_add:
            lvm.run("vgextend", vg, *to_add)
        if to_remove:
            lvm.run("vgreduce", vg, *to_remove)
    group = _volume_groups(lvm)[vg]
    after = _describe_vg(vg, group, _physical_volumes(lvm), lvs)
    return Outcome(True, before, after, _vg_values(after, group))


# -- logical volumes ----------------------------------------------------------------------


def _pool_of(info: LvInfo | None, name: str) -> str | None:
    """The thin pool ``info`` lives in, or its own name for a pool; None for a thick LV."""
    if info is None:
        return None
    return name if info.attr.startswith(_THIN_POOL_ATTR) else (info.pool or None)


def _describe_lv(vg: str, name: str, info: LvInfo | None) -> dict[str, Any]:
    return {"vg": vg, "lv": name, "exists": info is not None, "size": info.size if info else None,
            "thinpool": _pool_of(info, name)}


def _lv_values(lvm: Lvm, description: dict[str, Any]) -> dict[str, Any]:
    exists = description["exists"]
    return {"vg": description["vg"], "lv": description["lv"], "size": description["size"],
            "device": lvm.path(description["lv"]) if exists else None, "thinpool": description["thinpool"]}


def _where(info: LvInfo) -> str:
    if info.attr.startswith(_THIN_POOL_ATTR):
        return "is a thin pool"
    return f"is a thin volume in pool {info.pool}" if info.pool else "is a thick LV"


def _check_kind(vg: str, name: str, lv: str | None, thinpool: str | None, info: LvInfo | None,
                lvs: dict[str, LvInfo], state: str) -> None:
    """Refuse an LV that exists as another kind than asked: thin pool, thin volume in ``thinpool``."""
    if lv is None:
        if info is not None and not info.attr.startswith(_THIN_POOL_ATTR):
            raise OperationError(f"{vg}/{name} exists and {_where(info)}, not a thin pool; "
                                 "remove it first (state: absent) to make a thin pool of that name")
        return
    if thinpool is None:
        return
    if info is not None and info.pool != thinpool:
        raise OperationError(f"{vg}/{name} exists and {_where(info)}, not in thin pool {thinpool}; "
                             "remove it first (state: absent) to recreate it there")
    pool = lvs.get(thinpool)
    if state == "present" and pool is None:
        raise OperationError(f"thin pool {vg}/{thinpool} does not exist; create it first "
                             f"(thinpool: {thinpool} with a size and no lv)")
    if pool is not None and not pool.attr.startswith(_THIN_POOL_ATTR):
        raise OperationError(f"{vg}/{thinpool} {_where(pool)}, not a thin pool")


def _require_free(vg: str, name: str, size: LvSize, needed: int, group: VgInfo) -> None:
    if needed > group.free_count:
        raise OperationError(f"{vg}/{name}: size={size.text} needs {human_size(needed * group.extent_size)} more, "
                             f"but volume group {vg} has {human_size(group.free)} free")


def ensure_lv(vg: str, lv: str | None = None, size: str | None = None, state: str = "present",
              force: bool = False, shrink: bool = True, thinpool: str | None = None,
              check: bool = False) -> Outcome:
    """Make an LV exist with ``size`` (state present) or not exist (absent), as lvol does.

    ``lv`` alone is a thick LV; ``thinpool`` alone is that thin pool (``size`` its data
    size); both are a thin volume ``lv`` in pool ``thinpool`` (``size`` its virtual size).
    A missing LV is created; a smaller one grown (lvextend); a larger one shrunk only with
    ``force`` (lvreduce), never with ``shrink`` false. Sizes compare in whole extents.
    Removal needs ``force``, as with lvol.
    """
    if state not in ("present", "absent"):
        raise UsageError(f"state must be present or absent, not {state!r}")
    if thinpool is not None:
        check_lvm_name(thinpool, "thin pool")
    if lv is not None:
        name = check_lvm_name(lv, "logical volume")
    elif thinpool is not None:
        name = thinpool
    else:
        raise UsageError("give lv, or thinpool to manage a thin pool")
    request = parse_lv_size(size) if size is not None else None
    thin_volume = lv is not None and thinpool is not None
    if thin_volume and request is not None and request.basis is not None:
        raise UsageError(f"size={size}: a thin volume's virtual size is not a percentage of the volume group")
    lvm = Lvm(vg)
    group = _volume_groups(lvm).get(vg)
    if group is None:
        if state == "absent":
            missing = {"vg": vg, "lv": name, "exists": False, "size": None, "thinpool": None}
            return Outcome(False, missing, missing, _lv_values(lvm, missing))
        raise OperationError(f"volume group {vg} does not exist")
    lvs = lvm.lvs()
    info = lvs.get(name)
    _check_kind(vg, name, lv, thinpool, info, lvs, state)
    before = _describe_lv(vg, name, info)

    if state == "absent":
        if info is None:
            return Outcome(False, before, before, _lv_values(lvm, before))
        if not force:
            raise OperationError(f"{vg}/{name} exists; set force: true to remove it (its data is lost)")
        removed = [name]
        if info.attr.startswith(_THIN_POOL_ATTR):
            removed += sorted(other for other, entry in lvs.items() if entry.pool == name)  # lvremove takes them too
        elif info.attr.startswith(_THIN_VOLUME_ATTR):
            _require_device_mapper(f"{vg}/{name}: removing a thin volume")
        # An active thin pool is always open (its active thin volumes hold it): what must not be
        # open is what lvremove takes with it, its thin volumes; otherwise the LV itself.
        for held in removed[1:] or removed:
            if lvs[held].is_open:
                raise OperationError(f"{vg}/{held} is open (mounted or in use); close it before state: absent")
        if not check:
            lvm.remove(name)
        after = {**before, "exists": False, "size": None, "thinpool": None}
        return Outcome(True, before, after, {**_lv_values(lvm, after), "removed": removed})

    extent_size = group.extent_size
    if info is None:
        if request is None:
            raise OperationError(f"{vg}/{name} does not exist; give size to create it")
        if request.sign == "-":
            raise UsageError(f"size={request.text}: a new LV cannot shrink by a size")
        target = request.extents(0, group)
        if target <= 0:
            raise OperationError(f"{vg}/{name}: size={request.text} is less than one extent "
                                 f"({human_size(extent_size)}) of volume group {vg}")
        if thin_volume:
            _require_device_mapper(f"{vg}/{name}: creating a thin volume in pool {thinpool}")
        else:
            _require_free(vg, name, request, target, group)
            if lv is None:
                _require_device_mapper(f"{vg}/{name}: creating a thin pool")
        if not check:
            if lv is None:
                lvm.run("lvcreate", "--yes", "--type", "thin-pool", "--extents", str(target), "--name", name, vg)
            else:
                lvm.create(name, target * extent_size, thinpool)
        return _lv_result(lvm, vg, name, before, target * extent_size, thinpool, check)

    current = info.size // extent_size
    if request is None:
        return Outcome(False, before, before, _lv_values(lvm, before))
    target = request.extents(current, group)
    if target == current or (target < current and not shrink):
        return Outcome(False, before, before, _lv_values(lvm, before))
    is_pool = info.attr.startswith(_THIN_POOL_ATTR)
    if target > current:
        if not info.attr.startswith(_THIN_VOLUME_ATTR):  # a thin volume's size is virtual
            _require_free(vg, name, request, target - current, group)
        if is_pool:
            _require_device_mapper(f"{vg}/{name}: growing a thin pool")
        if not check:
            lvm.extend(name, target * extent_size)
    else:
        shrunk = f"{vg}/{name} is {human_size(info.size)}; size={size} would shrink it"
        if target <= 0:
            raise OperationError(f"{shrunk} to nothing; set shrink: false to leave it as it is")
        if is_pool:
            raise OperationError(f"{shrunk}, and lvm2 cannot shrink a thin pool; set shrink: false to leave it")
        if not force:
            raise OperationError(f"{shrunk} to {human_size(target * extent_size)}; set force: true to shrink "
                                 "(data beyond the new end is lost)")
        if not check:
            lvm.run("lvreduce", "--yes", "--size", f"{target * extent_size}B", f"{vg}/{name}")
    return _lv_result(lvm, vg, name, before, target * extent_size, before["thinpool"], check)


def _lv_result(lvm: Lvm, vg: str, name: str, before: dict[str, Any], size: int, thinpool: str | None,
               check: bool) -> Outcome:
    """The outcome of a create or resize: predicted in check mode, read back from lvm2 otherwise."""
    if check:
        after = {**before, "exists": True, "size": size, "thinpool": thinpool or before["thinpool"]}
    else:
        after = _describe_lv(vg, name, lvm.lvs().get(name))
    return Outcome(True, before, after, _lv_values(lvm, after))
