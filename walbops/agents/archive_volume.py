"""An archived volume: its state, base MetaState, uuids and diff files (WalB's ArchiveVolInfo).

Network-free: the archive agent calls these methods from its request handlers. Files in
``<base_dir>/<vol>/``: ``meta.json`` (state, base, uuid, archive_uuid, size) and the
wdiff files named as WalB names them (``YYYYMMDDhhmmss-MC-B-E.wdiff``); the directory is
the source of truth for the diffs, rescanned at load. Block images live in the store.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from ..diff.chain import DiffDirectory
from ..diff.files import verify_wdiff
from ..errors import FormatError, OperationError
from ..formats.wdiff import FileHeader
from ..gid import (
    MetaDiff,
    MetaSnap,
    MetaState,
    Relation,
    Restorable,
    diff_file_name,
    get_relation,
)
from . import metadata
from .state import ARCHIVE_ACTIVE, ARCHIVE_TRANSITIONS, ActionCounter, Refused, StateMachine

TMP_SUFFIX = ".receiving"


@dataclass
class DiffSummary:
    """What ``get diff`` prints for one diff."""

    diff: MetaDiff

    def as_dict(self) -> dict[str, Any]:
        return {"name": diff_file_name(self.diff), "range": self.diff.range_str(), "text": str(self.diff),
                "mergeable": self.diff.is_mergeable, "comp": self.diff.is_comp_diff,
                "timestamp": self.diff.timestamp, "size": self.diff.data_size}


class ArchiveVolume:
    """One volume on the archive."""

    def __init__(self, base_dir: str, vol: str) -> None:
        self.vol = metadata.check_volume_id(vol)
        self.directory = os.path.join(base_dir, vol)
        meta = metadata.load(self.directory) or {}
        self.machine = StateMachine(ARCHIVE_TRANSITIONS, meta.get("state", "Clear"), self._persist_state)
        self.base = MetaState.parse(meta["base"]) if "base" in meta else MetaState(MetaSnap(0))
        self.uuid = bytes.fromhex(meta.get("uuid", "00" * 16))
        self.archive_uuid = bytes.fromhex(meta.get("archive_uuid", "00" * 16))
        self.size_lb = int(meta.get("size_lb", 0))
        self.actions = ActionCounter()
        self.progress_lb = 0
        self.diffs = self._scan()

    # ------------------------------------------------------------------ persistence

    def _meta(self) -> dict[str, Any]:
        return {"vol": self.vol, "state": self.machine.state, "base": str(self.base), "uuid": self.uuid.hex(),
                "archive_uuid": self.archive_uuid.hex(), "size_lb": self.size_lb}

    def _persist_state(self, state: str) -> None:
        if state == "Clear":
            return  # Clear has no directory
        os.makedirs(self.directory, exist_ok=True)
        metadata.save(self.directory, self._meta())

    def save(self) -> None:
        metadata.save(self.directory, self._meta())

    def _scan(self) -> DiffDirectory:
        if not os.path.isdir(self.directory):
            return DiffDirectory.empty(self.directory)
        for name in os.listdir(self.directory):
            if name.endswith(TMP_SUFFIX):
                os.unlink(os.path.join(self.directory, name))  # a transfer cut short
        return DiffDirectory.scan(self.directory)

    @property
    def state(self) -> str:
        return self.machine.state

    # ------------------------------------------------------------------ lifecycle

    def init_vol(self) -> None:
        with self.machine.transaction("Clear", "InitVol") as tx:
            os.makedirs(self.directory, exist_ok=True)
            self.base = MetaState(MetaSnap(0))
            self.uuid = self.archive_uuid = bytes(16)
            self.size_lb = 0
            tx.commit("SyncReady")

    def clear_vol(self, remove_images: Any) -> None:
        """Delete everything of the volume (``remove_images`` is the store's remover)."""
        self.actions.refuse_if_running(["Merge", "Apply", "Restore", "ReplSyncAsClient", "Resize"])
        with self.machine.transaction(("SyncReady", "Stopped"), "ClearVol") as tx:
            remove_images(self.vol)
            shutil.rmtree(self.directory, ignore_errors=True)
            self.diffs = self._scan()
            tx.commit("Clear")

    def reset_vol(self, remove_images: Any) -> None:
        self.actions.refuse_if_running(["Merge", "Apply", "Restore", "ReplSyncAsClient", "Resize"])
        with self.machine.transaction(("SyncReady", "Stopped"), "ResetVol") as tx:
            remove_images(self.vol)
            for name in os.listdir(self.directory):
                if name.endswith(".wdiff"):
                    os.unlink(os.path.join(self.directory, name))
            self.base = MetaState(MetaSnap(0))
            self.uuid = self.archive_uuid = bytes(16)
            self.size_lb = 0
            self.diffs = self._scan()
            tx.commit("SyncReady")

    def start(self) -> None:
        with self.machine.transaction("Stopped", "Start") as tx:
            tx.commit("Archived")

    def stop(self) -> None:
        self.actions.refuse_if_running(["Merge", "Apply", "Restore", "ReplSyncAsClient", "Resize"])
        with self.machine.transaction("Archived", "Stop") as tx:
            tx.commit("Stopped")

    # ------------------------------------------------------------------ full backup

    def begin_full_sync(self) -> Any:
        """Enter FullSync (SyncReady only); the caller commits or the transaction rolls back."""
        if self.state != "SyncReady":
            raise Refused("not-sync-ready", f"{self.vol}: bad state {self.state} for a full backup (needs SyncReady;"
                          " an archived volume must be cleared or reset first)")
        self.actions.refuse_if_running(["Merge", "Apply", "Restore", "ReplSyncAsClient", "Resize"])
        return self.machine.transaction("SyncReady", "FullSync")

    def finish_full_sync(self, tx: Any, uuid: bytes, size_lb: int, gid_e: int, timestamp: int) -> None:
        """The base is complete: it holds the volume somewhere between gid 0 and ``gid_e``."""
        self.base = MetaState(MetaSnap(0, gid_e), timestamp=timestamp)
        self.uuid = uuid
        self.archive_uuid = uuidlib.uuid4().bytes  # a new archive lineage begins
        self.size_lb = size_lb
        tx.commit("Archived")

    # ------------------------------------------------------------------ diffs

    def latest_snap(self) -> MetaSnap:
        return self.diffs.chain.latest_snap(self.base)

    def check_diff(self, diff: MetaDiff, uuid: bytes, size_lb: int, from_proxy: bool = True) -> None:
        """WalB's wdiff-transfer checks, in its order; refusals carry its reason strings."""
        state = self.state
        if state in ("Stopped", "Start", "Stop", "Clear", "InitVol", "ClearVol", "ResetVol", "SyncReady"):
            raise Refused("stopped", f"{self.vol}: not accepting diffs in state {state}")
        if state in ("FullSync", "HashSync", "Resync"):
            raise Refused("syncing", f"{self.vol}: a backup is running")
        if state == "WdiffRecv":
            raise Refused("wdiff-recv", f"{self.vol}: another diff is being received")
        if from_proxy and uuid != self.uuid:
            raise Refused("different-uuid", f"{self.vol}: diff uuid {uuid.hex()} is not the volume's "
                          f"{self.uuid.hex()}")
        if size_lb > self.size_lb:
            raise Refused("smaller-lv-size", f"{self.vol}: volume of {size_lb} LB does not fit the base of "
                          f"{self.size_lb} LB")
        relation = get_relation(self.latest_snap(), diff)
        if relation == Relation.TOO_OLD:
            raise Refused("too-old-diff", f"{self.vol}: diff {diff.range_str()} is older than {self.latest_snap()}")
        if relation != Relation.APPLICABLE:
            raise Refused("too-new-diff", f"{self.vol}: diff {diff.range_str()} does not follow {self.latest_snap()}")

    def receiving_path(self) -> str:
        return os.path.join(self.directory, f"incoming{TMP_SUFFIX}")

    def add_received_diff(self, tmp_path: str, diff: MetaDiff, verified: FileHeader | None = None) -> MetaDiff:
        """Make a received wdiff (sorted or indexed, fsynced) part of the volume, once verified.

        Args:
            verified: the file header if the caller already verified the file completely
                (``verify_wdiff``); otherwise it is verified here.

        Raises:
            FormatError: the file is corrupt (it is removed and nothing changes).
            OperationError: its uuid is not the volume's (likewise).
        """
        try:
            header = verified if verified is not None else verify_wdiff(tmp_path)
            if header.uuid != self.uuid:
                raise OperationError(f"{self.vol}: received diff has uuid {header.uuid.hex()}")
        except (FormatError, OperationError):
            os.unlink(tmp_path)
            raise
        stored = MetaDiff(diff.snap_b, diff.snap_e, diff.is_mergeable, diff.is_comp_diff, diff.timestamp,
                          os.path.getsize(tmp_path))
        final = os.path.join(self.directory, diff_file_name(stored))
        os.replace(tmp_path, final)
        metadata.fsync_dir(self.directory)
        self.diffs.chain.add(stored)
        self.diffs.files[stored.key] = final
        return stored

    # ------------------------------------------------------------------ restore

    def restorable(self, include_implicit: bool = False) -> list[Restorable]:
        return self.diffs.chain.restorable_list(self.base, include_implicit)

    def restore_paths(self, gid: int) -> list[str]:
        if self.state not in ARCHIVE_ACTIVE:
            raise OperationError(f"{self.vol}: bad state {self.state} for a restore")
        self.actions.refuse_if_running(["Restore", "Resize"])
        return self.diffs.restore_paths(self.base, gid)

    def diff_list(self) -> list[dict[str, Any]]:
        return [DiffSummary(diff).as_dict() for diff in self.diffs.chain]

    def total_diff_size(self) -> int:
        return sum(diff.data_size for diff in self.diffs.chain)

    def status(self) -> dict[str, Any]:
        latest = self.latest_snap() if self.state != "Clear" else None
        return {
            "vol": self.vol, "state": self.state, "base": str(self.base), "uuid": self.uuid.hex(),
            "archive_uuid": self.archive_uuid.hex(), "size_lb": self.size_lb, "num_diff": len(self.diffs.chain),
            "total_diff_size": self.total_diff_size(), "latest_snap": str(latest) if latest else None,
            "progress_lb": self.progress_lb, "time": int(time.time()),
        }
