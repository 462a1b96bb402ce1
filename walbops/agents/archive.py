"""The archive agent (walb-archive): base images, diffs, restores.

Commands (walbc's names): init-vol, clear-vol, reset-vol, start, stop, restore,
del-restored, get; transfers: dirty-full-sync (full backup from a storage) and
wdiff-transfer (diffs from a proxy). Every received byte is durable before ``ack``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ..blockdev import zero_range
from ..diff.engine import DiscardPolicy
from ..diff.files import verify_wdiff
from ..errors import BadField, OperationError, ProtocolError, WalbopsError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.wdiff import FileHeader
from ..gid import MetaDiff
from ..net import messages
from ..net.frames import DataFrame
from ..net.stream import ImageCursor, StreamDigest
from ..store import Store, store_from_config
from . import metadata
from ._server import GID, VOL, Agent, Command, Request, args_schema
from .archive_volume import ArchiveVolume
from .config import Config
from .state import ARCHIVE_ACTIVE
from .transfers import receive_file

FSYNC_INTERVAL = 1 << 30  # [bytes] sync the base this often while a full backup streams (WalB -fi)


class ArchiveAgent(Agent[ArchiveVolume]):
    host_type = "archive"
    volume_class = ArchiveVolume

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.store: Store = store_from_config(config.store, config.base_dir)
        self.discard = DiscardPolicy(config.discard)
        vol_only = args_schema({"vol": VOL})
        self.commands.update({
            "init-vol": Command(self.cmd_init_vol, vol_only, "Clear -> SyncReady"),
            "clear-vol": Command(self.cmd_clear_vol, vol_only, "delete the volume's base, diffs, restores"),
            "reset-vol": Command(self.cmd_reset_vol, vol_only, "Stopped/SyncReady -> SyncReady, wiped"),
            "start": Command(self.cmd_start, vol_only, "Stopped -> Archived"),
            "stop": Command(self.cmd_stop, args_schema({"vol": VOL}, {"mode": {"enum": ["graceful", "force"]}}),
                            "Archived -> Stopped"),
            "restore": Command(self.cmd_restore, args_schema({"vol": VOL, "gid": GID}),
                               "materialise snapshot gid (asynchronous)"),
            "del-restored": Command(self.cmd_del_restored, args_schema({"vol": VOL, "gid": GID}),
                                    "remove a restored snapshot"),
            messages.DIRTY_FULL_SYNC: Command(self.recv_full_sync, {"type": "object"}, "full backup receiver"),
            messages.WDIFF_TRANSFER: Command(self.recv_wdiff, {"type": "object"}, "diff receiver"),
        })
        vol_getter = self.vol_getter
        self.getters.update({
            "state": vol_getter(lambda v, a: v.state),
            "uuid": vol_getter(lambda v, a: v.uuid.hex()),
            "archive-uuid": vol_getter(lambda v, a: v.archive_uuid.hex()),
            "base": vol_getter(lambda v, a: str(v.base)),
            "vol-size": vol_getter(lambda v, a: v.size_lb),
            "progress": vol_getter(lambda v, a: v.progress_lb),
            "num-diff": vol_getter(lambda v, a: len(v.diffs.chain)),
            "total-diff-size": vol_getter(lambda v, a: v.total_diff_size()),
            "diff": vol_getter(lambda v, a: v.diff_list()),
            "latest-snap": vol_getter(lambda v, a: str(v.latest_snap())),
            "exists-base-image": vol_getter(lambda v, a: int(self.store.base_exists(v.vol))),
            "restorable": vol_getter(lambda v, a: [
                {"gid": r.gid, "timestamp": r.timestamp, "explicit": r.is_explicit}
                for r in v.restorable(include_implicit=a == "all" or a == ["all"])]),
            "restored": vol_getter(lambda v, a: self.store.restored(v.vol)),
            "restored-path": vol_getter(lambda v, a: self._restored_device(v.vol, int(a))),
            "num-action": vol_getter(lambda v, a: v.actions.count(str(a))),
        })

    # ------------------------------------------------------------------ volumes

    def volume_status(self, vol: str) -> dict[str, Any]:
        volume = self.volume(vol)
        return {**volume.status(), "restorable": [r.gid for r in volume.restorable()]
                if volume.state in ARCHIVE_ACTIVE else [], "restored": self.store.restored(vol)}

    async def on_start(self) -> None:
        for vol in metadata.volume_dirs(self.config.base_dir):
            volume = self.volume(vol)
            for leftover in self.store.cleanup(vol):
                self.log.info("%s: removed %s left by an interrupted restore", vol, leftover)
            if volume.state not in volume.machine.steady_states - volume.machine.transient_states:
                volume.machine.force("SyncReady")

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
        volume = self.volume(request.args["vol"])
        volume.stop()
        return {"state": volume.state}

    async def cmd_restore(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        gid = request.args["gid"]
        paths = volume.restore_paths(gid)
        if self.store.has_restored(volume.vol, gid):
            raise OperationError(f"{volume.vol}: snapshot {gid} is already restored")

        async def restore() -> None:
            with volume.actions.begin("Restore"):
                restored = await asyncio.to_thread(self.store.restore, volume.vol, gid, paths, self.discard)
                self.log.info("%s: restored gid %d with %d diffs (%s) at %s", volume.vol, gid, len(paths),
                              restored.clone, restored.path)

        self.spawn(restore(), f"restore {volume.vol} {gid}")
        return messages.ACCEPTED

    async def cmd_del_restored(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.actions.refuse_if_running(["Restore", "Resize"])
        await asyncio.to_thread(self.store.delete_restored, volume.vol, request.args["gid"])
        return {"deleted": request.args["gid"]}

    def _restored_device(self, vol: str, gid: int) -> str:
        """A loop device for a restored snapshot (attached once, then reused)."""
        return self.store.attach(vol, gid, read_only=True)

    # ------------------------------------------------------------------ transfers

    async def recv_full_sync(self, request: Request) -> Any:
        args = request.args
        volume = self.volume(args["vol"])
        tx = volume.begin_full_sync()
        with tx:
            size_lb, bulk_lb = args["size_lb"], args["bulk_lb"]
            if self.store.base_exists(volume.vol):
                # Left by a full backup that was cut short (the volume is SyncReady): its blocks are
                # stale, and zero ranges are not written below, so start again from a fresh base.
                await asyncio.to_thread(self.store.remove_volume, volume.vol)
            self.store.create_base(volume.vol, size_lb)
            reads_zeros = self.store.new_base_reads_zeros
            with volume.actions.begin("FullSync"), self.store.open_base(volume.vol, writable=True) as target:
                await request.accept()
                channel = request.channel
                begin = await channel.recv_json("begin")
                cursor = ImageCursor(size_lb, bulk_lb)
                digest = StreamDigest()
                unsynced = 0
                volume.progress_lb = 0
                try:
                    while True:
                        frame = await channel.recv()
                        if isinstance(frame, DataFrame):
                            offset = cursor.data(len(frame.data))
                            digest.update(frame.data)
                            # Into the page cache, in this thread: a thread hop per frame costs more
                            # (GIL hand-offs) than the write; the fdatasyncs run in a thread.
                            _pwrite_all(target.fd, frame.data, offset)
                            unsynced += len(frame.data)
                            if unsynced >= FSYNC_INTERVAL:
                                await asyncio.to_thread(os.fdatasync, target.fd)
                                unsynced = 0
                            volume.progress_lb = (offset + len(frame.data)) // LOGICAL_BLOCK_SIZE
                            continue
                        message = frame.message
                        kind = message["type"]
                        if kind == "abort":
                            raise OperationError(f"{volume.vol}: the storage aborted the full backup: "
                                                 f"{message['reason']}")
                        if kind == "end":
                            digest.check(message)
                            cursor.finish()
                            if "gid" not in message:
                                raise BadField("end of a full backup without its gid")
                            break
                        cursor.item(message)
                        if kind == "zero":
                            # A fresh file or thin LV reads as zeros already; a thick LV is zeroed here.
                            if not reads_zeros:
                                await asyncio.to_thread(zero_range, target.fd,
                                                        message["offset_lb"] * LOGICAL_BLOCK_SIZE,
                                                        message["count_lb"] * LOGICAL_BLOCK_SIZE)
                            volume.progress_lb = cursor.position_lb
                    await asyncio.to_thread(os.fdatasync, target.fd)
                    volume.finish_full_sync(tx, bytes.fromhex(begin["uuid"]), size_lb, message["gid"],
                                            args["timestamp"])
                except (WalbopsError, OSError) as exc:
                    if not isinstance(exc, ProtocolError):
                        await _abort(channel, str(exc))
                    raise
                finally:
                    volume.progress_lb = 0
        await request.channel.send_json(messages.ack())
        self.log.info("%s: full backup received: base %s, %d LB", volume.vol, volume.base, size_lb)
        return None

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
            try:
                with open(tmp, "wb") as out:
                    async def take(data: bytes) -> None:
                        out.write(data)

                    await receive_file(channel, "diff", f"{volume.vol}: the sender", messages.U64_MAX, take)
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
                stored = await asyncio.to_thread(volume.add_received_diff, tmp, diff, verified)
            except (WalbopsError, OSError) as exc:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                if not isinstance(exc, ProtocolError):
                    await _abort(channel, str(exc))
                raise
            tx.commit("Archived")
        await channel.send_json(messages.ack())
        self.log.info("%s: received diff %s (%d bytes, %s) in %.3f s, verified and committed in %.3f s", volume.vol,
                      stored, stored.data_size, verified.type.name.lower(), received - started,
                      time.monotonic() - received)
        return None


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


async def _abort(channel: Any, reason: str) -> None:
    try:
        await channel.send_json(messages.abort(reason[: messages.MAX_TEXT]))
    except (WalbopsError, OSError):
        pass
