"""A volume on the proxy: received logs as indexed wdiffs, one send queue per archive.

Network-free (WalB's ProxyVolInfo). ``<base_dir>/<vol>/``: ``meta.json`` (state, volume
size, the archives this volume is sent to), ``received/`` (a diff being converted) and
``sendto/<archive>/`` (hard links of every stored diff, one directory per archive, named
as WalB names diffs). A diff is deleted from an archive's directory only once that
archive acknowledged it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..diff.engine import log_ios
from ..diff.files import read_header
from ..diff.indexed_file import IndexedDiffWriter
from ..diff.logs import WlogStream
from ..errors import BadField, OperationError, UsageError
from ..formats.compression import Compression, CompressOpt
from ..gid import MetaDiff, can_merge, diff_file_name, merge, parse_diff_file_name
from . import metadata
from .state import PROXY_TRANSITIONS, ActionCounter, StateMachine

ARCHIVE_NAME = metadata.VOLUME_ID  # archive ids follow the same rule as volume ids
SENDING_PREFIX = ".sending-"  # a merged batch being sent to an archive
STORED_COMPRESSION = Compression.LZ4  # of the images of the diffs the proxy stores
READ_PIECE = 1 << 20  # [bytes] a wlog file is fed to the converter this much at a time
WRITE_BUFFER = 1 << 20  # [bytes] buffer of the diff being written (its images are a few KiB each)


@dataclass(frozen=True)
class ArchiveInfo:
    """Where and how a proxy sends a volume's diffs (WalB's HostInfoForBkp)."""

    name: str
    host: str
    port: int
    compression: str = "lz4:0:1"
    delay: float = 0.0  # [s] wait this long after a diff arrives before sending it

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "port": self.port, "compression": self.compression,
                "delay": self.delay}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchiveInfo":
        if not isinstance(data.get("name"), str) or not ARCHIVE_NAME.fullmatch(data["name"]):
            raise UsageError(f"archive id {data.get('name')!r}: 1-64 characters of [0-9A-Za-z-]")
        CompressOpt.parse(str(data.get("compression", "lz4:0:1")))
        port = data.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise UsageError(f"archive port {port!r} is not a port number")
        return cls(data["name"], str(data["host"]), port, str(data.get("compression", "lz4:0:1")),
                   float(data.get("delay", 0.0)))


class ProxyVolume:
    """One volume on the proxy."""

    def __init__(self, base_dir: str, vol: str) -> None:
        self.vol = metadata.check_volume_id(vol)
        self.directory = os.path.join(base_dir, vol)
        meta = metadata.load(self.directory) or {}
        self.machine = StateMachine(PROXY_TRANSITIONS, meta.get("state", "Clear"), self._persist_state)
        self.size_lb = int(meta.get("size_lb", 0))
        self.archives = {entry["name"]: ArchiveInfo.from_dict(entry) for entry in meta.get("archives", [])}
        self.actions = ActionCounter()
        self.send_error: dict[str, str] = {}
        if os.path.isdir(self.received_dir):
            shutil.rmtree(self.received_dir)  # conversions cut short by a crash; the storage resends
        for archive in self.archives:
            directory = self.sendto_dir(archive)
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    if name.startswith(SENDING_PREFIX):
                        os.unlink(os.path.join(directory, name))  # a merged send cut short

    @property
    def state(self) -> str:
        return self.machine.state

    @property
    def received_dir(self) -> str:
        return os.path.join(self.directory, "received")

    def sendto_dir(self, archive: str) -> str:
        return os.path.join(self.directory, "sendto", archive)

    def _meta(self) -> dict[str, Any]:
        return {"vol": self.vol, "state": self.machine.state, "size_lb": self.size_lb,
                "archives": [info.as_dict() for info in self.archives.values()]}

    def _persist_state(self, state: str) -> None:
        if state == "Clear":
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            self.save()

    def save(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        metadata.save(self.directory, self._meta())

    # ------------------------------------------------------------------ archive-info

    def add_archive(self, info: ArchiveInfo, update: bool = False) -> None:
        if update and info.name not in self.archives:
            raise OperationError(f"{self.vol}: archive {info.name!r} is not registered")
        if not update and info.name in self.archives:
            raise OperationError(f"{self.vol}: archive {info.name!r} is already registered")
        with self.machine.transaction(("Clear", "Stopped"), "AddArchiveInfo") as tx:
            self.archives[info.name] = info
            os.makedirs(self.sendto_dir(info.name), exist_ok=True)
            tx.commit("Stopped")

    def delete_archive(self, name: str) -> None:
        if name not in self.archives:
            raise OperationError(f"{self.vol}: archive {name!r} is not registered")
        with self.machine.transaction("Stopped", "DeleteArchiveInfo") as tx:
            del self.archives[name]
            shutil.rmtree(self.sendto_dir(name), ignore_errors=True)
            tx.commit("Stopped" if self.archives else "Clear")

    def clear_vol(self) -> None:
        with self.machine.transaction("Stopped", "ClearVol") as tx:
            self.archives = {}
            tx.commit("Clear")

    def start(self) -> None:
        with self.machine.transaction("Stopped", "Start") as tx:
            tx.commit("Started")

    def stop(self) -> None:
        with self.machine.transaction("Started", "Stop") as tx:
            tx.commit("Stopped")

    # ------------------------------------------------------------------ receiving logs

    def wlog_receiver(self, expect: tuple[bytes, int, int] | None = None,
                      compression: Compression = STORED_COMPRESSION) -> "WlogReceiver":
        """Start receiving a wlog: :meth:`WlogReceiver.feed` it, then commit or discard it."""
        return WlogReceiver(self, expect, compression)

    def store_wlog(self, wlog_path: str, diff: MetaDiff, size_lb: int,
                   compression: Compression = STORED_COMPRESSION) -> MetaDiff:
        """Verify a wlog file, convert it to an indexed wdiff and queue it for every archive.

        Raises:
            FormatError: a checksum or record of the wlog is bad (nothing is stored).
        """
        receiver = self.wlog_receiver(compression=compression)
        try:
            with open(wlog_path, "rb", buffering=0) as source:
                while piece := source.read(READ_PIECE):
                    receiver.feed(piece)
            return receiver.commit(diff, size_lb)
        finally:
            receiver.discard()

    def _queue(self, converted: str, diff: MetaDiff, size_lb: int) -> MetaDiff:
        """Link a durable converted diff into every archive's queue (durably), then drop its name."""
        stored = MetaDiff(diff.snap_b, diff.snap_e, diff.is_mergeable, diff.is_comp_diff, diff.timestamp,
                          os.path.getsize(converted))
        name = diff_file_name(stored)
        for archive in self.archives:
            directory = self.sendto_dir(archive)
            os.makedirs(directory, exist_ok=True)
            target = os.path.join(directory, name)
            if not os.path.exists(target):
                os.link(converted, target)
            metadata.fsync_dir(directory)
        os.unlink(converted)
        if size_lb > self.size_lb:
            self.size_lb = size_lb
            self.save()
        return stored

    # ------------------------------------------------------------------ sending diffs

    def pending(self, archive: str) -> list[MetaDiff]:
        """Diffs waiting for ``archive``, oldest first."""
        directory = self.sendto_dir(archive)
        if not os.path.isdir(directory):
            return []
        diffs = [parse_diff_file_name(name, os.path.getsize(os.path.join(directory, name)))
                 for name in os.listdir(directory) if name.endswith(".wdiff")]
        return sorted(diffs, key=lambda d: (d.snap_b.gid_b, d.snap_e.gid_b))

    def next_batch(self, archive: str, max_bytes: int, max_count: int) -> list[MetaDiff]:
        """The first diff plus the following mergeable ones of the same device uuid (WalB's rule: a
        diff of the lineage before a reset-wal never merges with one after it), within the size and
        count limits."""
        pending = self.pending(archive)
        if not pending:
            return []
        batch = [pending[0]]
        total = pending[0].data_size
        uuid = read_header(self.paths(archive, batch)[0]).uuid
        for diff in pending[1:]:
            if len(batch) >= max_count or total + diff.data_size > max_bytes or not can_merge(merge(*batch), diff) \
                    or read_header(self.paths(archive, [diff])[0]).uuid != uuid:
                break
            batch.append(diff)
            total += diff.data_size
        return batch

    def paths(self, archive: str, diffs: Iterable[MetaDiff]) -> list[str]:
        return [os.path.join(self.sendto_dir(archive), diff_file_name(diff)) for diff in diffs]

    def sent(self, archive: str, diffs: Iterable[MetaDiff]) -> None:
        """The archive holds these diffs now (or refused them for good): forget them."""
        for path in self.paths(archive, diffs):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        metadata.fsync_dir(self.sendto_dir(archive))

    def is_empty(self) -> bool:
        return all(not self.pending(archive) for archive in self.archives)

    def status(self) -> dict[str, Any]:
        return {"vol": self.vol, "state": self.state, "size_lb": self.size_lb,
                "archives": [info.as_dict() for info in self.archives.values()],
                "pending": {name: [str(d) for d in self.pending(name)] for name in self.archives},
                "send_error": dict(self.send_error)}


