"""An archived volume: its state, base MetaState, uuids and diff files (WalB's ArchiveVolInfo).

Network-free: the archive agent calls these methods from its request handlers. Files in
``<base_dir>/<vol>/``: ``meta.json`` (state, base, uuid, archive_uuid, size) and the
wdiff files named as WalB names them (``YYYYMMDDhhmmss-MC-B-E.wdiff``); the directory is
the source of truth for the diffs, rescanned at load. Block images live in the store.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import time
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..diff.chain import DiffDirectory
from ..diff.engine import write_sorted
from ..diff.files import iter_diff, read_header, verify_wdiff
from ..diff.io import merge_ios
from ..diff.sorted_file import SortedDiffWriter
from ..durable import fsync_dir
from ..errors import BadField, FormatError, OperationError, UsageError
from ..faults import crash_point
from ..formats.compression import Compression
from ..formats.wdiff import FileHeader
from ..gid import (
    UINT64_MAX,
    MetaDiff,
    MetaSnap,
    MetaState,
    Relation,
    Restorable,
    apply,
    begin_applying,
    diff_file_name,
    end_applying,
    get_relation,
    merge,
)
from . import metadata
from .state import ARCHIVE_ACTIVE, ARCHIVE_TRANSITIONS, ActionCounter, Refused, StateMachine

TMP_SUFFIX = ".receiving"  # a diff being received
MERGING_SUFFIX = ".merging"  # a merge's output before it is complete and synced


class ArchiveAction(enum.StrEnum):
    """Background work on an archived volume (WalB's action names, and VirtualScan)."""

    MERGE = "Merge"
    APPLY = "Apply"
    RESTORE = "Restore"
    REPL_SYNC_AS_CLIENT = "ReplSyncAsClient"
    RESIZE = "Resize"
    FULL_SYNC = "FullSync"
    HASH_SYNC = "HashSync"  # a hash backup reads the image at the latest snapshot from base + diffs
    VIRTUAL_SCAN = "VirtualScan"  # bhash, virt-full-scan: read the base and the diffs
    SNAPSHOT_FLAGS = "SnapshotFlags"  # disable-snapshot, enable-snapshot: rename diff files


# Archive states in which the volume has no complete base image.
NO_BASE_STATES = frozenset({"Clear", "InitVol", "ClearVol", "SyncReady", "ResetVol", "FullSync", "Resync"})

# What each operation refuses to run beside (walb.md §3.3). Restore, apply and merge exclude each
# other both ways, and a virtual scan reads the base and the diffs as a restore does: an apply
# rewrites the base and a merge deletes the diffs under them.
_ALL_ACTIONS = tuple(ArchiveAction)
EXCLUSIONS: dict[str, tuple[str, ...]] = {
    "restore": ("Restore", "Apply", "Merge", "Resize"),
    "virtual-scan": ("Apply", "Merge", "Resize"),
    "apply": ("Restore", "VirtualScan", "ReplSyncAsClient", "Apply", "Merge", "Resize", "SnapshotFlags", "HashSync"),
    "merge": ("Restore", "VirtualScan", "ReplSyncAsClient", "Apply", "Merge", "Resize", "SnapshotFlags", "HashSync"),
    # A replication reads the stored diffs: nothing may merge, apply or rename them meanwhile.
    "replicate": ("Restore", "ReplSyncAsClient", "Apply", "Merge", "Resize", "SnapshotFlags"),
    "hash-sync": ("Apply", "Merge", "Resize", "ReplSyncAsClient", "HashSync"),
    "snapshot-flags": ("Restore", "VirtualScan", "ReplSyncAsClient", "Apply", "Merge", "SnapshotFlags"),
    "gc-diff": ("Apply", "Merge", "ReplSyncAsClient"),
    "resize": ("Restore", "ReplSyncAsClient", "Apply", "Resize", "HashSync", "FullSync"),
    "del-restored": ("Restore", "Resize"),
    "stop": _ALL_ACTIONS,
    "clear-vol": _ALL_ACTIONS,
    "reset-vol": _ALL_ACTIONS,
    "full-sync": _ALL_ACTIONS,
}


@dataclass(frozen=True)
class ApplyPlan:
    """An apply of ``diffs`` into the base: ``applying`` is recorded before the first write,
    ``applied`` after the last (WalB's Applying; walb.md §5.6)."""

    diffs: tuple[MetaDiff, ...]
    paths: tuple[str, ...]
    applying: MetaState
    applied: MetaState


@dataclass(frozen=True)
class MergePlan:
    """A merge of ``inputs`` (oldest first) into one sorted wdiff described by ``merged``."""

    inputs: tuple[MetaDiff, ...]
    paths: tuple[str, ...]
    merged: MetaDiff  # data_size 0 until written


@dataclass(frozen=True)
class PartialReplica:
    """A full replication cut short, kept to be resumed (WalB's full_repl_state): the first
    ``done_lb`` LB of the base are the source's image of ``base`` and are synced."""

    archive_uuid: bytes
    base: str  # the MetaState text the source sent
    size_lb: int
    done_lb: int  # [LB]

    def as_dict(self) -> dict[str, Any]:
        return {"archive_uuid": self.archive_uuid.hex(), "base": self.base, "size_lb": self.size_lb,
                "done_lb": self.done_lb}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> PartialReplica:
        return cls(bytes.fromhex(value["archive_uuid"]), str(value["base"]), int(value["size_lb"]),
                   int(value["done_lb"]))


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
        partial = meta.get("partial_replica")
        self.partial_replica = PartialReplica.from_dict(partial) if partial else None
        self.actions = ActionCounter(self.vol)
        self.restoring: set[int] = set()  # gids whose restore is running
        self.progress_lb = 0
        self.diffs = self._scan()

    # ------------------------------------------------------------------ persistence

    def _meta(self) -> dict[str, Any]:
        meta = {"vol": self.vol, "state": self.machine.state, "base": str(self.base), "uuid": self.uuid.hex(),
                "archive_uuid": self.archive_uuid.hex(), "size_lb": self.size_lb}
        if self.partial_replica is not None:
            meta["partial_replica"] = self.partial_replica.as_dict()
        return meta

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
            if name.endswith((TMP_SUFFIX, MERGING_SUFFIX)):
                os.unlink(os.path.join(self.directory, name))  # a transfer or merge cut short
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
        self.refuse_if_busy("clear-vol")
        with self.machine.transaction(("SyncReady", "Stopped"), "ClearVol") as tx:
            remove_images(self.vol)
            shutil.rmtree(self.directory, ignore_errors=True)
            self.partial_replica = None
            self.diffs = self._scan()
            tx.commit("Clear")

    def reset_vol(self, remove_images: Any) -> None:
        self.refuse_if_busy("reset-vol")
        with self.machine.transaction(("SyncReady", "Stopped"), "ResetVol") as tx:
            remove_images(self.vol)
            self._forget_history()
            tx.commit("SyncReady")

    def reset_for_resync(self) -> None:
        """WalB's resync path up to SyncReady (Archived → Stop → Stopped → ResetVol → SyncReady):
        the diffs and snapshots go and the base stays, for a resync to overwrite in place the bulks
        that differ (walb.md §3.3)."""
        self.refuse_if_busy("full-sync")
        if self.state == "Archived":
            self.stop()
        with self.machine.transaction(("SyncReady", "Stopped"), "ResetVol") as tx:
            self._forget_history()
            tx.commit("SyncReady")

    def _forget_history(self) -> None:
        """Delete every diff and forget the base's state and lineage (its image is the caller's)."""
        for name in os.listdir(self.directory):
            if name.endswith(".wdiff"):
                os.unlink(os.path.join(self.directory, name))
        self.base = MetaState(MetaSnap(0))
        self.uuid = self.archive_uuid = bytes(16)
        self.size_lb = 0
        self.partial_replica = None
        self.diffs = self._scan()

    def start(self) -> None:
        with self.machine.transaction("Stopped", "Start") as tx:
            tx.commit("Archived")

    def stop(self) -> None:
        self.refuse_if_busy("stop")
        with self.machine.transaction("Archived", "Stop") as tx:
            tx.commit("Stopped")

    # ------------------------------------------------------------------ full backup

    def begin_full_sync(self) -> Any:
        """Enter FullSync (SyncReady only); the caller commits or the transaction rolls back."""
        if self.state != "SyncReady":
            raise Refused("not-sync-ready", f"{self.vol}: bad state {self.state} for a full backup (needs SyncReady;"
                          " an archived volume must be cleared or reset first)")
        self.refuse_if_busy("full-sync")
        return self.machine.transaction("SyncReady", "FullSync")

    def finish_full_sync(self, tx: Any, uuid: bytes, size_lb: int, gid_e: int, timestamp: int) -> None:
        """The base is complete: it holds the volume somewhere between gid 0 and ``gid_e``."""
        self.base = MetaState(MetaSnap(0, gid_e), timestamp=timestamp)
        self.partial_replica = None
        self.uuid = uuid
        self.archive_uuid = uuidlib.uuid4().bytes  # a new archive lineage begins
        self.size_lb = size_lb
        tx.commit("Archived")

    # ------------------------------------------------------------------ replication

    def begin_replicate(self) -> Any:
        """Start the source's side of a replication (WalB's ReplSyncAsClient action)."""
        self.require_active("replicate")
        if self.base.is_applying:
            raise Refused("bad-state", f"{self.vol}: the base is being applied ({self.base}); replicate afterwards")
        self.refuse_if_busy("replicate")
        return self.actions.begin(ArchiveAction.REPL_SYNC_AS_CLIENT)

    def replication_kind(self, archive_uuid: bytes, size_lb: int, do_resync: bool, has_base: bool) -> str:
        """The destination's choice (walb.md §6.7): ``full`` into a SyncReady volume (``resync``
        there with do_resync when a base image is left to compare against), ``resync`` into an
        archived one of another lineage or whenever do_resync is asked, ``diff`` otherwise (the
        source then sends diffs, or a hash sync when its base is past this volume's latest).

        Raises:
            Refused: another lineage without do_resync (``resync-needed``), a volume too small,
                or a state that takes no replication.
        """
        if self.state == "SyncReady":
            self.refuse_if_busy("full-sync")
            return "resync" if do_resync and has_base else "full"
        if self.state != "Archived":
            raise Refused("bad-state", f"{self.vol}: bad state {self.state} for a replication (needs SyncReady or "
                          "Archived)")
        if archive_uuid != self.archive_uuid and not do_resync:
            raise Refused("resync-needed", f"{self.vol}: this archive's lineage {self.archive_uuid.hex()} is not the "
                          f"source's {archive_uuid.hex()} (a new full backup began another); replicate with doResync")
        if do_resync:
            self.refuse_if_busy("full-sync")
            return "resync"
        if size_lb > self.size_lb:
            raise Refused("smaller-lv-size", f"{self.vol}: volume of {size_lb} LB does not fit the base of "
                          f"{self.size_lb} LB; resize it here first")
        return "diff"

    def resumable_replica(self, archive_uuid: bytes, size_lb: int, has_base: bool) -> PartialReplica | None:
        """The full replication cut short that a new one from the same lineage and size may
        resume, if any (the source resumes it only when its base is still the one recorded)."""
        partial = self.partial_replica
        if partial is None or not has_base or partial.archive_uuid != archive_uuid or partial.size_lb != size_lb:
            return None
        return partial

    def note_partial_replica(self, partial: PartialReplica | None) -> None:
        """Record (durably) how much of a full replication's base is synced, or that none is kept."""
        self.partial_replica = partial
        self.save()

    def finish_replica(self, tx: Any, uuid: bytes, size_lb: int, base: MetaState, archive_uuid: bytes) -> None:
        """A full replication's base is complete and synced: it is the source's, of its lineage."""
        self.partial_replica = None
        self.base = base
        self.uuid = uuid
        self.archive_uuid = archive_uuid
        self.size_lb = size_lb
        tx.commit("Archived")

    # ------------------------------------------------------------------ resize

    def plan_resize(self, size_lb: int) -> int | None:
        """The size to grow to, or None when the volume is that large already (WalB's archive resize).

        Raises:
            Refused: a state resize cannot run in, or an action it excludes.
            OperationError: a smaller size (volumes never shrink).
        """
        if self.state not in ARCHIVE_ACTIVE | {"SyncReady", "Stopped"}:
            raise Refused("bad-state", f"{self.vol}: bad state {self.state} for resize")
        self.refuse_if_busy("resize")
        if size_lb < self.size_lb:
            raise OperationError(f"{self.vol}: cannot shrink from {self.size_lb} to {size_lb} LB")
        return None if size_lb == self.size_lb else size_lb

    # ------------------------------------------------------------------ hash backup (walb.md §6.4)

    def begin_hash_sync(self, size_lb: int, via: str = "HashSync") -> Any:
        """Enter HashSync (or ReplSyncAsServer for a hash replication; Archived only); the caller
        commits or the transaction rolls back.

        Raises:
            Refused: not Archived (``not-archived``: a hash backup needs a base; take a full one),
                a volume larger than the archive's (``smaller-lv-size``), or an action it excludes.
        """
        if self.state != "Archived":
            raise Refused("not-archived", f"{self.vol}: bad state {self.state} for a hash backup (needs Archived: "
                          "an archive without the volume's base needs a full backup)")
        if size_lb > self.size_lb:
            raise Refused("smaller-lv-size", f"{self.vol}: volume of {size_lb} LB does not fit the archive's "
                          f"{self.size_lb} LB (resize the archive first)")
        self.refuse_if_busy("hash-sync")
        return self.machine.transaction("Archived", via)

    def scan_diffs(self, snap: MetaSnap) -> list[str]:
        """The diffs to lay over the base to read the image at ``snap`` (a snapshot of the chain)."""
        return [self.diffs.path_of(diff) for diff in self.diffs.chain.diffs_to_scan(self.base, snap.gid_b)]

    def hash_sync_diff(self, snap: MetaSnap, gid_e: int, timestamp: int) -> MetaDiff:
        """The diff a hash backup from ``snap`` up to the storage's gid ``gid_e`` stores: dirty
        ``snap-->|snap.gid_e+1, gid_e|``, mergeable iff ``snap`` is dirty (WalB)."""
        if gid_e < snap.gid_e + 1:
            raise BadField(f"{self.vol}: the hash backup ended at gid {gid_e}, before {snap.gid_e + 1}")
        return MetaDiff(snap, MetaSnap(snap.gid_e + 1, gid_e), is_mergeable=snap.is_dirty, timestamp=timestamp)

    def finish_hash_sync(self, tmp_path: str, diff: MetaDiff, uuid: bytes, verified: FileHeader) -> MetaDiff:
        """The hash backup's diff is complete and synced: the volume takes the device's new uuid and the diff."""
        previous = self.uuid
        self.uuid = uuid
        try:
            stored, final = self.store_received_diff(tmp_path, diff, verified)
        except BaseException:
            self.uuid = previous
            raise
        self.register_diff(stored, final)
        self.save()
        return stored

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

    def store_received_diff(self, tmp_path: str, diff: MetaDiff, verified: FileHeader | None = None,
                            uuid: bytes | None = None) -> tuple[MetaDiff, str]:
        """Verify a received wdiff (sorted or indexed, fsynced) and give it its WalB name.

        Touches files only, so it may run in a thread; :meth:`register_diff` then makes it
        part of the volume.

        Args:
            verified: the file header if the caller already verified the file completely
                (``verify_wdiff``); otherwise it is verified here.
            uuid: the uuid its header must have (default: the volume's; a replicated diff
                has the one its source took it with).

        Raises:
            FormatError: the file is corrupt (it is removed and nothing changes).
            OperationError: its uuid is not the volume's (likewise).
        """
        try:
            header = verified if verified is not None else verify_wdiff(tmp_path)
            expected = self.uuid if uuid is None else uuid
            if header.uuid != expected:
                raise OperationError(f"{self.vol}: received diff has uuid {header.uuid.hex()}, not {expected.hex()}")
        except (FormatError, OperationError):
            os.unlink(tmp_path)
            raise
        stored = MetaDiff(diff.snap_b, diff.snap_e, diff.is_mergeable, diff.is_comp_diff, diff.timestamp,
                          os.path.getsize(tmp_path))
        final = self.diffs.path_for(stored)
        os.replace(tmp_path, final)
        metadata.fsync_dir(self.directory)
        return stored, final

    def register_diff(self, diff: MetaDiff, path: str) -> None:
        """Make a diff whose file is in place part of the chain (on the agent's event loop)."""
        self.diffs.add(diff, path)

    def add_received_diff(self, tmp_path: str, diff: MetaDiff, verified: FileHeader | None = None) -> MetaDiff:
        """:meth:`store_received_diff` then :meth:`register_diff`; returns the stored diff."""
        stored, final = self.store_received_diff(tmp_path, diff, verified)
        self.register_diff(stored, final)
        return stored

    # ------------------------------------------------------------------ exclusion

    def refuse_if_busy(self, operation: str) -> None:
        """Refuse ``operation`` (a key of EXCLUSIONS) with reason ``busy`` naming the running action."""
        self.actions.refuse_if_running(EXCLUSIONS[operation], operation)

    def require_active(self, operation: str) -> None:
        if self.state not in ARCHIVE_ACTIVE:
            raise Refused("bad-state", f"{self.vol}: bad state {self.state} for {operation} (needs Archived)")

    def record_base(self, state: MetaState) -> None:
        """Make ``state`` the base's MetaState, durably."""
        self.base = state
        self.save()

    # ------------------------------------------------------------------ apply (walb.md §5.6)

    def plan_apply(self, gid: int) -> ApplyPlan | None:
        """What ``apply VOL GID`` does: the diffs up to clean snapshot ``gid`` and the two base states.

        None when the base is at ``gid`` already (nothing to do). An applying base is finished
        first: the plan then reaches at least its snap_e.

        Raises:
            Refused: the volume is not Archived, or an action it excludes runs.
            OperationError: ``gid`` is not a restorable snapshot.
        """
        self.require_active("apply")
        self.refuse_if_busy("apply")
        if self.diffs.chain.diffs_to_materialize(self.base, gid, must_be_clean=True) is None:
            raise OperationError(f"{self.vol}: snapshot {gid} is not restorable; apply needs a restorable gid "
                                 f"(get restorable {self.vol} all)")
        return self._apply_plan(self.diffs.chain.diffs_to_apply(self.base, gid))

    def plan_resume_apply(self) -> ApplyPlan | None:
        """The plan that finishes an applying base with the same diffs; None if it is not applying."""
        if not self.base.is_applying:
            return None
        return self._apply_plan(self.diffs.chain.minimal_applying_list(self.base))

    def _apply_plan(self, diffs: Sequence[MetaDiff]) -> ApplyPlan | None:
        if not diffs:
            return None
        return ApplyPlan(tuple(diffs), tuple(self.diffs.path_of(diff) for diff in diffs),
                         begin_applying(self.base, *diffs), end_applying(self.base, *diffs))

    def applied_diffs(self) -> list[MetaDiff]:
        """Diffs the base holds already (their end is at or before the base's snapshot)."""
        base_gid = self.base.snap_b.gid_b
        return [diff for diff in self.diffs.chain if diff.snap_e.gid_b <= base_gid]

    # ------------------------------------------------------------------ merge

    def plan_merge(self, gid_b: int, gid_e: int | None = None, max_size: int | None = None) -> MergePlan:
        """What ``merge VOL GIDB [GIDE] [MAX_SIZE]`` does (WalB's getMergeableDiffList).

        Starts at the diff whose snap_b.gid_b is ``gid_b`` and takes the mergeable diffs after it,
        stopping before a diff that starts at or after ``gid_e`` and where the total size would
        pass ``max_size`` bytes.

        Raises:
            Refused: not Archived, an action it excludes runs, or the base is applying.
            OperationError: no diff starts at ``gid_b``, or fewer than two diffs merge there.
        """
        self.require_active("merge")
        self.refuse_if_busy("merge")
        if self.base.is_applying:
            raise Refused("applying", f"{self.vol}: the base is applying {self.base.to_str(False)}; "
                          "finish the apply before merging")
        if gid_e is not None and gid_e <= gid_b:
            raise UsageError(f"merge: GIDE {gid_e} must be greater than GIDB {gid_b}")
        chain = self.diffs.chain.applicable_diffs(self.base.snap_b)
        if not any(diff.snap_b.gid_b == gid_b for diff in chain):
            raise OperationError(f"{self.vol}: no diff of the chain starts at snapshot {gid_b}")
        inputs = self.diffs.chain.mergeable_diffs(gid_b, max_size, gid_e)
        if not all(diff in chain for diff in inputs):
            raise OperationError(f"{self.vol}: the diffs after snapshot {gid_b} are not on the chain from the base")
        if len(inputs) < 2:
            raise OperationError(f"{self.vol}: nothing to merge from snapshot {gid_b}"
                                 + (f" before {gid_e}" if gid_e is not None else "")
                                 + ": the next snapshot is explicit, or the range holds one diff")
        merged = merge(*inputs)
        if self.diffs.chain.get(merged) is not None:
            raise OperationError(f"{self.vol}: a diff {merged.range_str()} exists already")
        return MergePlan(tuple(inputs), tuple(self.diffs.path_of(diff) for diff in inputs), merged)

    def write_merged(self, plan: MergePlan, compression: Compression = Compression.LZ4) -> tuple[MetaDiff, str]:
        """Merge the inputs into one sorted wdiff, fsync it and give it its name (files only: a thread).

        Every input record is read with its checksum checked; a corrupt input leaves nothing
        behind. The inputs stay until the caller removes them, after this returned.
        """
        # The newest input's uuid, as WalB's DiffMerger gives it: inputs may differ where a hash
        # backup began a new uuid between them, and the history before it must stay mergeable.
        uuid = read_header(plan.paths[-1]).uuid
        tmp = os.path.join(self.directory, f"merged{MERGING_SUFFIX}")
        try:
            with open(tmp, "wb") as out:
                write_sorted(merge_ios([iter_diff(path) for path in plan.paths]),
                             SortedDiffWriter(out, uuid, compression))
                out.flush()
                os.fsync(out.fileno())
            crash_point("merge:written")
            stored = MetaDiff(plan.merged.snap_b, plan.merged.snap_e, plan.merged.is_mergeable,
                              plan.merged.is_comp_diff, plan.merged.timestamp, os.path.getsize(tmp))
            final = self.diffs.path_for(stored)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(self.directory)
        crash_point("merge:renamed")
        return stored, final

    # ------------------------------------------------------------------ snapshots, gc

    def plan_snapshot_flags(self, gids: Iterable[int], enabled: bool) -> list[tuple[MetaDiff, MetaDiff]]:
        """The renames that make snapshots ``gids`` explicit (enabled) or implicit (disable-snapshot).

        Raises:
            Refused: not Archived, or an action it excludes runs.
            OperationError: a gid is not a snapshot of the chain that a diff starts at (the
                latest snapshot and the base's cannot change); nothing is planned then.
        """
        what = "enable-snapshot" if enabled else "disable-snapshot"
        self.require_active(what)
        self.refuse_if_busy("snapshot-flags")
        chain = self.diffs.chain.applicable_diffs(self.base.snap_b)
        starts = {diff.snap_b.gid_b for diff in chain}
        latest = self.latest_snap().gid_b
        changes = []
        for gid in dict.fromkeys(gids):
            if gid not in starts:
                why = "it is the latest snapshot" if gid == latest else "no diff of the chain starts there"
                raise OperationError(f"{self.vol}: cannot {what.split('-')[0]} snapshot {gid}: {why}")
            changes += self.diffs.chain.snapshot_flag_changes(gid, enabled)
        return changes

    def rename_diff_files(self, changes: Sequence[tuple[MetaDiff, MetaDiff]]) -> None:
        """Rename each diff's file to its new name and sync the directory (files only: a thread)."""
        for old, new in changes:
            os.replace(self.diffs.path_of(old), self.diffs.path_for(new))
            crash_point("snapshot-flag:renamed")
        if changes:
            fsync_dir(self.directory)

    def commit_snapshot_flags(self, changes: Sequence[tuple[MetaDiff, MetaDiff]]) -> None:
        for old, new in changes:
            self.diffs.renamed(old, new)

    def garbage(self) -> list[MetaDiff]:
        """Diffs no restore or apply can use: off the chain from the base (WalB's gc)."""
        keep = set(self.diffs.chain.applicable_diffs(self.base.snap_b))
        return [diff for diff in self.diffs.chain if diff not in keep]

    def forget_diffs(self, diffs: Iterable[MetaDiff]) -> list[str]:
        """Take diffs out of the chain; returns their files for :func:`delete_diff_files`."""
        return self.diffs.forget(diffs)

    def meta_snap(self, gid: int | None = None) -> MetaSnap:
        """The snapshot the base reaches with the applicable diffs up to ``gid`` (``get meta-snap``)."""
        return apply(self.base.snap_b, *self.diffs.chain.applicable_diffs(self.base.snap_b, max_gid=gid))

    def meta_state(self, applying: bool, gid: int | None = None) -> MetaState:
        """``get meta-state``: the base after (or, ``applying``, while) applying the diffs up to ``gid``."""
        diffs = self.diffs.chain.diffs_to_apply(self.base, gid) if gid is not None else \
            self.diffs.chain.applicable_diffs(self.base.snap_b)
        return begin_applying(self.base, *diffs) if applying else end_applying(self.base, *diffs)

    # ------------------------------------------------------------------ restore

    def restorable(self, include_implicit: bool = False) -> list[Restorable]:
        if self.state in NO_BASE_STATES:
            return []  # the base is missing or incomplete: nothing restores yet
        return self.diffs.chain.restorable_list(self.base, include_implicit)

    def restore_paths(self, gid: int) -> list[str]:
        self.require_active("a restore")
        self.refuse_if_busy("restore")
        return self.diffs.restore_paths(self.base, gid)

    def scan_paths(self, gid: int) -> list[str]:
        """The diffs to lay over the base to read snapshot ``gid`` (clean or dirty) virtually."""
        self.require_active("a virtual scan")
        self.refuse_if_busy("virtual-scan")
        return [self.diffs.path_of(diff) for diff in self.diffs.chain.diffs_to_scan(self.base, gid)]

    def diffs_in(self, gid_b: int = 0, gid_e: int | None = None) -> list[MetaDiff]:
        """Diffs with gid_b <= snap_b.gid_b < gid_e (``get diff VOL [GID0 [GID1]]``)."""
        return self.diffs.chain.in_range(gid_b, UINT64_MAX if gid_e is None else gid_e)

    def diff_list(self, gid_b: int = 0, gid_e: int | None = None) -> list[dict[str, Any]]:
        return [DiffSummary(diff).as_dict() for diff in self.diffs_in(gid_b, gid_e)]

    def total_diff_size(self, gid_b: int = 0, gid_e: int | None = None) -> int:
        return sum(diff.data_size for diff in self.diffs_in(gid_b, gid_e))

    def status(self) -> dict[str, Any]:
        latest = self.latest_snap() if self.state != "Clear" else None
        return {
            "vol": self.vol, "state": self.state, "base": str(self.base), "uuid": self.uuid.hex(),
            "archive_uuid": self.archive_uuid.hex(), "size_lb": self.size_lb, "num_diff": len(self.diffs.chain),
            "total_diff_size": self.total_diff_size(), "latest_snap": str(latest) if latest else None,
            "progress_lb": self.progress_lb, "time": int(time.time()),
            "actions": {name: count for name in ArchiveAction if (count := self.actions.count(name))},
        }


def delete_diff_files(directory: str, paths: Sequence[str]) -> None:
    """Delete diff files no longer in a chain, then sync the directory (a thread may run this)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        crash_point("diff:removed")
    if paths:
        fsync_dir(directory)
