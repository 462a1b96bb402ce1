"""The ``lvm`` store: WalB's layout, a base LV per volume and restored snapshots as LVs.

LVs in the volume group (walb-tools ``src/archive_vol_info.cpp``)::

    wb_<vol>              base image (thick, or thin in ``thinpool``)
    wr_<vol>_<gid>        restored snapshot gid: an LVM snapshot of wb_<vol> with the diffs applied
    wr_<vol>_<gid>_tmp    restore in progress

Metadata operations (create, extend, rename, remove, list) only edit the VG and work
wherever lvm2 does, even with activation disabled. Data IO — writing the base,
applying diffs, snapshots for restores, attaching — needs active LVs, which need the
kernel's device-mapper; without it these raise an OperationError that says so
(docs/stores.md lists which is which).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from .. import loop
from ..blockdev import size_of, zero_range
from ..diff.engine import BlockTarget, DiscardPolicy
from ..errors import OperationError, UsageError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..lvm import LvInfo, Lvm, check_lvm_name, device_mapper_missing
from . import Restored, Store
from .clone import CloneMethod
from .diffs import apply_diffs, verify_or_refuse
from .names import (
    BASE_PREFIX,
    VOLUME_ID_RE,
    base_name,
    check_gid,
    check_size_lb,
    check_volume_id,
    parse_restored_name,
    restored_name,
)

logger = logging.getLogger("walbops.store")

# Copy-on-write area of a classic snapshot relative to its origin: what walb-archive
# allocates for wr_<vol>_<gid> on a non-thin base (walb.md §5.6), room for the restored
# diffs plus later writes to the base.
CLASSIC_SNAPSHOT_COW_RATIO = 1.2

def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class LvmStore(Store):
    """Base and restored images as LVs in volume group ``vg``, named as WalB names them.

    Args:
        vg: the volume group.
        thinpool: a thin pool in ``vg`` for new bases (restores then make thin snapshots);
            None for thick LVs and classic snapshots.
        config, command_prefix, env: how lvm2 is run (see :class:`Lvm`).
    """

    kind = "lvm"
    config_properties: ClassVar[dict[str, Any]] = {"vg": {"type": "string", "minLength": 1},
                                                   "thinpool": {"type": "string", "minLength": 1}}
    config_required = ("vg",)

    @classmethod
    def from_config(cls, spec: dict[str, Any], base_dir: str) -> "LvmStore":
        """``{"kind": "lvm", "vg": VG, "thinpool": POOL}`` (the pool is optional)."""
        return cls(spec["vg"], thinpool=spec.get("thinpool"))

    @classmethod
    def parse_flag(cls, rest: str) -> dict[str, Any]:
        vg, _, pool = rest.partition("/")
        if not vg:
            raise UsageError("the lvm store needs a volume group: lvm:VG or lvm:VG/THINPOOL")
        return {"vg": vg, **({"thinpool": pool} if pool else {})}

    def __init__(self, vg: str, thinpool: str | None = None, config: str | None = None,
                 command_prefix: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        self.lvm = Lvm(vg, config, command_prefix, env)
        self.vg = vg
        self.thinpool = check_lvm_name(thinpool, "thin pool") if thinpool is not None else None

    def __repr__(self) -> str:
        return f"LvmStore({self.vg!r}, thinpool={self.thinpool!r})"

    # -- LVs and their devices ------------------------------------------------------------

    def _lv(self, name: str) -> LvInfo | None:
        return self.lvm.lvs().get(name)

    def _require_base(self, vol: str) -> LvInfo:
        info = self._lv(base_name(vol))
        if info is None:
            raise OperationError(f"volume {vol}: no base LV {self.vg}/{base_name(vol)}")
        return info

    def _require_restored(self, vol: str, gid: int) -> LvInfo:
        info = self._lv(restored_name(vol, gid))
        if info is None:
            raise OperationError(f"volume {vol}: gid {gid} is not restored (no LV {self.vg}/{restored_name(vol, gid)})")
        return info

    def activated(self, lv: str, what: str) -> str:
        """Activate ``lv`` and return its device node.

        Raises:
            OperationError: the kernel has no device-mapper, or activation produced no
                device (activation disabled in the LVM configuration).
        """
        node = self.lvm.path(lv)
        missing = device_mapper_missing()
        if missing is not None:
            raise OperationError(f"{what}: LV {self.vg}/{lv} must be active as {node}, but {missing}; "
                                 "data IO on the lvm store needs a kernel with device-mapper (docs/stores.md)")
        if not is_block_device(node):  # active already: a classic snapshot is active once made
            self.lvm.activate(lv)
        if not is_block_device(node):
            raise OperationError(f"{what}: LV {self.vg}/{lv} has no device {node} after activation "
                                 "(activation disabled in the LVM configuration, or device-mapper unusable)")
        return node

    @contextlib.contextmanager
    def _open_lv(self, lv: str, what: str, writable: bool,
                 discard: DiscardPolicy = DiscardPolicy.IGNORE) -> Iterator[BlockTarget]:
        node = self.activated(lv, what)
        fd = os.open(node, os.O_RDWR if writable else os.O_RDONLY)
        try:
            yield BlockTarget(fd, size_of(fd) // LOGICAL_BLOCK_SIZE, discard)
            if writable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _zero(self, lv: str, what: str, start: int, end: int) -> None:
        """Make bytes [start, end) of ``lv`` read as zeros (BLKZEROOUT)."""
        with self._open_lv(lv, what, writable=True) as target:
            zero_range(target.fd, start, end - start)

    # -- base -----------------------------------------------------------------------------

    def base_path(self, vol: str) -> str:
        return self.lvm.path(base_name(vol))

    def create_base(self, vol: str, size_lb: int, zero: bool = False) -> str:
        # Zeroing a thick LV is data IO: it needs device-mapper.
        lv = base_name(vol)
        size = check_size_lb(size_lb) * LOGICAL_BLOCK_SIZE
        if self._lv(lv) is not None:
            raise OperationError(f"volume {vol}: a base LV {self.vg}/{lv} exists already")
        self.lvm.create(lv, size, self.thinpool)
        if zero and not self.thinpool:
            try:
                self._zero(lv, f"volume {vol}: zeroing the new base", 0, self._require_base(vol).size)
            except BaseException:
                # An unzeroed base must not stay behind looking like a created one.
                with contextlib.suppress(OperationError):
                    self.lvm.remove(lv)
                raise
        logger.info("volume %s: created base LV %s/%s (%d LB%s)", vol, self.vg, lv, size_lb,
                    f", thin in {self.thinpool}" if self.thinpool else "")
        return self.base_path(vol)

    @property
    def new_base_reads_zeros(self) -> bool:
        return bool(self.thinpool)  # a thin pool hands out zeroed blocks; thick extents keep old data

    def base_exists(self, vol: str) -> bool:
        return self._lv(base_name(vol)) is not None

    def base_size_lb(self, vol: str) -> int:
        return self._require_base(vol).size // LOGICAL_BLOCK_SIZE

    def base_allocated(self, vol: str) -> int:
        # A thin LV reports its virtual size here: what it may come to take, not what it takes now.
        return self._require_base(vol).size

    def grow_base(self, vol: str, size_lb: int, zero_new: bool = False) -> int:
        info = self._require_base(vol)
        current = info.size // LOGICAL_BLOCK_SIZE
        if check_size_lb(size_lb) <= current:
            return current
        zero = zero_new and not info.is_thin  # a thin pool hands out zeroed blocks
        what = f"volume {vol}: zeroing the grown base"
        if zero:
            # Fail before extending: a retry would find the size reached and zero nothing.
            self.activated(info.name, what)
        self._extend_origin(vol, info, size_lb * LOGICAL_BLOCK_SIZE)
        grown = self._require_base(vol).size
        if zero:
            self._zero(info.name, what, info.size, grown)
        logger.info("volume %s: grew base LV %s/%s from %d to %d LB", vol, self.vg, info.name, current,
                    grown // LOGICAL_BLOCK_SIZE)
        return grown // LOGICAL_BLOCK_SIZE

    def _extend_origin(self, vol: str, base: LvInfo, size: int) -> None:
        """Extend the base LV. lvm2 extends a thick LV with classic snapshots (restored gids) only
        while it is inactive: deactivate it (its snapshots with it), extend, and activate again
        what was active. A restored image in use keeps it active, and the grow is refused."""
        lvs = self.lvm.lvs()
        snapshots = [info for info in lvs.values() if info.origin == base.name]
        if base.is_thin or not snapshots:
            self.lvm.extend(base.name, size)
            return
        active = [info.name for info in (base, *snapshots) if info.is_active]
        try:
            self.lvm.deactivate(base.name)
        except OperationError as exc:
            gids = ", ".join(str(parsed[1]) for info in snapshots if (parsed := parse_restored_name(info.name)))
            raise OperationError(f"volume {vol}: growing the base LV {self.vg}/{base.name} needs it inactive, with "
                                 f"its restored snapshots (gids {gids}); one is in use: {exc}") from None
        try:
            self.lvm.extend(base.name, size)
        finally:
            for name in active:
                self.lvm.activate(name)

    @contextlib.contextmanager
    def open_base(self, vol: str, writable: bool = True,
                  discard: DiscardPolicy = DiscardPolicy.IGNORE) -> Iterator[BlockTarget]:
        lv = self._require_base(vol).name
        with self._open_lv(lv, f"volume {vol}: opening the base", writable, discard) as target:
            yield target

    # -- restored images ------------------------------------------------------------------

    def restore(self, vol: str, gid: int, diff_paths: Sequence[str],
                discard: DiscardPolicy = DiscardPolicy.IGNORE) -> Restored:
        final, tmp = restored_name(vol, check_gid(gid)), restored_name(vol, gid, tmp=True)
        lvs = self.lvm.lvs()
        if final in lvs:
            raise OperationError(f"volume {vol}: gid {gid} is restored already as LV {self.vg}/{final}")
        base = lvs.get(base_name(vol))
        if base is None:
            raise OperationError(f"volume {vol}: no base LV {self.vg}/{base_name(vol)} to restore gid {gid} from")
        what = f"volume {vol}: cannot restore gid {gid}"
        verified = verify_or_refuse(what, diff_paths, base.size // LOGICAL_BLOCK_SIZE, discard)
        missing = device_mapper_missing()
        if missing is not None:
            raise OperationError(f"{what}: a snapshot of LV {self.vg}/{base.name} needs device-mapper, but {missing}; "
                                 "data IO on the lvm store needs a kernel with device-mapper (docs/stores.md)")
        if tmp in lvs:
            self.lvm.remove(tmp)  # left by a restore that died
        if base.is_thin:
            method, cow_size = CloneMethod.LVM_THIN_SNAPSHOT, None
        else:
            method = CloneMethod.LVM_SNAPSHOT
            cow_size = math.ceil(base.size * CLASSIC_SNAPSHOT_COW_RATIO / LOGICAL_BLOCK_SIZE) * LOGICAL_BLOCK_SIZE
        self.lvm.snapshot(base.name, tmp, cow_size)
        try:
            with self._open_lv(tmp, what, writable=True, discard=discard) as target:
                apply_diffs(verified, target)
            self.lvm.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(OperationError):
                self.lvm.remove(tmp)
            raise
        logger.info("volume %s: restored gid %d as LV %s/%s (%s, %d diffs)", vol, gid, self.vg, final, method,
                    len(diff_paths))
        return Restored(vol, gid, self.lvm.path(final), method, verified.stats)

    def _volume_lvs(self, vol: str) -> Iterator[tuple[str, int, bool]]:
        """(LV name, gid, is_tmp) of the restored LVs of ``vol``."""
        check_volume_id(vol)
        for name in self.lvm.lvs():
            parsed = parse_restored_name(name)
            if parsed is not None and parsed[0] == vol:
                yield name, parsed[1], parsed[2]

    def restored(self, vol: str) -> list[int]:
        return sorted(gid for _, gid, is_tmp in self._volume_lvs(vol) if not is_tmp)

    def restored_path(self, vol: str, gid: int) -> str:
        return self.lvm.path(restored_name(vol, gid))

    def _detach_lvs(self, names: Sequence[str]) -> None:
        """Detach loop devices over the active ones among ``names`` (an inactive LV has none)."""
        loop.detach(*[self.lvm.path(name) for name in names if os.path.exists(self.lvm.path(name))])

    def delete_restored(self, vol: str, gid: int) -> None:
        lv = self._require_restored(vol, gid).name
        self._detach_lvs([lv])
        self.lvm.remove(lv)
        logger.info("volume %s: deleted restored gid %d (LV %s/%s)", vol, gid, self.vg, lv)

    def attach(self, vol: str, gid: int, read_only: bool = True) -> str:
        lv = self._require_restored(vol, gid).name
        return loop.attach(self.activated(lv, f"volume {vol}: attaching gid {gid}"), read_only)

    def detach(self, vol: str, gid: int) -> list[str]:
        node = self.restored_path(vol, gid)
        return loop.detach(node) if os.path.exists(node) else []

    # -- whole volumes --------------------------------------------------------------------

    def cleanup(self, vol: str) -> list[str]:
        removed = []
        for name, _, is_tmp in list(self._volume_lvs(vol)):
            if is_tmp:
                self.lvm.remove(name)
                removed.append(f"{self.vg}/{name}")
        if removed:
            logger.info("volume %s: removed leftover LVs %s", vol, ", ".join(removed))
        return removed

    def remove_volume(self, vol: str) -> None:
        restored = [name for name, _, _ in self._volume_lvs(vol)]
        base = base_name(vol)
        has_base = base in self.lvm.lvs()
        self._detach_lvs(restored)
        # Snapshots first: lvm2 refuses to remove a classic snapshot's origin.
        for name in restored:
            self.lvm.remove(name)
        if has_base:
            self.lvm.remove(base)
        if restored or has_base:
            logger.info("volume %s: removed LVs %s", vol, ", ".join(restored + [base] * has_base))

    def volumes(self) -> list[str]:
        found = set()
        for name in self.lvm.lvs():
            parsed = parse_restored_name(name)
            if parsed is not None:
                found.add(parsed[0])
            elif name.startswith(BASE_PREFIX) and VOLUME_ID_RE.fullmatch(name[len(BASE_PREFIX):]):
                found.add(name[len(BASE_PREFIX):])
        return sorted(found)

