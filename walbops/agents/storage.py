"""The storage agent (walb-storage): protected volumes, snapshots, log shipping, full backup.

Commands: init-vol, clear-vol, reset-vol, start (target|standby), stop, snapshot,
full-bkp, kick, get. For every volume in Target a shipper task extracts permanent logs
from the walb device, sends them to the first proxy that takes them (in priority order),
and only after the proxy's ``ack`` advances ``done`` and lets the ring reuse the space.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..blockdev import open_uncached
from ..device.control import DeviceClient
from ..device.lifecycle import resize_device
from ..device.wlogs import Extent, RingLogs
from ..errors import OperationError, ProtocolError, UsageError, WalbopsError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..gid import MetaSnap
from ..net import messages
from ._server import VOL, Agent, Command, Request, args_schema
from .config import Config, host_port
from .metrics import Families, observed
from .storage_volume import StorageVolume
from .transfers import Throttle, send_full_backup, send_hash_backup, send_wlog

IDLE_WAIT = 1.0  # [s] a shipper waits this long for new permanent logs before looking again


class StorageAgent(Agent[StorageVolume]):
    host_type = "storage"
    volume_class = StorageVolume

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.shippers: dict[str, asyncio.Task[Any]] = {}
        self.full_scan_bps = int(config.full_scan_bps)  # [bytes/s] 0: full and hash scans unthrottled
        self.wakeups: dict[str, asyncio.Event] = {}
        vol_only = args_schema({"vol": VOL})
        self.commands.update({
            "init-vol": Command(self.cmd_init_vol, args_schema({"vol": VOL, "wdev": {"type": "string"}}),
                                "bind a volume to a walb device: Clear -> SyncReady"),
            "clear-vol": Command(self.cmd_clear_vol, vol_only, "SyncReady -> Clear"),
            "reset-vol": Command(self.cmd_reset_vol, args_schema({"vol": VOL}, {"gid": {"type": "integer"}}),
                                 "Stopped -> SyncReady, WAL reset"),
            "start": Command(self.cmd_start, args_schema({"vol": VOL}, {"role": {"enum": ["target", "standby"]}}),
                             "Stopped -> Target or SyncReady -> Standby"),
            "stop": Command(self.cmd_stop, args_schema({"vol": VOL}, {"mode": {"enum": ["graceful", "force"]}}),
                            "Target -> Stopped, Standby -> SyncReady"),
            "snapshot": Command(self.cmd_snapshot, vol_only, "take an explicit snapshot; returns its gid"),
            "full-bkp": Command(self.cmd_full_backup, args_schema({"vol": VOL}, {"bulk_size": {"type": "integer"}}),
                                "full backup to the primary archive (asynchronous)"),
            "hash-bkp": Command(self.cmd_hash_backup, args_schema({"vol": VOL}, {"bulk_size": {"type": "integer"}}),
                                "hash backup to the primary archive: only the bulks it lacks (asynchronous)"),
            "resize": Command(self.cmd_resize, args_schema({"vol": VOL, "size": {"type": "integer", "minimum": 0}}),
                              "grow the walb device online (size 0: to its whole ddev)"),
            "set-full-scan-bps": Command(self.cmd_set_full_scan_bps,
                                         args_schema({"bps": {"type": "integer", "minimum": 0}}, {"vol": VOL}),
                                         "limit full and hash scans to BPS bytes a second (0: none)"),
            "kick": Command(self.cmd_kick, args_schema({}, {"vol": VOL, "archive": {"type": "string"}}),
                            "ship now, retry now"),
        })
        self._device_status: dict[str, dict[str, Any]] = {}  # vol -> its device's status at the last scrape
        # What the primary archive said of each Target volume's latest snapshot (gather-latest-snap):
        # vol -> {"dest": archive id, "gid", "timestamp", "gathered": when it said so}.
        self.archive_snaps: dict[str, dict[str, Any]] = {}
        self._gathered_at = 0.0  # [monotonic s] the last gather's start
        self._gatherer: asyncio.Task[Any] | None = None
        self.getters.update({
            "state": self.vol_getter(lambda v, a: v.state),
            "uuid": self.vol_getter(lambda v, a: v.uuid.hex()),
            "progress": self.vol_getter(lambda v, a: v.progress_lb),
            "is-overflow": self.vol_getter(lambda v, a: int(self.device(v).call("is_overflow")["overflow"])),
            "log-usage": self.vol_getter(lambda v, a: self.device(v).call("log_usage"), self._log_usage),
            "latest-snap": self.vol_getter(lambda v, a: self._latest_snap(v), self._latest_snap),
            "vol-size": self.vol_getter(lambda v, a: self.device(v).call("status")["size_lb"]),
            "ts-delta": lambda args: self.ts_delta(args.get("vol")),
        })

    # ------------------------------------------------------------------ volumes and devices

    def volume_status(self, vol: str) -> dict[str, Any]:
        volume = self.volume(vol)
        status = volume.status()
        try:
            device = self.device(volume).call("status")
            status.update(lsids=device["lsids"], overflow=device["overflow"], log_usage_pb=device["log_usage_pb"],
                          log_capacity_pb=device["log_capacity_pb"], device=device["path"])
        except OperationError as exc:
            status["device_error"] = str(exc)
        return status

    def _log_usage(self, volume: StorageVolume) -> dict[str, Any]:
        """One volume of ``get log-usage`` without a volume: WalB's ``usage_pb``, ``capacity_pb``, ``pbs``."""
        if not volume.wdev:
            return {"error": "no walb device bound"}
        try:
            status = self.device(volume).call("status")
        except OperationError as exc:
            return {"error": str(exc)}
        return {"usage_pb": status["log_usage_pb"], "capacity_pb": status["log_capacity_pb"], "pbs": status["pbs"]}

    @staticmethod
    def _latest_snap(volume: StorageVolume) -> dict[str, Any]:
        """The newest snapshot taken (queued to ship, or shipped): WalB's storage ``latest-snap``."""
        latest = volume.queue[-1] if volume.queue else volume.done
        return {"kind": "storage", "gid": latest.gid, "lsid": latest.lsid, "timestamp": latest.timestamp}

    # ------------------------------------------------------------------ ts-delta (gather-latest-snap)

    async def on_tick(self) -> None:
        interval = float(self.config.ts_delta_interval)
        if not interval or time.monotonic() - self._gathered_at < interval:
            return
        if self._gatherer is None or self._gatherer.done():
            self._gathered_at = time.monotonic()
            self._gatherer = self.spawn(self.gather_latest_snaps(), "gather-latest-snap", detached=True)

    async def gather_latest_snaps(self) -> None:
        """Ask the primary archive for the latest snapshot of each Target volume (WalB's
        gather-latest-snap); an archive that cannot be reached leaves the last answers, with their age."""
        vols = [volume.vol for volume in self.stored_volumes() if volume.state == "Target"]
        if not vols:
            return
        host, port = host_port(self.config.archive)
        try:
            async with await self.connect_peer(host, port) as channel:
                found = await channel.request(messages.GATHER_LATEST_SNAP, {"vols": vols})
                archive = channel.peer_id
        except (OSError, WalbopsError) as exc:
            self.log.warning("cannot ask archive %s for its latest snapshots (get ts-delta): %s",
                             self.config.archive, exc)
            return
        now = time.time()
        self.archive_snaps = {str(entry["name"]): {"dest": archive, "gid": int(entry["gid"]),
                                                   "timestamp": int(entry["timestamp"]), "gathered": now}
                              for entry in found if isinstance(entry, dict) and entry.get("name") in vols}

    def ts_delta(self, vol: str | None) -> list[dict[str, Any]]:
        """WalB's storage ``ts-delta``: how far the archive's latest snapshot of each Target volume is
        behind this storage's (gids, and seconds of snapshot time), as last gathered."""
        entries = []
        for name, there in sorted(self.archive_snaps.items()):
            if vol is not None and name != vol:
                continue
            volume = self.volumes.get(name)
            if volume is None or volume.state != "Target":
                continue
            here = self._latest_snap(volume)
            entries.append({"name": name, "dest": there["dest"], "kind": "storage", "dest_kind": "archive",
                            "gid": here["gid"], "ts": here["timestamp"], "dest_gid": there["gid"],
                            "dest_ts": there["timestamp"], "ts_delta": here["timestamp"] - there["timestamp"],
                            "gathered": there["gathered"]})
        return entries

    async def refresh_metrics(self) -> None:
        statuses: dict[str, dict[str, Any]] = {}
        for volume in self.stored_volumes():
            if volume.wdev:
                with contextlib.suppress(WalbopsError, OSError):
                    statuses[volume.vol] = await self.device_call(volume, "status")
        self._device_status = statuses

    def collect_metrics(self, families: Families) -> None:
        super().collect_metrics(families)
        now = time.time()
        for entry in self.ts_delta(None):
            families.gauge("walbops_storage_archive_lag_seconds", "How much older the primary archive's latest "
                           "snapshot is than this storage's, as last gathered (get ts-delta)", {"vol": entry["name"]},
                           max(0, entry["ts_delta"]))
        for volume in self.stored_volumes():
            labels = {"vol": volume.vol}
            families.gauge("walbops_storage_full_scan_progress_bytes", "Bytes a full or hash backup has sent so far",
                           labels, volume.progress_lb * LOGICAL_BLOCK_SIZE)
            device = self._device_status.get(volume.vol)
            families.gauge("walbops_storage_device_up", "1 if the volume's walb device answers", labels,
                           observed(device is not None))
            if device is None:
                continue
            pbs = int(device["pbs"])
            families.gauge("walbops_storage_log_usage_bytes", "Log space holding logs not yet released", labels,
                           device["log_usage_pb"] * pbs)
            families.gauge("walbops_storage_log_capacity_bytes", "Size of the log ring", labels,
                           device["log_capacity_pb"] * pbs)
            families.gauge("walbops_storage_overflow", "1 if the log overflowed (a hash backup recovers)", labels,
                           observed(device["overflow"]))
            lsids = device["lsids"]
            for name in ("oldest", "prev_written", "written", "permanent", "completed", "latest"):
                families.gauge("walbops_storage_lsid", "The device's lsids [physical blocks]",
                               {"vol": volume.vol, "lsid": name}, lsids[name])
            families.gauge("walbops_storage_lsid", "The device's lsids [physical blocks]",
                           {"vol": volume.vol, "lsid": "done"}, volume.done.lsid)
            unshipped = max(0, lsids["latest"] - volume.done.lsid)
            families.gauge("walbops_storage_unshipped_bytes", "Logs written but not yet acknowledged by a proxy",
                           labels, unshipped * pbs)
            if volume.done.timestamp:
                # What a lost storage host would lose: the writes since the newest snapshot a proxy
                # acknowledged, none when every write is acknowledged (an idle volume is not stale).
                families.gauge("walbops_storage_rpo_seconds", "Age of the oldest write not yet acknowledged "
                               "(0: none)", labels, max(0.0, now - volume.done.timestamp) if unshipped else 0.0)

    def device(self, volume: StorageVolume) -> DeviceClient:
        if not volume.wdev:
            raise OperationError(f"{volume.vol}: no walb device bound")
        return DeviceClient(volume.wdev, timeout=float(self.config.socket_timeout))

    async def device_call(self, volume: StorageVolume, op: str, **args: Any) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            with self.device(volume) as client:
                return client.call(op, **args)
        return await asyncio.to_thread(call)

    def max_send_pb(self, pbs: int) -> int:
        return max(1, int(self.config.max_wlog_send) // pbs)

    async def on_start(self) -> None:
        for volume in self.stored_volumes():
            if volume.state in ("FullSync", "HashSync", "InitVol", "ClearVol", "Reset", "StartTarget",
                                "StopTarget", "StartStandby", "StopStandby"):
                volume.machine.force("SyncReady")  # WalB: a transient state never survives a restart
            if volume.state in ("Target", "Standby"):
                self.start_shipper(volume)

    # ------------------------------------------------------------------ commands

    async def cmd_init_vol(self, request: Request) -> Any:
        vol, wdev = request.args["vol"], request.args["wdev"]
        for other in self.volumes.values():
            if other.wdev == wdev and other.state != "Clear" and other.vol != vol:
                raise OperationError(f"walb device {wdev!r} is already used by volume {other.vol!r}")
        volume = self.volume(vol, create=True)
        probe = StorageVolume(self.config.base_dir, vol)
        probe.wdev = wdev
        status = await self.device_call(probe, "status")  # the device must be running
        volume.init_vol(wdev)
        volume.uuid = bytes.fromhex(status["uuid"])
        volume.save()
        return {"state": volume.state}

    async def cmd_clear_vol(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.clear_vol()
        del self.volumes[volume.vol]
        return {"state": "Clear"}

    async def cmd_reset_vol(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        with volume.machine.transaction("Stopped", "Reset") as tx:
            reset = await self.device_call(volume, "reset_wal")
            volume.reset(bytes.fromhex(reset["uuid"]), int(request.args.get("gid", 0)))
            tx.commit("SyncReady")
        return {"state": volume.state}

    async def cmd_start(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        role = request.args.get("role", "target")
        if role == "target":
            if (await self.device_call(volume, "is_overflow"))["overflow"]:
                raise OperationError(f"{volume.vol}: the walb device overflowed; reset it (reset-vol) and take a "
                                     "hash backup (hash-bkp), which keeps the archive's history")
            with volume.machine.transaction("Stopped", "StartTarget") as tx:
                tx.commit("Target")
        else:
            with volume.machine.transaction("SyncReady", "StartStandby") as tx:
                if (await self.device_call(volume, "is_overflow"))["overflow"]:
                    await self.device_call(volume, "reset_wal")
                tx.commit("Standby")
        self.start_shipper(volume)
        return {"state": volume.state}

    async def cmd_stop(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        force = request.args.get("mode") == "force"
        source = volume.state
        moves = {"Target": ("StopTarget", "Stopped"), "Standby": ("StopStandby", "SyncReady")}
        if source not in moves:
            raise OperationError(f"{volume.vol}: bad state {source} (needs Target or Standby)")
        via, target = moves[source]
        with volume.machine.transaction(source, via) as tx:
            await self.stop_shipper(volume.vol, force)
            tx.commit(target)
        return {"state": volume.state}

    async def cmd_snapshot(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        status = await self.device_call(volume, "status")
        gid = volume.take_snapshot(status["lsids"]["latest"], self.max_send_pb(status["pbs"]))
        self.wake(volume.vol)
        return {"gid": gid}

    async def cmd_kick(self, request: Request) -> Any:
        targets = [request.args["vol"]] if "vol" in request.args else list(self.wakeups)
        for vol in targets:
            volume = self.volumes.get(vol)
            if volume is not None and volume.state in ("Target", "Standby"):
                self.start_shipper(volume)  # a shipper that ended (it should not) starts again
            self.wake(vol)
        return {"kicked": targets}

    async def cmd_full_backup(self, request: Request) -> Any:
        return await self._start_backup(request, "FullSync")

    async def cmd_hash_backup(self, request: Request) -> Any:
        return await self._start_backup(request, "HashSync")

    async def cmd_resize(self, request: Request) -> Any:
        """WalB's storage resize: grow the volume (its walb device) online; 0 grows it to the whole ddev.

        Its next diffs carry the new size; an archive not resized yet refuses them
        (``smaller-lv-size``) until it is, and shipping then resumes by itself.
        """
        volume = self.volume(request.args["vol"])
        if volume.state not in ("SyncReady", "Stopped", "Target", "Standby"):
            raise OperationError(f"{volume.vol}: bad state {volume.state} for resize")
        size = int(request.args["size"])
        if size % LOGICAL_BLOCK_SIZE:
            raise UsageError(f"{volume.vol}: size {size} is not a multiple of {LOGICAL_BLOCK_SIZE}")
        before = (await self.device_call(volume, "status"))["size_lb"]
        result = await asyncio.to_thread(resize_device, volume.wdev, size // LOGICAL_BLOCK_SIZE)
        self.log.info("%s: resized the walb device %s from %d to %d LB", volume.vol, volume.wdev, before,
                      result["size_lb"])
        return {"size_lb": result["size_lb"], "before_lb": before}

    async def cmd_set_full_scan_bps(self, request: Request) -> Any:
        """WalB's set-full-scan-bps: the most bytes a second a full or hash scan reads (0: no limit)."""
        self.full_scan_bps = int(request.args["bps"])
        return {"bps": self.full_scan_bps}

    async def _start_backup(self, request: Request, via: str) -> Any:
        """full-bkp (FullSync) or hash-bkp (HashSync): SyncReady -> via -> Stopped -> Target."""
        volume = self.volume(request.args["vol"])
        bulk_lb = max(1, int(request.args.get("bulk_size", self.config.bulk_size)) // LOGICAL_BLOCK_SIZE)
        if bulk_lb > 8192:
            raise OperationError("bulk size is at most 4 MiB")
        tx = volume.machine.transaction("SyncReady", via)
        # As WalB, answer only once the archive took the backup, so that its refusal
        # (not-sync-ready, not-archived, busy, unreachable) reaches the caller instead of only the log.
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        kind = "full" if via == "FullSync" else "hash"
        task = self.spawn(self._backup(volume, tx, bulk_lb, kind, started), f"{kind} backup {volume.vol}")
        await asyncio.wait([started, task], return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            if task.cancelled():
                raise OperationError(f"{volume.vol}: the {kind} backup was cancelled")
            error = task.exception()
            if isinstance(error, ProtocolError):
                # Name the link that broke: the caller sees only its own, which is fine.
                raise OperationError(f"{volume.vol}: the {kind} backup to archive {self.config.archive} "
                                     f"did not start: {error}") from error
            if error is not None:
                raise error
        return messages.ACCEPTED

    async def _backup(self, volume: StorageVolume, tx: Any, bulk_lb: int, kind: str,
                      started: asyncio.Future[None] | None = None) -> None:
        """Send a full or hash backup of the device to the primary archive; Target once it acknowledged.

        The ddev is read, not the walb device: WalB's dirty sync. reset-wal applies every earlier
        write first, and every write from then on is in the logs that follow the backup, so a
        block read before its newest write reached the ddev is made right when the archive
        applies them. It spares the application's device (its FUSE daemon) the scan, and reads at
        the disk's speed.
        """
        with tx:
            status = await self.device_call(volume, "status")
            size_lb, pbs = status["size_lb"], status["pbs"]
            host, port = host_port(self.config.archive)
            channel = await self.connect_peer(host, port)

            async def reset(gid: int) -> bytes:
                reset = await self.device_call(volume, "reset_wal")
                volume.reset(bytes.fromhex(reset["uuid"]), gid=gid)
                volume.save()
                if started is not None and not started.done():
                    started.set_result(None)
                return volume.uuid

            async def accepted() -> bytes:
                return await reset(0)

            async def from_snapshot(snap: MetaSnap) -> bytes:
                return await reset(snap.gid_e + 1)  # the archive's image ends at gid_e: ours go on from there

            async def streamed() -> int:
                lsids = await self.device_call(volume, "lsids")
                return volume.take_snapshot(lsids["latest"], self.max_send_pb(pbs))

            def progress(done_lb: int) -> None:
                volume.progress_lb = done_lb

            fd = await asyncio.to_thread(open_uncached, status["ddev"])
            try:
                async with self.sending(channel, messages.DIRTY_FULL_SYNC if kind == "full"
                                        else messages.DIRTY_HASH_SYNC):
                    if kind == "full":
                        gid = await send_full_backup(channel, volume.vol, fd, size_lb, bulk_lb, int(time.time()),
                                                     accepted, streamed, progress, self.throttle())
                        base = f"|0,{gid}|"
                    else:
                        snap, gid = await send_hash_backup(channel, volume.vol, fd, size_lb, bulk_lb,
                                                           int(time.time()), from_snapshot, streamed, progress,
                                                           self.throttle())
                        base = f"{snap}-->|{snap.gid_e + 1},{gid}|"
            finally:
                os.close(fd)
                volume.progress_lb = 0
            tx.commit("Stopped")
        with volume.machine.transaction("Stopped", "StartTarget") as start:
            start.commit("Target")
        self.start_shipper(volume)
        self.log.info("%s: %s backup done (%s); now Target", volume.vol, kind, base)

    def throttle(self) -> Throttle:
        return Throttle(lambda: self.full_scan_bps)

    # ------------------------------------------------------------------ shipping logs

    def wake(self, vol: str) -> None:
        event = self.wakeups.get(vol)
        if event is not None:
            event.set()

    def start_shipper(self, volume: StorageVolume) -> None:
        task = self.shippers.get(volume.vol)
        if task is not None and not task.done():
            return
        self.wakeups[volume.vol] = asyncio.Event()
        self.shippers[volume.vol] = self.spawn(self._ship(volume), f"shipper {volume.vol}", detached=True)

    async def stop_shipper(self, vol: str, force: bool) -> None:
        task = self.shippers.pop(vol, None)
        if task is None:
            return
        if force:
            task.cancel()
        self.wake(vol)
        await asyncio.wait([task], timeout=None if not force else 5)

    async def _ship(self, volume: StorageVolume) -> None:
        delay = float(self.config.retry_delay)
        while not self.should_exit and volume.state in ("Target", "Standby"):
            try:
                shipped = await (self._ship_once(volume) if volume.state == "Target" else self._discard_once(volume))
                delay = float(self.config.retry_delay)
                if not shipped:
                    # Inside the try: the device may be gone (its daemon restarting) while we wait.
                    await self._wait_for_logs(volume)
                continue
            except (WalbopsError, OSError) as exc:
                self.log.warning("%s: log shipping failed, retrying in %.0f s: %s", volume.vol, delay, exc)
            except Exception:
                # A bug must not end shipping for good: the logs would pile up until overflow.
                self.log.exception("%s: log shipping hit an unexpected error; retrying in %.0f s", volume.vol, delay)
            await self._sleep(volume.vol, delay)
            delay = min(delay * 2, float(self.config.retry_max_delay))

    async def _sleep(self, vol: str, seconds: float) -> None:
        event = self.wakeups.get(vol)
        if event is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
        event.clear()

    async def _wait_for_logs(self, volume: StorageVolume) -> None:
        lsids = await self.device_call(volume, "lsids")
        if lsids["permanent"] > volume.done.lsid and volume.queue:
            await self._sleep(volume.vol, 0.05)  # logs wait for their snapshot record
            return
        waiter = asyncio.create_task(asyncio.to_thread(self._wait_permanent, volume, lsids["permanent"]))
        event = self.wakeups[volume.vol]
        woke = asyncio.create_task(event.wait())
        await asyncio.wait([waiter, woke], return_when=asyncio.FIRST_COMPLETED)
        woke.cancel()
        event.clear()
        await asyncio.wait([waiter])

    def _wait_permanent(self, volume: StorageVolume, after: int) -> None:
        with self.device(volume) as client:
            client.wait_permanent(after, IDLE_WAIT)

    async def _discard_once(self, volume: StorageVolume) -> bool:
        """Standby: nothing is shipped; logs are let go as soon as the checkpoint allows."""
        lsids = await self.device_call(volume, "lsids")
        if lsids["prev_written"] > lsids["oldest"]:
            await self.device_call(volume, "set_oldest_lsid", lsid=lsids["prev_written"])
        return False

    async def _ship_once(self, volume: StorageVolume) -> bool:
        """Send one transfer if logs are ready; returns whether something was sent."""
        status = await self.device_call(volume, "status")
        if status["overflow"]:
            with volume.machine.transaction("Target", "StopTarget") as tx:
                tx.commit("Stopped")
            raise OperationError(f"{volume.vol}: the walb device overflowed; stopped. A hash backup recovers "
                                 "it keeping the archive's history (reset-vol, hash-bkp; Controller.hash_backup; "
                                 "ansible/playbooks/recover.yml)")
        lsids, pbs = status["lsids"], status["pbs"]
        max_pb = self.max_send_pb(pbs)
        volume.maybe_implicit_snapshot(lsids["latest"], max_pb, float(self.config.implicit_snapshot_interval))
        transfer = volume.next_transfer(max_pb, lsids["permanent"])
        if transfer is None:
            return False
        rec_e, limit = transfer
        begin = volume.done.lsid
        with RingLogs(status["ldev"]) as ring:
            if ring.super.uuid != volume.uuid:
                raise OperationError(f"{volume.vol}: the walb device's uuid changed behind the agent's back")
            started = time.monotonic()
            if limit == rec_e.lsid:
                # A snapshot's lsid is a pack boundary, so the range is known before it is read: the
                # ring is read, verified and sent in one pass (the send aborts if logs end short).
                extent = Extent(begin, limit)

                def pieces() -> Iterator[bytes | memoryview]:
                    return ring.stream(begin, limit)
            else:
                # A cut inside a step: the end is where the pack that reaches the limit ends.
                extent = await asyncio.to_thread(ring.extent, begin, limit)
                if extent.end < limit:
                    raise OperationError(f"{volume.vol}: valid logs end at lsid {extent.end}, before {limit}")

                def pieces() -> Iterator[bytes | memoryview]:
                    return ring.wlog(extent)
            diff = volume.transfer_diff(rec_e, extent.end)
            await self._send_to_a_proxy(volume, ring, extent, diff, status, pieces, time.monotonic() - started)
        volume.finish_transfer(rec_e, extent.end)
        await self._release(volume, pbs)
        return True

    async def _send_to_a_proxy(self, volume: StorageVolume, ring: RingLogs, extent: Extent, diff: Any,
                               status: dict[str, Any], pieces: Callable[[], Iterator[bytes | memoryview]],
                               read: float) -> None:
        """Send the wlog of ``extent`` (``pieces()``; ``read`` seconds went into finding its end) to the
        first proxy that takes it."""
        begin, end = extent.begin, extent.end
        errors = []
        for proxy in self.config.proxies:
            host, port = host_port(proxy)
            try:
                channel = await self.connect_peer(host, port)
            except (WalbopsError, OSError) as exc:
                errors.append(f"{proxy}: {exc}")
                continue
            started = time.monotonic()
            async with self.sending(channel, messages.WLOG_TRANSFER):
                await send_wlog(channel, volume.vol, volume.uuid, ring.super.physical_bs,
                                ring.super.log_checksum_salt, status["size_lb"], diff, end - begin, pieces())
            self.log.info("%s: shipped %s (lsids %d..%d) to %s: end found in %.3f s, sent in %.3f s", volume.vol,
                          diff.range_str(), begin, end, proxy, read, time.monotonic() - started)
            return
        raise OperationError(f"{volume.vol}: no proxy took the logs: {'; '.join(errors)}")

    async def _release(self, volume: StorageVolume, pbs: int) -> None:
        """Let the ring reuse shipped logs: oldest = min(done, prev_written), as WalB does."""
        lsids = await self.device_call(volume, "lsids")
        if lsids["prev_written"] < volume.done.lsid:
            usage = await self.device_call(volume, "log_usage")
            if usage["usage_pb"] * 2 > usage["capacity_pb"]:
                lsids = await self.device_call(volume, "force_checkpoint")
        oldest = min(volume.done.lsid, lsids["prev_written"])
        if oldest > lsids["oldest"]:
            await self.device_call(volume, "set_oldest_lsid", lsid=oldest)