class WlogReceiver:
    """A wlog that arrives in pieces, verified and converted to an indexed wdiff pack by pack.

    Every pack is checked (header and IO checksums, lsid order, as WlogReader does) before
    its IOs reach the diff, whose images go to ``received/converting.wdiff`` as they come; so
    when the stream ends only the index is left to write. Nothing reaches the archives'
    queues before :meth:`commit`, which makes the diff durable first.

    Args:
        volume: the proxy volume.
        expect: (uuid, pbs, salt) the wlog's header must have, as the request announced.
        compression: of the diff's images.
    """

    def __init__(self, volume: ProxyVolume, expect: tuple[bytes, int, int] | None = None,
                 compression: Compression = STORED_COMPRESSION) -> None:
        os.makedirs(volume.received_dir, exist_ok=True)
        self.volume = volume
        self.path = os.path.join(volume.received_dir, "converting.wdiff")
        self.expect = expect
        self.compression = compression
        self.stream = WlogStream(f"{volume.vol}: wlog")
        self._out: BinaryIO | None = open(self.path, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 (closed below)
        self._writer: IndexedDiffWriter | None = None

    def feed(self, data: bytes | memoryview) -> None:
        """Verify and convert the packs this piece completes.

        Raises:
            FormatError: the wlog is corrupt, or its header disagrees with ``expect``.
        """
        packs = self.stream.feed(data)
        if self._writer is None:
            header = self.stream.header
            if header is None or self._out is None:
                return
            if self.expect is not None and (header.uuid, header.physical_bs, header.log_checksum_salt) != self.expect:
                raise BadField(f"{self.volume.vol}: the wlog's header disagrees with the request (uuid, pbs or salt)")
            self._writer = IndexedDiffWriter(self._out, header.uuid, self.compression, tmp_dir=self.volume.received_dir)
        # All-zero writes come as ALLZERO; the packs' data stays valid until the next piece.
        self._writer.add_all(log_ios(packs), zero_checked=True)

    def commit(self, diff: MetaDiff, size_lb: int) -> MetaDiff:
        """The stream is complete: write the index, fsync, queue the diff for every archive.

        Raises:
            TruncatedRecord: the wlog's end marker never came.
        """
        self.stream.finish()
        out, writer = self._out, self._writer
        if out is None or writer is None:
            raise OperationError(f"{self.volume.vol}: the wlog receiver is closed")
        writer.close()
        out.flush()
        os.fsync(out.fileno())
        out.close()
        self._out = None
        return self.volume._queue(self.path, diff, size_lb)

    def discard(self) -> None:
        """Forget whatever was received (idempotent; nothing after a commit)."""
        if self._out is not None:
            self._out.close()
            self._out = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
