"""The proxy agent (walb-proxy): receives logs, keeps them as wdiffs, forwards them to archives.

Commands: archive-info (add|update|delete|list|get), start, stop (graceful|force|empty),
clear-vol, kick, get; transfer: wlog-transfer. A received wlog is verified, converted to
an indexed wdiff and linked into every archive's queue before ``ack``; a forwarder task per
(volume, archive) merges consecutive mergeable diffs, sends them, and deletes them only
after the archive's ``ack``, reacting to its refusal reasons as WalB does.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ..diff.files import merged_ios, read_header
from ..diff.sorted_file import SortedDiffWriter
from ..errors import BadField, OperationError, RemoteError, UsageError, WalbopsError
from ..formats.compression import CompressOpt
from ..gid import MetaDiff, merge
from ..net import messages
from ._server import VOL, Agent, Command, Request, args_schema
from .config import Config
from .metrics import Families, observed
from .proxy_volume import SENDING_PREFIX, STORED_COMPRESSION, ArchiveInfo, ProxyVolume, WlogReceiver
from .state import Refused
from .transfers import InOrder, file_chunks, receive_file, send_wdiff

# Reasons after which the archive holds (or never will need) the diffs: delete them.
DROP_REASONS = {"different-uuid", "too-old-diff"}
# Reasons that need an operator: stop retrying until kick.
GIVE_UP_REASONS = {"archive-not-found"}
# Reasons an operator clears on the archive (a resize): flagged in is-wdiff-send-error, retried with
# backoff so that sending resumes by itself once the archive takes them (WalB's m3 without the kick).
FLAGGED_REASONS = {"smaller-lv-size"}
# Reasons that never give up however long it takes.
PATIENT_REASONS = {"too-new-diff", "syncing"}


class ProxyAgent(Agent[ProxyVolume]):
    host_type = "proxy"
    volume_class = ProxyVolume

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.forwarders: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self.wakeups: dict[tuple[str, str], asyncio.Event] = {}
        self.last_received: dict[str, float] = {}
        info_schema = args_schema(
            {"cmd": {"enum": ["add", "update", "delete", "list", "get"]}, "vol": VOL},
            {"archive": {"type": "string"}, "host": {"type": "string"}, "port": {"type": "integer"},
             "compression": {"type": "string"}, "delay": {"type": "number", "minimum": 0}})
        self.commands.update({
            "archive-info": Command(self.cmd_archive_info, info_schema, "manage the archives a volume goes to"),
            "start": Command(self.cmd_start, args_schema({"vol": VOL}, {"role": {}}), "Stopped -> Started"),
            "stop": Command(self.cmd_stop, args_schema({"vol": VOL}, {"mode": {"enum": ["graceful", "force",
                                                                                          "empty"]}}),
                            "Started -> Stopped (empty: after sending everything)"),
            "clear-vol": Command(self.cmd_clear_vol, args_schema({"vol": VOL}), "Stopped -> Clear"),
            "kick": Command(self.cmd_kick, args_schema({}, {"vol": VOL, "archive": {"type": "string"}}),
                            "send now; clear send errors"),
            "resize": Command(self.cmd_resize, args_schema({"vol": VOL, "size": {"type": "integer", "minimum": 1}}),
                              "the volume's size as the proxy sends it on (WalB's proxy resize; never shrinks)"),
            messages.WLOG_TRANSFER: Command(self.recv_wlog, {"type": "object"}, "wlog receiver",
                                            frozenset({"storage"})),
        })
        self.getters.update({
            "state": self.vol_getter(lambda v, a: v.state),
            "latest-snap": self.vol_getter(lambda v, a: self._latest_snap(v),
                                           lambda v: {"archives": self._latest_snap(v)}),
            "archive-info": self.vol_getter(lambda v, a: [info.as_dict() for info in v.archives.values()]),
            "proxy-diff": self.vol_getter(lambda v, a: {name: [str(d) for d in v.pending(name)]
                                                         for name in v.archives}),
            "is-wdiff-send-error": self.vol_getter(lambda v, a: int(bool(v.send_error.get(str(a)))) if a
                                                   else v.send_error),
        })

    def volume_status(self, vol: str) -> dict[str, Any]:
        return self.volume(vol).status()

    @staticmethod
    def _latest_snap(volume: ProxyVolume) -> list[dict[str, Any]]:
        """WalB's proxy ``latest-snap``: per archive, the newest diff waiting for it (none: all sent)."""
        found = []
        for name in sorted(volume.archives):
            queued = volume.pending(name)
            newest = queued[-1] if queued else None
            found.append({"kind": "proxy", "archive": name, "gid": newest.snap_e.gid_b if newest else None,
                          "timestamp": newest.timestamp if newest else None})
        return found

    def collect_metrics(self, families: Families) -> None:
        super().collect_metrics(families)
        now = time.time()
        for volume in self.stored_volumes():
            for name in volume.archives:
                labels = {"vol": volume.vol, "archive": name}
                queued = volume.pending(name)
                families.gauge("walbops_proxy_queued_diffs", "Diffs waiting to be sent to an archive", labels,
                               len(queued))
                families.gauge("walbops_proxy_queued_bytes", "Bytes of diffs waiting to be sent to an archive",
                               labels, sum(diff.data_size for diff in queued))
                families.gauge("walbops_proxy_oldest_queued_seconds", "Snapshot age of the oldest diff waiting "
                               "for an archive (0: none)", labels,
                               max(0.0, now - min(diff.timestamp for diff in queued)) if queued else 0.0)
                families.gauge("walbops_proxy_send_error", "1 while sending to that archive fails", labels,
                               observed(volume.send_error.get(name)))

    async def on_start(self) -> None:
        # WalB: the proxy starts every volume that has a directory.
        for volume in self.stored_volumes():
            if volume.state not in ("Stopped", "Started"):
                volume.machine.force("Stopped")
            if volume.state == "Stopped" and volume.archives:
                volume.start()
            self.start_forwarders(volume)

    # ------------------------------------------------------------------ commands

    async def cmd_archive_info(self, request: Request) -> Any:
        args = request.args
        cmd = args["cmd"]
        if cmd == "list":
            return sorted(self.volume(args["vol"]).archives)
        if "archive" not in args:
            raise BadField(f"archive-info {cmd}: needs an archive id")
        name = args["archive"]
        if cmd == "get":
            info = self.volume(args["vol"]).archives.get(name)
            if info is None:
                raise OperationError(f"{args['vol']}: archive {name!r} is not registered")
            return info.as_dict()
        if cmd == "delete":
            volume = self.volume(args["vol"])
            await self.stop_forwarder(volume.vol, name)
            volume.delete_archive(name)
            if volume.state == "Clear":
                self.volumes.pop(volume.vol, None)
            return {"state": volume.state}
        if "host" not in args or "port" not in args:
            raise BadField(f"archive-info {cmd}: needs host and port")
        info = ArchiveInfo.from_dict({"name": name, "host": args["host"], "port": args["port"],
                                      "compression": args.get("compression", "lz4:0:1"),
                                      "delay": args.get("delay", 0.0)})
        volume = self.volume(args["vol"], create=True)
        volume.add_archive(info, update=cmd == "update")
        return {"state": volume.state}

    async def cmd_start(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.start()
        self.start_forwarders(volume)
        return {"state": volume.state}

    async def cmd_stop(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        mode = request.args.get("mode", "graceful")
        if mode == "empty":
            with volume.machine.transaction("Started", "WaitForEmpty") as tx:
                while not volume.is_empty():
                    for name in volume.archives:
                        self.wake(volume.vol, name)
                    await asyncio.sleep(0.2)
                await self.stop_forwarders(volume, force=False)
                tx.commit("Stopped")
        else:
            with volume.machine.transaction("Started", "Stop") as tx:
                await self.stop_forwarders(volume, force=mode == "force")
                tx.commit("Stopped")
        return {"state": volume.state}

    async def cmd_clear_vol(self, request: Request) -> Any:
        volume = self.volume(request.args["vol"])
        volume.clear_vol()
        self.volumes.pop(volume.vol, None)
        return {"state": "Clear"}

    async def cmd_resize(self, request: Request) -> Any:
        """WalB's proxy resize: the size the proxy states when it sends diffs on. Each received wlog
        raises it anyway; this sets it ahead of them. Only grows."""
        volume = self.volume(request.args["vol"])
        size_lb = int(request.args["size"]) // 512
        if size_lb > volume.size_lb:
            volume.size_lb = size_lb
            volume.save()
        return {"size_lb": volume.size_lb}

    async def cmd_kick(self, request: Request) -> Any:
        kicked = []
        for (vol, archive) in list(self.wakeups):
            if request.args.get("vol", vol) == vol and request.args.get("archive", archive) == archive:
                self.volume(vol).send_error.pop(archive, None)
                self.wake(vol, archive)
                kicked.append(f"{vol}/{archive}")
        return {"kicked": kicked}

    # ------------------------------------------------------------------ receiving logs

    async def recv_wlog(self, request: Request) -> Any:
        args = request.args
        volume = self.volume(args["vol"])
        if volume.state != "Started":
            raise Refused("stopped", f"{volume.vol}: proxy volume is {volume.state}")
        announced = args["max_log_pb"] * args["pbs"]  # [bytes]
        if announced > int(self.config.max_wlog_receive):
            raise UsageError(f"{volume.vol}: a wlog of up to {announced} bytes is larger than this proxy's "
                             f"max_wlog_receive ({self.config.max_wlog_receive} bytes); lower the storage's "
                             "max_wlog_send or raise max_wlog_receive")
        free = os.statvfs(volume.directory)
        needed = announced * 2  # its diff, and a merged copy of it when sent in a batch
        if free.f_bavail * free.f_frsize < needed:
            raise Refused("no-space", f"{volume.vol}: not enough free space for {needed} bytes")
        diff = MetaDiff.parse(args["diff"])
        with volume.machine.transaction("Started", "WlogRecv") as tx:
            await request.accept()
            channel = request.channel
            limit = (args["max_log_pb"] + 2) * args["pbs"] + 4096  # packs, end marker and the wlog header
            started = time.monotonic()
            converting = InOrder()  # each data frame is verified and converted while the next one arrives
            receiver = None
            try:
                async with channel.receiving():
                    receiver = volume.wlog_receiver((bytes.fromhex(args["uuid"]), args["pbs"], args["salt"]))

                    async def take(data: bytes, receiver: WlogReceiver = receiver) -> None:
                        await converting.submit(receiver.feed, data)

                    await receive_file(channel, "wlog", f"{volume.vol}: the storage", limit, take)
                    await converting.drain()
                    received = time.monotonic()
                    stored = await asyncio.to_thread(receiver.commit, diff, args["size_lb"])
            finally:
                await converting.settle()  # the converter's file must outlive its last write
                if receiver is not None:
                    receiver.discard()
            tx.commit("Started")
        await channel.send_json(messages.ack())
        self.last_received[volume.vol] = time.monotonic()
        for name in volume.archives:
            self.wake(volume.vol, name)
        self.log.info("%s: received %s (%d bytes as wdiff) in %.3f s, committed in %.3f s", volume.vol, stored,
                      stored.data_size, received - started, time.monotonic() - received)
        return None

    # ------------------------------------------------------------------ forwarding diffs

    def wake(self, vol: str, archive: str) -> None:
        event = self.wakeups.get((vol, archive))
        if event is not None:
            event.set()

    def start_forwarders(self, volume: ProxyVolume) -> None:
        if volume.state != "Started":
            return
        for name in volume.archives:
            key = (volume.vol, name)
            task = self.forwarders.get(key)
            if task is None or task.done():
                self.wakeups[key] = asyncio.Event()
                self.forwarders[key] = self.spawn(self._forward(volume, name), f"forward {volume.vol} to {name}",
                                                  detached=True)

    async def stop_forwarders(self, volume: ProxyVolume, force: bool) -> None:
        for name in list(volume.archives):
            await self.stop_forwarder(volume.vol, name, force)

    async def stop_forwarder(self, vol: str, archive: str, force: bool = False) -> None:
        task = self.forwarders.pop((vol, archive), None)
        self.wake(vol, archive)
        if task is not None:
            if force:
                task.cancel()
            await asyncio.wait([task])

    async def _sleep(self, vol: str, archive: str, seconds: float) -> None:
        event = self.wakeups.get((vol, archive))
        if event is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
        event.clear()

    async def _forward(self, volume: ProxyVolume, archive: str) -> None:
        delay = float(self.config.retry_delay)
        while not self.should_exit and volume.state in ("Started", "WlogRecv", "WaitForEmpty") \
                and (volume.vol, archive) in self.forwarders:
            if volume.send_error.get(archive) in GIVE_UP_REASONS:
                await self._sleep(volume.vol, archive, 3600)
                continue
            batch = volume.next_batch(archive, int(self.config.max_wdiff_send),
                                      int(self.config.max_wdiff_send_count))
            if not batch:
                await self._sleep(volume.vol, archive, 1.0)
                continue
            info = volume.archives.get(archive)
            if info is None:
                return
            if info.delay and time.time() - batch[-1].timestamp < info.delay:
                await self._sleep(volume.vol, archive, info.delay)
                continue
            try:
                await self._send_batch(volume, info, batch)
                delay = float(self.config.retry_delay)
                volume.send_error.pop(archive, None)
            except RemoteError as exc:
                reason = exc.reason or ""
                if reason in DROP_REASONS:
                    self.log.info("%s: %s refused %s (%s); dropping them", volume.vol, archive,
                                  merge(*batch).range_str(), reason)
                    volume.sent(archive, batch)
                    continue
                if reason in GIVE_UP_REASONS:
                    volume.send_error[archive] = reason
                    self.log.error("%s: %s refused diffs (%s); waiting for kick", volume.vol, archive, reason)
                    continue
                if reason in FLAGGED_REASONS:
                    volume.send_error[archive] = reason
                    self.log.error("%s: %s refused diffs (%s); retrying in %.0f s", volume.vol, archive, reason,
                                   delay)
                    await self._sleep(volume.vol, archive, delay)
                    delay = min(delay * 2, float(self.config.retry_max_delay))
                    continue
                self._backoff_log(volume, archive, exc, delay)
                await self._sleep(volume.vol, archive, delay)
                delay = min(delay * 2, float(self.config.retry_max_delay))
            except (WalbopsError, OSError) as exc:
                self._backoff_log(volume, archive, exc, delay)
                await self._sleep(volume.vol, archive, delay)
                delay = min(delay * 2, float(self.config.retry_max_delay))
            except Exception:
                # A bug must not end forwarding for good: the diffs would pile up on the proxy.
                self.log.exception("%s: sending to %s hit an unexpected error; retrying in %.0f s", volume.vol,
                                   archive, delay)
                await self._sleep(volume.vol, archive, delay)
                delay = min(delay * 2, float(self.config.retry_max_delay))

    def _backoff_log(self, volume: ProxyVolume, archive: str, exc: Exception, delay: float) -> None:
        self.log.warning("%s: sending to %s failed, retrying in %.0f s: %s", volume.vol, archive, delay, exc)

    async def _send_batch(self, volume: ProxyVolume, info: ArchiveInfo, batch: list[MetaDiff]) -> None:
        paths = volume.paths(info.name, batch)
        uuid = read_header(paths[0]).uuid
        merged = merge(*batch)
        option = CompressOpt.parse(info.compression)
        started = time.monotonic()
        if len(batch) == 1 and option.kind == STORED_COMPRESSION:
            # One diff goes as the indexed file the proxy stored: nothing to merge or re-encode.
            await self._send_file(volume, info, uuid, merged, paths[0])
        else:
            tmp = os.path.join(volume.sendto_dir(info.name), f"{SENDING_PREFIX}{os.getpid()}")

            def write_merged() -> None:
                with open(tmp, "wb") as out:
                    writer = SortedDiffWriter(out, uuid, option.kind, option.level)
                    for io in merged_ios(paths):
                        writer.write(io)
                    writer.close()

            try:
                await asyncio.to_thread(write_merged)
                await self._send_file(volume, info, uuid, merged, tmp)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        volume.sent(info.name, batch)
        self.log.info("%s: sent %s (%d files) to %s in %.3f s", volume.vol, merged.range_str(), len(batch), info.name,
                      time.monotonic() - started)

    async def _send_file(self, volume: ProxyVolume, info: ArchiveInfo, uuid: bytes, diff: MetaDiff,
                         path: str) -> None:
        channel = await self.connect_peer(info.host, info.port)
        async with self.sending(channel, messages.WDIFF_TRANSFER):
            await send_wdiff(channel, volume.vol, uuid, volume.size_lb, diff, file_chunks(path))
