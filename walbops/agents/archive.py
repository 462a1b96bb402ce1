"""The archive agent (walb-archive): base images, diffs, restores, and their lifecycle.

Commands (walbc's names): init-vol, clear-vol, reset-vol, start, stop, restore, del-restored,
apply, merge, disable-snapshot, enable-snapshot, gc-diff, bhash, virt-full-scan, get;
transfers: dirty-full-sync (full backup from a storage) and wdiff-transfer (diffs from a
proxy). Every received byte is durable before ``ack``.

Apply, merge and the flag renames run in threads but change the volume's chain and base
state only on the event loop, so a ``get`` never sees a chain half changed. At start the
agent removes what an interrupted merge or transfer left, deletes diffs no chain uses
(WalB's gc at startup), and finishes an apply that was interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ..blockdev import pwrite_all, zero_range
from ..diff import bhash
from ..diff.engine import DiscardPolicy, full_image
from ..diff.files import merged_ios, read_header, verify_wdiff
from ..diff.io import DiffIo, IoKind
from ..diff.sorted_file import SortedDiffWriter
from ..errors import BadField, InvalidMessage, OperationError, ProtocolError, UsageError, WalbopsError
from ..faults import crash_point
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wdiff import FileHeader
from ..gid import MetaDiff, MetaSnap, MetaState, apply, format_pretty_time
from ..net import messages
from ..net.stream import HashSyncCursor
from ..store import Store, store_from_config
from ._server import GID, VOL, Agent, Command, Request, args_schema
from .archive_volume import (
    NO_BASE_STATES,
    ApplyPlan,
    ArchiveAction,
    ArchiveVolume,
    MergePlan,
    PartialReplica,
    delete_diff_files,
)
from .config import Config
from .metrics import Families
from .state import ARCHIVE_ACTIVE, Refused
from .transfers import (
    InOrder,
    file_chunks,
    prefetched,
    receive_file,
    receive_hash_sync,
    receive_image,
    request_accepted,
    send_base_replica,
    send_differing_bulks,
    send_image,
    send_wdiff,
)

FSYNC_INTERVAL = 1 << 30  # [bytes] sync the base this often while a full backup streams (WalB -fi)
REPL_CHECKPOINT = 64 << 20  # [bytes] a full replication syncs and records its progress this often (to resume)
MAX_BULK = 64 << 20  # [bytes] the largest bulk a bhash or virt-full-scan may ask for
DIFF_SLACK = 64 << 20  # [bytes] headers and end marker of a diff of a tiny volume, and then some
SCAN_READ = 4 << 20  # [bytes] a virt-full-scan reads and sends this much of the image at a time
STOP_WAIT = 20.0  # [s] stop waits this long for a transfer being received (under a caller's 30 s timeout)
STOP_POLL = 0.05  # [s] between its looks
_BULK = {"type": "integer", "minimum": LOGICAL_BLOCK_SIZE, "maximum": MAX_BULK, "multipleOf": LOGICAL_BLOCK_SIZE}
_SIZE = {"type": "integer", "minimum": 1, "maximum": messages.U64_MAX}
_HOST = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\s]+$"}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
REPL_BULK_LB = 512  # [LB] bulk of a full replication's image stream (WalB's default, 256 KiB)
_GIDS = {"type": "array", "items": GID, "minItems": 1, "maxItems": 10000}


class ArchiveAgent(Agent[ArchiveVolume]):
    host_type = "archive"
    volume_class = ArchiveVolume

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.store: Store = store_from_config(config.store, config.base_dir)
        self.discard = DiscardPolicy(config.discard)
        # (vol, destination "host:port") -> where this agent last left a replication there
        self.replicas: dict[tuple[str, str], dict[str, Any]] = {}
        vol_only = args_schema({"vol": VOL})
        vol_gid = args_schema({"vol": VOL, "gid": GID})
        vol_gids = args_schema({"vol": VOL, "gids": _GIDS})
        self.commands.update({
            "init-vol": Command(self.cmd_init_vol, vol_only, "Clear -> SyncReady"),
            "clear-vol": Command(self.cmd_clear_vol, vol_only, "delete the volume's base, diffs, restores"),
            "reset-vol": Command(self.cmd_reset_vol, vol_only, "Stopped/SyncReady -> SyncReady, wiped"),
            "start": Command(self.cmd_start, vol_only, "Stopped -> Archived"),
            "stop": Command(self.cmd_stop, args_schema({"vol": VOL}, {"mode": {"enum": ["graceful", "force"]}}),
                            "Archived -> Stopped"),
            "restore": Command(self.cmd_restore, vol_gid, "materialise snapshot gid (asynchronous)"),
            "del-restored": Command(self.cmd_del_restored, vol_gid, "remove a restored snapshot"),
            "apply": Command(self.cmd_apply, vol_gid, "apply the diffs up to snapshot gid to the base (asynchronous)"),
            "merge": Command(self.cmd_merge, args_schema({"vol": VOL, "gid_b": GID},
                                                         {"gid_e": GID, "max_size": _SIZE}),
                             "merge the mergeable diffs from gid_b into one (asynchronous)"),
            "disable-snapshot": Command(self.cmd_disable_snapshot, vol_gids, "make explicit snapshots implicit"),
            "enable-snapshot": Command(self.cmd_enable_snapshot, vol_gids, "make implicit snapshots explicit"),
            "gc-diff": Command(self.cmd_gc_diff, vol_only, "delete the diffs no chain from the base uses"),
            "resize": Command(self.cmd_resize,
                              args_schema({"vol": VOL, "size": _SIZE}, {"zeroclear": {"type": "boolean"}}),
                              "grow the volume's base (zeroclear: zero the new range of a thick LV)"),
            "bhash": Command(self.cmd_bhash, args_schema({"vol": VOL, "gid": GID}, {"bulk": _BULK, "size": _SIZE}),
                             "stream hash of the image at gid, read from base + diffs"),
            messages.VIRT_FULL_SCAN: Command(self.cmd_virt_full_scan,
                                             args_schema({"vol": VOL, "gid": GID}, {"bulk": _BULK, "size": _SIZE}),
                                             "stream the image at gid to the client"),
            messages.DIRTY_FULL_SYNC: Command(self.recv_full_sync, {"type": "object"}, "full backup receiver",
                                              frozenset({"storage"})),
            # From a storage (hash backup), and from another archive (hash replication, walb.md §6.7).
            messages.DIRTY_HASH_SYNC: Command(self.recv_hash_sync, {"type": "object"}, "hash backup receiver",
                                              frozenset({"storage", "archive"})),
            # From a proxy, and from another archive when it replicates (walb.md §6.7).
            messages.WDIFF_TRANSFER: Command(self.recv_wdiff, {"type": "object"}, "diff receiver",
                                             frozenset({"proxy", "archive"})),
            messages.REPL_SYNC: Command(self.recv_repl_sync, {"type": "object"}, "replication receiver",
                                        frozenset({"archive"})),
            # A storage asks for the volumes it is Target of (its get ts-delta, walb.md §6.8).
            messages.GATHER_LATEST_SNAP: Command(
                self.cmd_gather_latest_snap,
                args_schema({"vols": {"type": "array", "items": VOL, "maxItems": messages.MAX_GATHERED_VOLUMES}}),
                "the latest snapshot of each of these volumes held here", frozenset({"storage", "controller"})),
            "replicate": Command(self.cmd_replicate,
                                 args_schema({"vol": VOL, "host": _HOST, "port": _PORT},
                                             {"gid": GID, "size": {**_SIZE, "minimum": 0},
                                              "do_resync": {"type": "boolean"}}),
                                 "replicate to another archive: up to gid, or until at most size bytes of diffs "
                                 "remain (asynchronous)"),
        })
        vol_getter = self.vol_getter
        self.getters.update({
            "state": vol_getter(lambda v, a: v.state),
            "uuid": vol_getter(lambda v, a: v.uuid.hex()),
            "archive-uuid": vol_getter(lambda v, a: v.archive_uuid.hex()),
            "base": vol_getter(lambda v, a: str(v.base)),
            "vol-size": vol_getter(lambda v, a: v.size_lb),
            "progress": vol_getter(lambda v, a: v.progress_lb),
            "num-diff": vol_getter(lambda v, a: len(v.diffs_in(*gid_range(a)))),
            "total-diff-size": vol_getter(lambda v, a: v.total_diff_size(*gid_range(a))),
            "diff": vol_getter(lambda v, a: v.diff_list(*gid_range(a))),
            "applicable-diff": vol_getter(lambda v, a: [
                str(diff) for diff in v.diffs.chain.applicable_diffs(v.base.snap_b, max_gid=optional_gid(a))]),
            "exists-diff": vol_getter(lambda v, a: int(exists_diff(v, a))),
            "latest-snap": vol_getter(lambda v, a: str(v.latest_snap()), lambda v: {
                "kind": "archive", "snap": str(v.latest_snap()), "gid": v.latest_snap().gid_b,
                "timestamp": self.newest_timestamp(v)}),
            "exists-base-image": vol_getter(lambda v, a: int(self.store.base_exists(v.vol))),
            "restorable": vol_getter(lambda v, a: [
                {"gid": r.gid, "timestamp": r.timestamp, "explicit": r.is_explicit,
                 "text": f"{r.gid} {format_pretty_time(r.timestamp)} {int(r.is_explicit)}"}
                for r in v.restorable(include_implicit=a == "all" or a == ["all"])]),
            "restored": vol_getter(lambda v, a: self.store.restored(v.vol)),
            "ts-delta": lambda args: (self.ts_delta(self.volume(args["vol"])) if args.get("vol") is not None else
                                      [entry for volume in self.stored_volumes() if volume.state in ARCHIVE_ACTIVE
                                       for entry in self.ts_delta(volume)]),
            "restoring": vol_getter(lambda v, a: sorted(v.restoring)),
            "base-usage": vol_getter(lambda v, a: self.store.base_allocated(v.vol) if self.store.base_exists(v.vol)
                                     else 0),
            "restored-path": vol_getter(lambda v, a: self._restored_device(v.vol, required_gid(a))),
            "num-action": vol_getter(lambda v, a: v.actions.count(action_name(a))),
            "action-result": vol_getter(lambda v, a: action_result(v, action_name(a))),
            "meta-snap": vol_getter(lambda v, a: str(v.meta_snap(optional_gid(a)))),
            "meta-state": vol_getter(lambda v, a: str(v.meta_state(*meta_state_args(a)))),
            "base-all": lambda args: [{"name": vol, "metastate": str(self.volume(vol).base)}
                                      for vol in self.active_volume_ids()],
            "all-actions": lambda args: [all_actions(self.volume(vol)) for vol in self.active_volume_ids()],
        })

    def check_volume_size(self, vol: str, size_lb: int) -> None:
        """Refuse a volume size a peer announces beyond ``max_volume_size``, before any space is taken."""
        if size_lb * LOGICAL_BLOCK_SIZE > int(self.config.max_volume_size):
            raise UsageError(f"{vol}: a volume of {size_lb * LOGICAL_BLOCK_SIZE} bytes is larger than this "
                             f"archive's max_volume_size ({self.config.max_volume_size} bytes)")

    def active_volume_ids(self) -> list[str]:
        """Volumes with a base state (not Clear); broken ones are in ``status``, not here."""
        return [volume.vol for volume in self.stored_volumes() if volume.state != "Clear"]

    # ------------------------------------------------------------------ volumes

    def collect_metrics(self, families: Families) -> None:
        super().collect_metrics(families)
        now = time.time()
        for volume in self.stored_volumes():
            if volume.state in NO_BASE_STATES:
                continue
            labels = {"vol": volume.vol}
            restorable = volume.restorable(include_implicit=True)
            if restorable:
                families.gauge("walbops_archive_rpo_seconds", "Age of the newest restorable snapshot (the RPO)",
                               labels, max(0.0, now - restorable[-1].timestamp))
                families.gauge("walbops_archive_restorable_snapshots", "Snapshots that restore, implicit ones too",
                               labels, len(restorable))
            families.gauge("walbops_archive_latest_gid", "Gid of the latest snapshot", labels,
                           volume.latest_snap().gid_b)
            families.gauge("walbops_archive_diffs", "Diffs stored", labels, len(volume.diffs.chain))
            families.gauge("walbops_archive_diff_bytes", "Bytes of diffs stored", labels, volume.total_diff_size())
            families.gauge("walbops_archive_restored_snapshots", "Restored snapshots kept", labels,
                           len(self.store.restored(volume.vol)))
            for action in ArchiveAction:
                families.gauge("walbops_archive_actions_running", "Actions running (apply, merge, restore, "
                               "replicate...)", {"vol": volume.vol, "action": str(action)},
                               volume.actions.count(action))
            for replica in self.ts_delta(volume):
                where = {"vol": volume.vol, "destination": replica["destination"]}
                families.gauge("walbops_archive_replication_lag_seconds", "How much older a replica's newest "
                               "snapshot is than this archive's", where, replica["time_delta"])
                families.gauge("walbops_archive_replication_lag_gids", "Gids a replica is behind", where,
                               replica["gid_delta"])

    def volume_status(self, vol: str) -> dict[str, Any]:
        volume = self.volume(vol)
        return {**volume.status(), "restorable": [r.gid for r in volume.restorable()]
                if volume.state in ARCHIVE_ACTIVE else [], "restored": self.store.restored(vol)}

    async def on_start(self) -> None:
        for volume in self.stored_volumes():
            vol = volume.vol
            for leftover in self.store.cleanup(vol):
                self.log.info("%s: removed %s left by an interrupted restore", vol, leftover)
            if volume.state not in volume.machine.steady_states - volume.machine.transient_states:
                volume.machine.force("SyncReady")
            if volume.state == "Clear":
                continue
            for gid in self.store.restored(vol):
                # Loop devices do not survive a reboot; the restored snapshots come back as devices.
                if self.store.attached(vol, gid) is None:
                    await asyncio.to_thread(self._attach_restored, vol, gid)
            garbage = volume.garbage()
            if garbage:
                # An apply or a merge that died after its new state was durable leaves these.
                self.log.info("%s: removing %d diffs no chain from base %s uses: %s", vol, len(garbage),
                              volume.base.to_str(False), ", ".join(d.range_str() for d in garbage))
                await asyncio.to_thread(delete_diff_files, volume.directory, volume.forget_diffs(garbage))
            plan = volume.plan_resume_apply()
            if plan is not None and volume.state in ARCHIVE_ACTIVE:
                self.log.info("%s: finishing the apply interrupted at base %s", vol, volume.base.to_str(False))
                self.spawn(self._apply(volume, plan, volume.actions.begin(ArchiveAction.APPLY)),
                           f"apply {vol} (resumed)")

    # ------------------------------------------------------------------ commands

    async def cmd_init_vol(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"], create=True)
        volume.init_vol()
        return {"state": volume.state}

    async def cmd_clear_vol(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.clear_vol(self.store.remove_volume)
        del self.volumes[volume.vol]
        return {"state": "Clear"}

    async def cmd_reset_vol(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.reset_vol(self.store.remove_volume)
        return {"state": volume.state}

    async def cmd_start(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.start()
        return {"state": volume.state}

    async def cmd_stop(self, request: Request) -> Any:
        """Archived -> Stopped. As WalB's stop, a transfer being received (WdiffRecv, HashSync,
        ReplSyncAsServer: moments of Archived) is waited for, up to STOP_WAIT; an action (a restore,
        an apply ...) is refused by name."""
        volume = self.volume(request.args["vol"])
        deadline = time.monotonic() + STOP_WAIT
        while volume.state in ARCHIVE_ACTIVE - {"Archived"} and time.monotonic() < deadline:
            await asyncio.sleep(STOP_POLL)
        volume.stop()  # no await between the last look and the transaction: nothing starts in between
        return {"state": volume.state}

    async def cmd_restore(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        gid = request.args["gid"]
        paths = volume.restore_paths(gid)
        if self.store.has_restored(volume.vol, gid):
            raise OperationError(f"{volume.vol}: snapshot {gid} is already restored")

        action = volume.actions.begin(ArchiveAction.RESTORE)
        action.detail["gid"] = gid
        volume.restoring.add(gid)

        async def restore() -> None:
            with action, _finally(lambda: volume.restoring.discard(gid)):
                restored = await asyncio.to_thread(self.store.restore, volume.vol, gid, paths, self.discard)
                self.log.info("%s: restored gid %d with %d diffs (%s) at %s", volume.vol, gid, len(paths),
                              restored.clone, restored.path)
                # Like WalB's restored LV, the snapshot is a block device as soon as it exists.
                action.detail["device"] = await asyncio.to_thread(self._attach_restored, volume.vol, gid)

        self.spawn(restore(), f"restore {volume.vol} {gid}")
        return {**messages.ACCEPTED, "started": action.started}

    async def cmd_del_restored(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.refuse_if_busy("del-restored")
        await asyncio.to_thread(self.store.delete_restored, volume.vol, request.args["gid"])
        return {"deleted": request.args["gid"]}

    def _attach_restored(self, vol: str, gid: int) -> str | None:
        """Attach a read-only loop device over restored ``gid``; None (and a warning) if that fails:
        the image is complete all the same, and ``get restored-path`` names the image itself."""
        try:
            return self.store.attach(vol, gid, read_only=True)
        except (WalbopsError, OSError) as exc:
            self.log.warning("%s: restored gid %d has no loop device: %s", vol, gid, exc)
            return None

    def _restored_device(self, vol: str, gid: int) -> str:
        """The loop device over restored ``gid``, or the image if none is attached; attaches nothing."""
        if not self.store.has_restored(vol, gid):
            raise OperationError(f"{vol}: snapshot {gid} is not restored on archive {self.config.id}")
        return self.store.attached(vol, gid) or self.store.restored_path(vol, gid)

    # ------------------------------------------------------------------ lifecycle (walb.md §5.6)

    async def cmd_apply(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        gid = request.args["gid"]
        plan = volume.plan_apply(gid)
        if plan is None:
            return {"applied": [], "base": str(volume.base)}
        action = volume.actions.begin(ArchiveAction.APPLY)
        self.spawn(self._apply(volume, plan, action), f"apply {volume.vol} {gid}")
        return {**messages.ACCEPTED, "started": action.started}

    async def _apply(self, volume: ArchiveVolume, plan: ApplyPlan, action: Any) -> None:
        """Write ``plan`` into the base: "applying" recorded once the diffs are verified, the new
        base recorded once it is synced, then the applied diffs deleted. A crash anywhere is
        finished at the next start (:meth:`on_start`)."""
        with action:
            started = time.monotonic()
            base_before = volume.base.to_str(False)

            def applying() -> None:  # in the apply's thread, between verification and the first write
                crash_point("apply:verified")
                volume.record_base(plan.applying)
                crash_point("apply:state-saved")

            stats = await asyncio.to_thread(self.store.apply_to_base, volume.vol, plan.paths, self.discard,
                                            applying, lambda: crash_point("apply:io"))
            crash_point("apply:written")
            volume.record_base(plan.applied)
            crash_point("apply:base-saved")
            applied = volume.applied_diffs()
            freed = sum(diff.data_size for diff in applied)
            await asyncio.to_thread(delete_diff_files, volume.directory, volume.forget_diffs(applied))
            action.detail.update(base=str(volume.base), diffs=len(applied), bytes_freed=freed)
            self.log.info("%s: applied %d diffs (%s) to base %s -> %s in %.2f s; %d diff bytes freed", volume.vol,
                          len(plan.diffs), stats.as_dict(), base_before, volume.base.to_str(False),
                          time.monotonic() - started, freed)

    async def cmd_merge(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        args = request.args
        plan = volume.plan_merge(args["gid_b"], args.get("gid_e"), args.get("max_size"))
        action = volume.actions.begin(ArchiveAction.MERGE)
        self.spawn(self._merge(volume, plan, action), f"merge {volume.vol} {plan.merged.range_str()}")
        return {**messages.ACCEPTED, "started": action.started, "merged": plan.merged.range_str(),
                "inputs": len(plan.inputs)}

    async def _merge(self, volume: ArchiveVolume, plan: MergePlan, action: Any) -> None:
        """Write the merged diff, make it durable and part of the chain, then delete the inputs."""
        with action:
            started = time.monotonic()
            stored, path = await asyncio.to_thread(volume.write_merged, plan)
            volume.register_diff(stored, path)
            before = sum(diff.data_size for diff in plan.inputs)
            await asyncio.to_thread(delete_diff_files, volume.directory, volume.forget_diffs(plan.inputs))
            action.detail.update(merged=stored.range_str(), diffs=len(plan.inputs),
                                 bytes_freed=before - stored.data_size)
            self.log.info("%s: merged %d diffs (%d bytes) into %s (%d bytes) in %.2f s", volume.vol, len(plan.inputs),
                          before, stored.range_str(), stored.data_size, time.monotonic() - started)

    async def cmd_disable_snapshot(self, request: Request) -> Any:
        return await self._snapshot_flags(request, enabled=False)

    async def cmd_enable_snapshot(self, request: Request) -> Any:
        return await self._snapshot_flags(request, enabled=True)

    async def _snapshot_flags(self, request: Request, enabled: bool) -> Any:
        volume = self.volume(request.args["vol"])
        changes = volume.plan_snapshot_flags(request.args["gids"], enabled)
        # Held while the files are renamed, so that no apply or merge starts in between.
        with volume.actions.begin(ArchiveAction.SNAPSHOT_FLAGS):
            try:
                await asyncio.to_thread(volume.rename_diff_files, changes)
            finally:
                # What was renamed is renamed: the directory is the truth, so the chain follows it.
                volume.commit_snapshot_flags([(old, new) for old, new in changes
                                              if os.path.exists(volume.diffs.path_for(new))])
        self.log.info("%s: %s snapshots %s (%d diffs renamed)", volume.vol, "enabled" if enabled else "disabled",
                      request.args["gids"], len(changes))
        return {"changed": [old.range_str() for old, _ in changes]}

    async def cmd_resize(self, request: Request) -> Any:
        """WalB's archive resize: grow the base (and the size diffs may have); never shrink."""
        volume = self.volume(request.args["vol"])
        size = int(request.args["size"])
        if size % LOGICAL_BLOCK_SIZE:
            raise UsageError(f"{volume.vol}: size {size} is not a multiple of {LOGICAL_BLOCK_SIZE}")
        self.check_volume_size(volume.vol, size // LOGICAL_BLOCK_SIZE)
        plan = volume.plan_resize(size // LOGICAL_BLOCK_SIZE)
        if plan is None:
            return {"size_lb": volume.size_lb, "changed": False}
        with volume.actions.begin(ArchiveAction.RESIZE):
            if self.store.base_exists(volume.vol):
                await asyncio.to_thread(self.store.grow_base, volume.vol, plan,
                                        bool(request.args.get("zeroclear", False)))
            before = volume.size_lb
            volume.size_lb = plan
            volume.save()
        self.log.info("%s: resized from %d to %d LB", volume.vol, before, plan)
        return {"size_lb": plan, "before_lb": before, "changed": True}

    async def cmd_gc_diff(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.require_active("gc-diff")
        volume.refuse_if_busy("gc-diff")
        garbage = volume.garbage()
        await asyncio.to_thread(delete_diff_files, volume.directory, volume.forget_diffs(garbage))
        if garbage:
            self.log.info("%s: gc-diff removed %s", volume.vol, ", ".join(d.range_str() for d in garbage))
        return {"removed": [diff.range_str() for diff in garbage], "bytes": sum(d.data_size for d in garbage)}

    # ------------------------------------------------------------------ virtual full image

    def _scan_args(self, volume: ArchiveVolume, args: dict[str, Any]) -> tuple[list[str], int, int]:
        """The diffs of snapshot gid, the bulk [bytes] and how much of the image [LB] a scan covers."""
        paths = volume.scan_paths(args["gid"])
        bulk = args.get("bulk", bhash.DEFAULT_BULK)
        size_lb = volume.size_lb
        if "size" in args:
            if args["size"] % LOGICAL_BLOCK_SIZE or args["size"] > size_lb * LOGICAL_BLOCK_SIZE:
                raise UsageError(f"{volume.vol}: scan size {args['size']} is not a multiple of 512 within the "
                                 f"volume's {size_lb * LOGICAL_BLOCK_SIZE} bytes")
            size_lb = args["size"] // LOGICAL_BLOCK_SIZE
        return paths, bulk, size_lb

    async def cmd_bhash(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        gid = request.args["gid"]
        paths, bulk, size_lb = self._scan_args(volume, request.args)
        started = time.monotonic()

        def scan() -> bhash.StreamHasher:
            with self.store.open_base(volume.vol, writable=False) as base:
                return bhash.hash_virtual(base.fd, paths, volume.size_lb, bulk, size_lb)

        with volume.actions.begin(ArchiveAction.VIRTUAL_SCAN):
            async with request.channel.keepalive():
                hasher = await asyncio.to_thread(scan)
        self.log.info("%s: bhash of gid %d (%d diffs, bulk %d) = %s in %.2f s", volume.vol, gid, len(paths), bulk,
                      hasher.hexdigest(), time.monotonic() - started)
        return {"hash": hasher.hexdigest(), "gid": gid, "bulk": bulk, "size": hasher.size}

    async def cmd_virt_full_scan(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        paths, bulk, size_lb = self._scan_args(volume, request.args)
        bulk_lb = bulk // LOGICAL_BLOCK_SIZE
        with volume.actions.begin(ArchiveAction.VIRTUAL_SCAN), \
                self.store.open_base(volume.vol, writable=False) as base:
            await request.accept()
            channel = request.channel
            await channel.send_json(messages.begin(volume.uuid, size_lb, bulk_lb))
            bulks = _image_pieces(full_image(_ios_within(paths, size_lb), size_lb, base.fd, bulk_lb), bulk_lb)
            try:
                async with contextlib.aclosing(prefetched(bulks)) as pieces:
                    digest = await send_image(channel, pieces, size_lb, bulk_lb)
            except (WalbopsError, OSError) as exc:
                if not isinstance(exc, ProtocolError):
                    await channel.send_abort(str(exc))
                raise
            await channel.send_json(digest.end())
        self.log.info("%s: virt-full-scan of gid %d sent to %s (%d bytes of data)", volume.vol, request.args["gid"],
                      channel.peer_id, digest.size)
        return None

    # ------------------------------------------------------------------ transfers

    async def recv_full_sync(self, request: Request) -> Any:
        args = request.args
        volume = self.volume(args["vol"])

        def finish(tx: Any, begin: dict[str, Any], end: dict[str, Any]) -> None:
            if "gid" not in end:
                raise BadField("end of a full backup without its gid")
            volume.finish_full_sync(tx, bytes.fromhex(begin["uuid"]), args["size_lb"], end["gid"], args["timestamp"])

        async def answer(_: PartialReplica | None) -> None:
            await request.accept()

        await self._receive_base(request, volume, args["size_lb"], args["bulk_lb"], "the storage", answer, finish)
        self.log.info("%s: full backup received: base %s, %d LB", volume.vol, volume.base, args["size_lb"])
        return None

    def _remove_partial_base(self, vol: str) -> None:
        """A full backup that failed leaves no partial base behind (the volume stays SyncReady)."""
        try:
            self.store.remove_volume(vol)
        except (WalbopsError, OSError) as exc:
            self.log.error("%s: the partial base of a failed full backup could not be removed: %s (the next one "
                           "removes it)", vol, exc)
        else:
            self.log.info("%s: removed the partial base of a failed full backup", vol)

    async def _receive_base(self, request: Request, volume: ArchiveVolume, size_lb: int, bulk_lb: int | None,
                            sender: str, answer: Callable[[PartialReplica | None], Awaitable[None]],
                            finish: Callable[[Any, dict[str, Any], dict[str, Any]], None],
                            lineage: bytes | None = None) -> None:
        """Receive a base image (docs/protocol.md §8.3, §8.6) into the base of a SyncReady volume
        (FullSync), and ack it: ``answer(offer)`` tells the sender to start; ``finish(tx, begin,
        end)`` records the base once the image is synced. ``bulk_lb`` None: the sender's ``begin``
        says it.

        A full backup (``lineage`` None) starts from a fresh base, and a failure removes it. A full
        replication from archive lineage ``lineage`` keeps what it synced when it fails (every
        REPL_CHECKPOINT bytes, and at the failure), and the next one from that lineage is offered
        to resume after it: its ``begin`` then says ``start_lb``.
        """
        self.check_volume_size(volume.vol, size_lb)
        tx = volume.begin_full_sync()
        with tx:
            has_base = self.store.base_exists(volume.vol)
            offer = None if lineage is None else volume.resumable_replica(lineage, size_lb, has_base)
            if offer is None:
                if has_base:
                    # Left by a transfer that was cut short (the volume is SyncReady): its blocks are
                    # stale, and zero ranges are not written below, so start again from a fresh base.
                    await asyncio.to_thread(self.store.remove_volume, volume.vol)
                volume.note_partial_replica(None)
                self.store.create_base(volume.vol, size_lb)
            reads_zeros = self.store.new_base_reads_zeros and offer is None
            checkpoint = FSYNC_INTERVAL if lineage is None else REPL_CHECKPOINT
            written_lb = 0  # [LB] received in order and written
            begin: dict[str, Any] = {}

            def on_failure() -> None:
                if lineage is None:
                    self._remove_partial_base(volume.vol)  # a full backup starts over
                elif "base" in begin and written_lb > 0:
                    # A replication keeps what it wrote, synced and recorded, for the next one to resume.
                    with contextlib.suppress(OSError), self.store.open_base(volume.vol, writable=True) as base:
                        os.fdatasync(base.fd)
                        volume.note_partial_replica(PartialReplica(lineage, begin["base"], size_lb, written_lb))
                        self.log.info("%s: kept the first %d LB of the cut full replication, to resume",
                                      volume.vol, written_lb)

            # Listed first, so it exits last: a failure handles the base once it is closed.
            with _on_failure(on_failure), volume.actions.begin(ArchiveAction.FULL_SYNC), \
                    self.store.open_base(volume.vol, writable=True) as target:
                await answer(offer)
                channel = request.channel
                begin.update(await channel.recv_json("begin"))
                if bulk_lb is None:
                    bulk_lb = int(begin.get("bulk_lb", 0))
                    if not 1 <= bulk_lb <= MAX_BULK // LOGICAL_BLOCK_SIZE:
                        raise BadField(f"begin: bulk_lb {bulk_lb} is not 1 … {MAX_BULK // LOGICAL_BLOCK_SIZE}")
                start_lb = int(begin.get("start_lb", 0))
                if start_lb and (offer is None or start_lb != offer.done_lb or begin.get("base") != offer.base):
                    raise InvalidMessage(f"begin: resumes at LB {start_lb} of {begin.get('base')}, where "
                                         f"{'nothing' if offer is None else f'LB {offer.done_lb} of {offer.base}'} "
                                         "was offered")
                if offer is not None and not start_lb:
                    reads_zeros = False  # the source starts over on the kept base: stale blocks too are rewritten
                unsynced = 0
                written_lb = volume.progress_lb = start_lb

                async def on_data(offset: int, data: bytes) -> None:
                    nonlocal unsynced, written_lb
                    # Into the page cache, in this thread: a thread hop per frame costs more
                    # (GIL hand-offs) than the write; the fdatasyncs run in a thread.
                    pwrite_all(target.fd, data, offset)
                    unsynced += len(data)
                    written_lb = volume.progress_lb = (offset + len(data)) // LOGICAL_BLOCK_SIZE
                    if unsynced >= checkpoint:
                        await asyncio.to_thread(os.fdatasync, target.fd)
                        unsynced = 0
                        if lineage is not None:
                            volume.note_partial_replica(PartialReplica(lineage, begin["base"], size_lb, written_lb))

                async def on_zero(offset: int, length: int) -> None:
                    nonlocal written_lb
                    # A fresh file or thin LV reads as zeros already; a thick LV is zeroed here.
                    if not reads_zeros:
                        await asyncio.to_thread(zero_range, target.fd, offset, length)
                    written_lb = volume.progress_lb = (offset + length) // LOGICAL_BLOCK_SIZE

                try:
                    async with channel.receiving():
                        end = await receive_image(channel, size_lb, bulk_lb, f"{volume.vol}: {sender}", on_data,
                                                  on_zero, start_lb)
                        await asyncio.to_thread(os.fdatasync, target.fd)
                        finish(tx, begin, end)
                finally:
                    volume.progress_lb = 0
        await request.channel.send_json(messages.ack())

    async def recv_hash_sync(self, request: Request) -> Any:
        """The archive's side of a hash backup (docs/protocol.md §8.4), or of a hash replication
        from another archive (§8.6): hashes of the image at the latest snapshot go out while the
        sender's differing bulks come in and become a diff."""
        args = request.args
        volume = self.volume(args["vol"])
        size_lb, bulk_lb = args["size_lb"], args["bulk_lb"]
        replicated = _replicated_diff(args, request.channel.peer_role)
        sender = f"the source archive {request.channel.peer_id}" if replicated else "the storage"
        self.check_volume_size(volume.vol, size_lb)
        via = "HashSync" if replicated is None else "ReplSyncAsServer"
        with volume.begin_hash_sync(size_lb, via) as tx, volume.actions.begin(ArchiveAction.HASH_SYNC), \
                self.store.open_base(volume.vol, writable=False) as base:
            snap = volume.latest_snap()
            if replicated is not None and replicated.snap_b != snap:
                raise Refused("too-new-diff", f"{volume.vol}: a hash replication from {replicated.snap_b}, where "
                              f"this archive is at {snap}")
            paths = volume.scan_diffs(snap)
            await request.accept()
            channel = request.channel
            tmp = volume.receiving_path()
            writes = InOrder()
            started = time.monotonic()
            uuid = bytes(16)
            async with channel.receiving():
                try:
                    with open(tmp, "wb") as out:
                        writer: SortedDiffWriter | None = None

                        def on_begin(begin: dict[str, Any]) -> None:
                            nonlocal uuid, writer
                            uuid = bytes.fromhex(begin["uuid"])
                            writer = SortedDiffWriter(out, uuid)

                        async def on_bulks(items: list[list[int]], data: bytes) -> None:
                            if writer is None:  # on_begin runs before any bulk: a peer cannot cause this
                                raise OperationError(f"{volume.vol}: bulks before begin")
                            ios, at = [], 0
                            for offset_lb, count_lb, zero in items:
                                if zero:
                                    ios.append(DiffIo(offset_lb, count_lb, IoKind.ALLZERO))
                                else:
                                    size = count_lb * LOGICAL_BLOCK_SIZE
                                    ios.append(DiffIo.normal(offset_lb, data[at:at + size]))
                                    at += size
                            await writes.submit(_write_all, writer, ios)
                            volume.progress_lb = items[-1][0] + items[-1][1]

                        end = await self._exchange_hashes(channel, base.fd, paths, snap, size_lb, bulk_lb, on_begin,
                                                          on_bulks, sender)
                        await writes.drain()
                        if writer is not None:
                            writer.close()
                        out.flush()
                        await asyncio.to_thread(os.fsync, out.fileno())
                    verified = await asyncio.to_thread(verify_wdiff, tmp)
                    diff = replicated or volume.hash_sync_diff(snap, end["gid"], args["timestamp"])
                    stored = await asyncio.to_thread(volume.finish_hash_sync, tmp, diff, uuid, verified)
                    tx.commit("Archived")
                except BaseException:
                    await writes.settle()
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
                finally:
                    volume.progress_lb = 0
        await channel.send_json(messages.ack())
        self.log.info("%s: hash %s received from %s in %.2f s: %s (%d bytes of %d LB), uuid %s", volume.vol,
                      "backup" if replicated is None else "replication", sender, time.monotonic() - started,
                      stored.range_str(), stored.data_size, size_lb, uuid.hex())
        return None

    async def _exchange_hashes(self, channel: Any, base_fd: int, paths: list[str], snap: MetaSnap, size_lb: int,
                               bulk_lb: int, on_begin: Callable[[dict[str, Any]], None],
                               on_bulks: Callable[[list[list[int]], bytes], Awaitable[None]],
                               sender: str) -> dict[str, Any]:
        """The receiving side of a dirty-hash-sync once accepted: ``hash-begin`` for ``snap``, the
        sender's ``begin`` to ``on_begin``, then the hashes of the image (the base with ``paths``
        over it) go out while ``on_bulks`` takes the differing bulks; returns the checked ``end``."""
        seed = secrets.randbits(32)
        await channel.send_json(messages.hash_begin(str(snap), seed))
        on_begin(await channel.recv_json("begin"))
        cursor = HashSyncCursor(size_lb, bulk_lb)
        hashing = asyncio.create_task(self._send_hashes(channel, cursor, base_fd, paths, size_lb, bulk_lb, seed))
        try:
            return await receive_hash_sync(channel, cursor, hashing, on_bulks, sender)
        finally:
            hashing.cancel()
            await asyncio.wait([hashing])
            if not hashing.cancelled():
                hashing.exception()  # retrieved: receive_hash_sync reported it, or a failure came first

    async def _send_hashes(self, channel: Any, cursor: HashSyncCursor, base_fd: int, paths: list[str], size_lb: int,
                           bulk_lb: int, seed: int) -> None:
        """Send the hash of every bulk of the image at the synced snapshot, a batch at a time.

        Keepalives go out while a batch is computed: the first one merges the heads of every diff
        over the base, which takes more than the sender's socket timeout on a long chain.
        """
        batches = bhash.virtual_bulk_hashes(base_fd, paths, size_lb, bulk_lb * LOGICAL_BLOCK_SIZE, seed,
                                            messages.hash_batch(bulk_lb))
        async with channel.keepalive(), contextlib.aclosing(prefetched(batches)) as hashed:
            async for batch in hashed:
                count = len(batch) // messages.HASH_SIZE
                offset_lb, _ = cursor.hashed(count)
                await channel.send_json(messages.hashes(offset_lb, count))
                await channel.send_data(batch, compress=False)

    async def recv_wdiff(self, request: Request) -> Any:
        args = request.args
        volume = self.volume(args["vol"])
        diff = MetaDiff.parse(args["diff"])
        volume.check_diff(diff, bytes.fromhex(args["uuid"]), args["size_lb"],
                          from_proxy=request.channel.peer_role != "archive")
        with volume.machine.transaction("Archived", "WdiffRecv") as tx:
            await request.accept()
            channel = request.channel
            tmp = volume.receiving_path()
            started = time.monotonic()
            async with channel.receiving():
                try:
                    with open(tmp, "wb") as out:
                        async def take(data: bytes) -> None:
                            out.write(data)

                        await receive_file(channel, "diff", f"{volume.vol}: the sender",
                                           diff_size_bound(volume.size_lb), take)
                        out.flush()
                        received = time.monotonic()
                        # Verify the file (from the page cache) while it is fsynced: both before the ack.
                        synced, verified = await asyncio.gather(asyncio.to_thread(os.fsync, out.fileno()),
                                                                asyncio.to_thread(verify_wdiff, tmp),
                                                                return_exceptions=True)
                        for outcome in (verified, synced):
                            if isinstance(outcome, BaseException):
                                raise outcome
                    assert isinstance(verified, FileHeader)
                    uuid = bytes.fromhex(args["uuid"]) if request.channel.peer_role == "archive" else None
                    stored, final = await asyncio.to_thread(volume.store_received_diff, tmp, diff, verified, uuid)
                    volume.register_diff(stored, final)
                    if uuid is not None and uuid != volume.uuid:  # a replica follows its source's uuid (hash backups)
                        volume.uuid = uuid
                        volume.save()
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
            tx.commit("Archived")
        await channel.send_json(messages.ack())
        self.log.info("%s: received diff %s (%d bytes, %s) in %.3f s, verified and committed in %.3f s", volume.vol,
                      stored, stored.data_size, verified.type.name.lower(), received - started,
                      time.monotonic() - received)
        return None


    # ------------------------------------------------------------------ replication (docs/protocol.md §8.6)

    async def recv_repl_sync(self, request: Request) -> Any:
        """The destination's side: choose the kind; for ``full`` receive the source's base, for
        ``resync`` bring this base to the source's by hash, for ``diff`` answer this volume's
        latest snapshot (diffs or a hash sync follow as their own requests)."""
        args = request.args
        volume = self.volume(args["vol"])
        archive_uuid = bytes.fromhex(args["archive_uuid"])
        kind = volume.replication_kind(archive_uuid, args["size_lb"], args["do_resync"],
                                       self.store.base_exists(volume.vol))
        source = request.channel.peer_id
        if kind == "diff":
            await request.answer({"kind": "diff", "latest": str(volume.latest_snap()), "uuid": volume.uuid.hex()})
            self.log.info("%s: replication from %s: after %s", volume.vol, source, volume.latest_snap())
            return None
        if kind == "resync":
            await self._receive_resync(request, volume, archive_uuid)
            return None
        size_lb = args["size_lb"]

        async def answer(offer: PartialReplica | None) -> None:
            resume = None if offer is None else {"base": offer.base, "start_lb": offer.done_lb}
            await request.answer({"kind": "full", "latest": None, "resume": resume})

        def finish(tx: Any, begin: dict[str, Any], end: dict[str, Any]) -> None:
            volume.finish_replica(tx, bytes.fromhex(begin["uuid"]), size_lb, _replicated_base(begin), archive_uuid)

        await self._receive_base(request, volume, size_lb, None, f"the source archive {source}", answer, finish,
                                 lineage=archive_uuid)
        self.log.info("%s: full replication from %s received: base %s, %d LB", volume.vol, source, volume.base,
                      size_lb)
        return None

    async def _receive_resync(self, request: Request, volume: ArchiveVolume, archive_uuid: bytes) -> None:
        """A resync replication's destination (docs/protocol.md §8.6): the diffs go, and the bulks
        of the base that differ from the source's image are overwritten in place (WalB writes the
        hash sync straight into the base). Until the end the volume is SyncReady, so a cut leaves
        no restorable snapshot and the next replicate with doResync resyncs again."""
        args = request.args
        size_lb, bulk_lb = args["size_lb"], args.get("bulk_lb", REPL_BULK_LB)
        source = f"the source archive {request.channel.peer_id}"
        self.check_volume_size(volume.vol, size_lb)
        started = time.monotonic()
        await asyncio.to_thread(volume.reset_for_resync)
        if self.store.base_size_lb(volume.vol) < size_lb:
            await asyncio.to_thread(self.store.grow_base, volume.vol, size_lb)
        with volume.machine.transaction("SyncReady", "Resync") as tx, volume.actions.begin(ArchiveAction.FULL_SYNC), \
                self.store.open_base(volume.vol, writable=True) as target:
            await request.answer({"kind": "resync", "latest": None})
            channel = request.channel
            begun: dict[str, Any] = {}
            written = 0  # [bytes] since the last fdatasync

            async def on_bulks(items: list[list[int]], data: bytes) -> None:
                nonlocal written
                at = 0
                for offset_lb, count_lb, zero in items:
                    offset, size = offset_lb * LOGICAL_BLOCK_SIZE, count_lb * LOGICAL_BLOCK_SIZE
                    if zero:
                        await asyncio.to_thread(zero_range, target.fd, offset, size)
                    else:
                        pwrite_all(target.fd, data[at:at + size], offset)
                        at += size
                    written += size
                volume.progress_lb = items[-1][0] + items[-1][1]
                if written >= FSYNC_INTERVAL:
                    await asyncio.to_thread(os.fdatasync, target.fd)
                    written = 0

            try:
                async with channel.receiving():
                    end = await self._exchange_hashes(channel, target.fd, [], volume.base.snap_b, size_lb, bulk_lb,
                                                      begun.update, on_bulks, source)
                    await asyncio.to_thread(os.fdatasync, target.fd)
                    volume.finish_replica(tx, bytes.fromhex(begun["uuid"]), size_lb, _replicated_base(begun),
                                          archive_uuid)
            finally:
                volume.progress_lb = 0
        await channel.send_json(messages.ack())
        self.log.info("%s: resync replication from %s in %.2f s: base %s, %d LB, %d bytes rewritten", volume.vol,
                      source, time.monotonic() - started, volume.base, size_lb, end["size"])

    async def cmd_replicate(self, request: Request) -> Any:
        args = request.args
        volume = self.volume(args["vol"])
        if args.get("gid") is not None and args.get("size") is not None:
            raise UsageError("replicate takes gid or size, not both")
        action = volume.begin_replicate()
        destination = f"{args['host']}:{args['port']}"
        self.spawn(self._replicate(volume, args, action), f"replicate {volume.vol} to {destination}")
        return {**messages.ACCEPTED, "started": action.started}

    async def _replicate(self, volume: ArchiveVolume, args: dict[str, Any], action: Any) -> None:
        """The source's side: the base if the destination has nothing (``full``), or its base
        brought to this archive's oldest snapshot by hash (``resync``), then this archive's diffs
        from the destination's latest snapshot, oldest first (a hash sync first where they are
        applied here already)."""
        with action:
            started = time.monotonic()
            destination = f"{args['host']}:{args['port']}"
            channel = await self.connect_peer(args["host"], args["port"])
            async with self.sending(channel, messages.REPL_SYNC):
                answer = await channel.request(messages.REPL_SYNC, {
                    "vol": volume.vol, "uuid": volume.uuid.hex(), "archive_uuid": volume.archive_uuid.hex(),
                    "size_lb": volume.size_lb, "do_resync": bool(args.get("do_resync", False)),
                    "bulk_lb": REPL_BULK_LB})
                kind = answer.get("kind") if isinstance(answer, dict) else None
                if kind not in messages.REPL_KINDS:
                    raise OperationError(f"{volume.vol}: {destination} answered repl-sync with {answer!r}")
                if kind == "full":
                    base = volume.base
                    start_lb = _resume_at(answer.get("resume"), base, REPL_BULK_LB)
                    with self.store.open_base(volume.vol, writable=False) as target, \
                            _finally(lambda: setattr(volume, "progress_lb", 0)):
                        await send_base_replica(channel, volume.uuid, target.fd, volume.size_lb, REPL_BULK_LB,
                                                base.to_str(), lambda lb: setattr(volume, "progress_lb", lb),
                                                start_lb)
                    if start_lb:
                        action.detail["resumed_at_lb"] = start_lb
                    latest = base.snap_b
                    self._note_replica(volume, destination, latest, base.timestamp)
                elif kind == "resync":
                    latest = await self._send_resync(channel, volume, destination)
                else:
                    latest = MetaSnap.parse(str(answer.get("latest")))
                    latest, diverged = await self._leave_a_divergence(channel, volume, destination, latest,
                                                                      answer.get("uuid"))
                    action.detail["diverged"] = diverged
                latest, sent, hashed = await self._send_diffs(channel, volume, destination, latest, args)
            if kind == "diff" and hashed:
                kind = "hash"  # WalB's HASH: the destination was behind this archive's base
            action.detail.update(kind=kind, diffs=sent, destination=destination, latest=str(latest))
            self.log.info("%s: replicated to %s (%s, %d diffs) in %.2f s; it is at %s", volume.vol, destination, kind,
                          sent, time.monotonic() - started, latest)

    async def _send_resync(self, channel: Any, volume: ArchiveVolume, destination: str) -> MetaSnap:
        """Bring the destination's base to this archive's replication point by hash; its snapshot."""
        point = _replication_point(volume)

        async def begin(_: MetaSnap) -> dict[str, Any]:
            return messages.begin(volume.uuid, base=point.to_str())

        await self._send_image_by_hash(channel, volume, point.snap_b, begin)
        self._note_replica(volume, destination, point.snap_b, point.timestamp)
        return point.snap_b

    async def _send_image_by_hash(self, channel: Any, volume: ArchiveVolume, snap: MetaSnap,
                                  begin: Callable[[MetaSnap], Awaitable[dict[str, Any]]]) -> None:
        """This archive's image at ``snap``, only the bulks whose hash the destination's differs."""
        paths = volume.scan_diffs(snap)
        batch = messages.hash_batch(REPL_BULK_LB)
        bulk = REPL_BULK_LB * LOGICAL_BLOCK_SIZE

        async def streamed() -> int:
            return snap.gid_e

        with self.store.open_base(volume.vol, writable=False) as base, \
                _finally(lambda: setattr(volume, "progress_lb", 0)):
            await send_differing_bulks(
                channel, begin,
                lambda seed: bhash.virtual_hashed_windows(base.fd, paths, volume.size_lb, bulk, seed, batch),
                REPL_BULK_LB, streamed, lambda lb: setattr(volume, "progress_lb", lb))

    async def _send_hash_replica(self, channel: Any, volume: ArchiveVolume, destination: str,
                                 latest: MetaSnap, point: MetaState) -> MetaSnap:
        """The destination's image at ``latest`` goes to this archive's ``point`` by hash, as one
        compared diff (WalB's HASH kind): where the diffs in between are applied here already, or
        the destination's history left this one's; returns that point."""
        diff = MetaDiff(latest, point.snap_b, is_mergeable=True, is_comp_diff=True, timestamp=point.timestamp)
        await request_accepted(channel, messages.DIRTY_HASH_SYNC, {
            "vol": volume.vol, "size_lb": volume.size_lb, "bulk_lb": REPL_BULK_LB, "timestamp": point.timestamp,
            "diff": str(diff)})

        async def begin(snap: MetaSnap) -> dict[str, Any]:
            if snap != latest:
                raise InvalidMessage(f"{destination} hashes its image at {snap}, not at {latest}")
            return messages.begin(volume.uuid)

        await self._send_image_by_hash(channel, volume, point.snap_b, begin)
        self._note_replica(volume, destination, point.snap_b, point.timestamp)
        return point.snap_b

    async def _leave_a_divergence(self, channel: Any, volume: ArchiveVolume, destination: str, latest: MetaSnap,
                                  destination_uuid: Any) -> tuple[MetaSnap, bool]:
        """A destination at a snapshot of another device history than this archive's holds a
        history of its own from there: a proxy delivered to it diffs of the device's old uuid that
        a hash backup made this archive skip (found by scripts/chaos: the diffs sent from there by
        gid left it without the hash backup's bulks, and its later snapshots restored wrong). Its
        image goes by hash to this archive's next clean snapshot; returns where it is then, and
        whether it had diverged.

        The destination's uuid is that of the history it holds (an archive takes a proxy's diff
        only of its own uuid, and a replicated one sets it). It diverged if this archive never
        passed through its latest snapshot and goes on from there with another uuid, or passed
        through it, but by a diff of another uuid: the same gid, reached in the other history
        (the old uuid's diffs brought it there, the hash backup's new uuid brought this archive).
        """
        if latest.gid_b < volume.base.snap_b.gid_b or destination_uuid is None:
            return latest, False  # behind the base: _send_diffs sends a hash replica anyway
        points = volume.diffs.chain.passage(volume.base)
        if latest in {snap for snap, _ in points}:
            # passage's points after the base are the snapshots after each diff of this chain.
            passed = zip(points[1:], volume.diffs.chain.applicable_diffs(volume.base.snap_b), strict=True)
            telling = next((diff for (snap, _), diff in passed if snap == latest), None)  # None: the base
        else:
            # A merge here may have passed over the destination's snapshot in the same history.
            telling = next(iter(volume.diffs.chain.applicable_diffs(latest)), None)
        if telling is None:
            return latest, False
        header = await asyncio.to_thread(read_header, volume.diffs.path_of(telling))
        if header.uuid.hex() == destination_uuid:
            return latest, False
        later = [(snap, timestamp) for snap, timestamp in points if snap.is_clean and snap.gid_b > latest.gid_e]
        if not later:
            return latest, False
        snap, timestamp = later[0]
        self.log.warning("%s: %s is at %s, which this archive's history does not pass through (uuid %s, "
                         "here %s): sending its image at %s by hash", volume.vol, destination, latest,
                         destination_uuid, header.uuid.hex(), snap)
        return await self._send_hash_replica(channel, volume, destination, latest,
                                             MetaState(snap, timestamp=timestamp)), True

    async def _send_diffs(self, channel: Any, volume: ArchiveVolume, destination: str, latest: MetaSnap,
                          args: dict[str, Any]) -> tuple[MetaSnap, int, int]:
        """Send the chain from ``latest`` until the destination reaches ``gid``, or at most ``size``
        bytes of diffs remain, or nothing is left; the destination's latest snapshot, the count of
        diffs sent and how many of them were hash syncs."""
        target_gid, max_remaining = args.get("gid"), args.get("size")
        sent = hashed = 0
        while target_gid is None or latest.gid_b < target_gid:
            if latest.gid_b < volume.base.snap_b.gid_b:
                latest = await self._send_hash_replica(channel, volume, destination, latest,
                                                       _replication_point(volume))
                sent += 1
                hashed += 1
                continue
            chain = volume.diffs.chain.applicable_diffs(latest, max_gid=target_gid)
            if not chain or (max_remaining is not None and sum(d.data_size for d in chain) <= max_remaining):
                break
            diff = chain[0]
            path = volume.diffs.path_of(diff)
            header = await asyncio.to_thread(read_header, path)
            await send_wdiff(channel, volume.vol, header.uuid, volume.size_lb, diff, file_chunks(path))
            latest = apply(latest, diff)
            sent += 1
            self._note_replica(volume, destination, latest, diff.timestamp)
        return latest, sent, hashed

    def _note_replica(self, volume: ArchiveVolume, destination: str, latest: MetaSnap, timestamp: int) -> None:
        """Remember where a destination is (``get ts-delta``)."""
        self.replicas[(volume.vol, destination)] = {"destination": destination, "latest": str(latest),
                                                    "timestamp": timestamp, "updated": int(time.time())}

    async def cmd_gather_latest_snap(self, request: Request) -> Any:
        """The latest snapshot of each asked volume this archive holds (others are left out)."""
        found = []
        for vol in dict.fromkeys(request.args["vols"]):
            try:
                volume = self.volume(vol)
            except OperationError:
                continue  # not held here, or broken metadata (get status says why)
            if volume.state in ARCHIVE_ACTIVE:
                latest = volume.latest_snap()
                found.append({"name": vol, "gid": latest.gid_b, "timestamp": self.newest_timestamp(volume)})
        return found

    def ts_delta(self, volume: ArchiveVolume) -> list[dict[str, Any]]:
        """Each destination this agent replicated ``volume`` to: its latest snapshot, and how far
        behind this archive's latest it is (gids and seconds of snapshot time)."""
        here = volume.latest_snap()
        newest = self.newest_timestamp(volume)
        found = []
        for (vol, _), entry in sorted(self.replicas.items()):
            if vol == volume.vol:
                there = MetaSnap.parse(entry["latest"])
                found.append({**entry, "name": vol, "source_latest": str(here), "gid_delta": here.gid_b - there.gid_b,
                              "time_delta": max(0, newest - entry["timestamp"])})
        return found

    @staticmethod
    def newest_timestamp(volume: ArchiveVolume) -> int:
        """The snapshot time of the volume's latest snapshot: its base's, or its newest applicable diff's."""
        return max([volume.base.timestamp, *(diff.timestamp for diff in volume.diffs.chain.applicable_diffs(
            volume.base.snap_b))])


@contextlib.contextmanager
def _on_failure(step: Callable[[], None]) -> Iterator[None]:
    """Run ``step`` when the block fails (cancellation included), then let the failure go on."""
    try:
        yield
    except BaseException:
        step()
        raise


@contextlib.contextmanager
def _finally(step: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    finally:
        step()


def _replicated_diff(args: dict[str, Any], peer_role: str | None) -> MetaDiff | None:
    """The compared diff a hash replication stores (``args.diff``: from an archive, and only
    from one), or None for a storage's hash backup."""
    text = args.get("diff")
    if peer_role != "archive":
        if text is not None:
            raise UsageError("dirty-hash-sync: only a replicating archive names the diff")
        return None
    if text is None:
        raise UsageError("dirty-hash-sync from an archive without the diff it replicates")
    diff = MetaDiff.parse(text)
    if not diff.is_comp_diff:
        raise BadField(f"a hash replication's diff {diff.range_str()} is not a compared diff")
    return diff


def _replicated_base(begin: dict[str, Any]) -> MetaState:
    """The base state a full or resync replication's ``begin`` names (never an applying one)."""
    if "base" not in begin:
        raise BadField("begin of a replication without the base state")
    base = MetaState.parse(begin["base"])
    if base.is_applying:
        raise BadField(f"a replication sent an applying base {base}")
    return base


def _resume_at(resume: Any, base: MetaState, bulk_lb: int) -> int:
    """Where a full replication starts: after the destination's kept part when it offers one of
    this very base (a base applied since must go again from LB 0), at a bulk boundary."""
    if not isinstance(resume, dict) or resume.get("base") != base.to_str():
        return 0
    start_lb = resume.get("start_lb")
    if not isinstance(start_lb, int) or isinstance(start_lb, bool) or start_lb < 0 or start_lb % bulk_lb:
        return 0
    return start_lb


def _replication_point(volume: ArchiveVolume) -> MetaState:
    """Where a hash or resync replication brings the destination: this archive's oldest clean
    state (WalB's), or its base while the chain reaches no clean snapshot yet."""
    try:
        return volume.diffs.chain.oldest_clean_state(volume.base)
    except OperationError:
        return volume.base


def _write_all(writer: SortedDiffWriter, ios: list[DiffIo]) -> None:
    for io in ios:
        writer.write(io)


def _ios_within(paths: list[str], size_lb: int) -> Any:
    ios = merged_ios(paths) if paths else iter(())
    return bhash._within(ios, size_lb)


def _image_pieces(bulks: Any, bulk_lb: int) -> Any:
    """(offset_lb, bulk) of consecutive bulks from LB 0."""
    for index, bulk in enumerate(bulks):
        yield index * bulk_lb, bulk  # full_image makes a new buffer per bulk: no copy needed


# Arguments of ``get`` targets: walbc passes words, the API ints; both are checked here.

def _ints(args: Any, at_most: int, what: str) -> list[int]:
    words = [] if args is None else list(args) if isinstance(args, list) else [args]
    if len(words) > at_most:
        raise UsageError(f"{what}: at most {at_most} arguments, got {len(words)}")
    # Only integers and decimal strings: int() would also take 1.5, True or " 7_0 ".
    if not all((isinstance(word, int) and not isinstance(word, bool)) or
               (isinstance(word, str) and word.isascii() and word.isdigit()) for word in words):
        raise UsageError(f"{what}: {words} are not gids")
    values = [int(word) for word in words]
    if any(not 0 <= value <= messages.U64_MAX for value in values):
        raise UsageError(f"{what}: gids are u64")
    return values


def gid_range(args: Any) -> tuple[int, int | None]:
    """``[GID0 [GID1]]``: diffs whose snapB.gid_b is in [GID0, GID1)."""
    values = _ints(args, 2, "gid range")
    gid_b = values[0] if values else 0
    gid_e = values[1] if len(values) > 1 else None
    if gid_e is not None and gid_e <= gid_b:
        raise UsageError(f"gid range: GID1 {gid_e} must be greater than GID0 {gid_b}")
    return gid_b, gid_e


def diff_size_bound(size_lb: int) -> int:
    """The most bytes a diff of a ``size_lb`` volume can take, with room to spare: its IOs do not
    overlap, so their data is at most the volume (and lz4 grows incompressible data by under 1 %),
    and a record (32 bytes in a 4 KiB pack header) carries at least one 512-byte block."""
    return 2 * size_lb * LOGICAL_BLOCK_SIZE + DIFF_SLACK


def required_gid(args: Any) -> int:
    values = _ints(args, 1, "gid")
    if not values:
        raise UsageError("expected a GID")
    return values[0]


def optional_gid(args: Any) -> int | None:
    values = _ints(args, 1, "gid")
    return values[0] if values else None


def meta_state_args(args: Any) -> tuple[bool, int | None]:
    """``0|1 [GID]``: 1 asks for the "applying" form."""
    values = _ints(args, 2, "meta-state")
    if not values or values[0] not in (0, 1):
        raise UsageError("meta-state: expected 0|1 [GID]")
    return bool(values[0]), values[1] if len(values) > 1 else None


def exists_diff(volume: ArchiveVolume, args: Any) -> bool:
    values = _ints(args, 4, "exists-diff")
    if len(values) != 4:
        raise UsageError("exists-diff: expected GIDB0 GIDB1 GIDE0 GIDE1")
    try:
        diff = MetaDiff(MetaSnap(values[0], values[1]), MetaSnap(values[2], values[3]))
    except BadField as exc:
        raise UsageError(f"exists-diff: {exc}") from None
    return volume.diffs.chain.get(diff) is not None


def action_name(args: Any) -> str:
    name = args[0] if isinstance(args, list) and len(args) == 1 else args
    if name not in set(ArchiveAction):
        raise UsageError(f"action {name!r} is not one of {', '.join(ArchiveAction)}")
    return str(name)


def action_result(volume: ArchiveVolume, name: str) -> dict[str, Any] | None:
    """How the last run of action ``name`` ended (None: never ran since the agent started)."""
    outcome = volume.actions.outcomes.get(name)
    return None if outcome is None else outcome.as_dict()


def all_actions(volume: ArchiveVolume) -> dict[str, Any]:
    """``get all-actions`` for one volume: each action's running count and last start."""
    return {"name": volume.vol, **{
        str(name): {"running": volume.actions.count(name),
                    "last": format_pretty_time(int(volume.actions.last_started.get(name, 0)))}
        for name in ArchiveAction}}
