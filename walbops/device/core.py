"""The write path of the walb device: log, acknowledge, make permanent, apply, checkpoint.

Thread model: any number of frontend threads call ``write``/``read``/``flush``; one
of the writers at a time is the *leader* and logs every queued write in as few log packs
as fit (group commit), so concurrent writes share a pack. A flusher thread syncs the
ldev every ``flush_interval_ms`` (or when ``flush_size`` bytes are pending, or when a
frontend flushes), which makes the logs permanent, and only then applies their data to
the ddev. Until applied, written data is served to readers from memory (the pending
overlay). A checkpointer thread saves ``written`` in the super sector.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, replace

from ..blockdev import discard_range, is_block_device, physical_block_size, size_of, write_zeros
from ..diff.io import DiffIo, IntervalMap, IoKind
from ..diff.logs import LdevLogReader, LogPack, read_super
from ..errors import OperationError, WalbopsError
from ..formats.ldev import (
    LOGICAL_BLOCK_SIZE,
    MAX_DISCARD_IO_LB,
    LogpackBuilder,
    LogpackHeader,
    SuperSector,
    ring_buffer_size_for,
    super_sector_offset_pb,
)
from .policy import OverflowPolicy

log = logging.getLogger("walbops.device")

LB = LOGICAL_BLOCK_SIZE
# [LB] writes are logged in records of at most 1 MiB (FUSE hands over at most that
# much at once anyway); a small bound keeps the smallest usable ring small.
MAX_LOGGED_IO_LB = 2048


def min_ring_pb(pbs: int) -> int:
    """The smallest ring that takes a largest record twice (once as padding) [PB]."""
    return 2 * (1 + MAX_LOGGED_IO_LB * LB // pbs)


class DeviceIoError(WalbopsError):
    """A write the device refuses; ``errno`` goes back to the frontend."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(frozen=True)
class DeviceConfig:
    """Options of one walb device (WalB's create-wdev flags, in walbops' units)."""

    name: str
    ldev: str
    ddev: str
    overflow: OverflowPolicy = OverflowPolicy.OVERWRITE
    checkpoint_interval_ms: int = 10_000  # WalB's default checkpoint interval
    flush_interval_ms: int = 100  # [ms] longest a write waits to become permanent (WalB -fp)
    flush_size: int = 16 << 20  # [bytes] pending data that triggers a flush (WalB -fs)
    max_pending: int = 64 << 20  # [bytes] writers wait beyond this much unapplied data (WalB -maxp)
    max_pack_pb: int = 8192  # [PB] largest log pack the leader builds (WalB -maxl)


@dataclass(frozen=True)
class Lsids:
    """A consistent snapshot of the device's lsids."""

    latest: int
    completed: int
    permanent: int
    written: int
    prev_written: int
    oldest: int

    @property
    def flush(self) -> int:
        return self.permanent

    def as_dict(self) -> dict[str, int]:
        return {"latest": self.latest, "submitted": self.latest, "flush": self.permanent,
                "completed": self.completed, "permanent": self.permanent, "written": self.written,
                "prev_written": self.prev_written, "oldest": self.oldest}


@dataclass
class IoCounters:
    """What the device served since it opened (its metrics, ``walbops_device_*_total``).

    Updated under the device's lock, where each path already is: counting costs no lock of its own.
    """

    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    discards: int = 0
    discard_bytes: int = 0
    log_syncs: int = 0  # fdatasyncs of the ldev that made logs permanent (flushes, the flusher)
    logpacks: int = 0
    refused_writes: int = 0  # by the overflow policy "error"


class _Request:
    __slots__ = ("io", "done", "error")

    def __init__(self, io: DiffIo) -> None:
        self.io = io
        self.done = False
        self.error: DeviceIoError | None = None


def open_device_file(path: str, writable: bool = True) -> int:
    """Open an ldev or ddev (block device or regular file)."""
    flags = os.O_RDWR if writable else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OperationError(f"{path}: no such device or file") from None
    return fd


class WalbDevice:
    """An open walb device: the ldev ring, the ddev and their lsids.

    Opening it redoes the logs from the checkpoint onto the ddev, so a device whose
    daemon died is consistent again before the first new write.
    """

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        self.ldev_fd = open_device_file(config.ldev)
        try:
            self.ddev_fd = open_device_file(config.ddev)
        except BaseException:
            os.close(self.ldev_fd)
            raise
        self.super = read_super(self.ldev_fd)
        self.pbs = self.super.physical_bs
        ddev_size = size_of(self.ddev_fd)
        if ddev_size < self.super.device_size * LB:
            self._close_fds()
            raise OperationError(f"{config.ddev}: {ddev_size} bytes, smaller than the device's "
                                 f"{self.super.device_size * LB} in the super sector")
        self._lock = threading.Condition()  # lsids, overlays, super sector, freeze state
        self._write_lock = threading.Lock()  # the leader
        self._flush_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._queue: list[_Request] = []
        self._pending = IntervalMap(on_cut=lambda io: io)  # logged, not yet permanent+applied
        self._applying: IntervalMap | None = None
        self._pending_bytes = 0
        self._frozen = False
        self._freeze_deadline: float | None = None
        self.overflow = False
        self._closed = False
        self._counters = IoCounters()
        self.checkpoint_interval_ms = config.checkpoint_interval_ms
        # A pack never takes more than a quarter of the ring, so padding and the
        # checkpoint rule always leave room for the next one.
        self._max_pack_pb = max(1, min(config.max_pack_pb, self.super.ring_buffer_size // 4))
        end = self._redo()
        self._latest = self._completed = self._permanent = self._written = end
        self._prev_written = self.super.written_lsid
        self._oldest = self.super.oldest_lsid
        if self._latest - self._oldest > self.super.ring_buffer_size:
            self.overflow = True
        self._checkpoint()
        self._wake_flusher = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._flusher, name=f"walb-{config.name}-flush", daemon=True),
            threading.Thread(target=self._checkpointer, name=f"walb-{config.name}-ckpt", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ recovery

    def _redo(self) -> int:
        """Apply the logs from the checkpoint to the end of valid logs; returns that end."""
        lsid = self.super.written_lsid
        count = 0
        for pack in LdevLogReader(self.ldev_fd, self.super).packs(lsid):
            for rec in pack.header.records:
                if rec.is_padding:
                    continue
                if rec.is_discard:
                    self._apply_io(DiffIo(rec.offset, rec.io_size, IoKind.DISCARD))
                else:
                    self._apply_io(DiffIo.normal(rec.offset, pack.record_data(rec)))
            if pack.shrunk:
                self._store_shrunk_header(pack)
            lsid = pack.header.next_lsid
            count += 1
        if count:
            os.fsync(self.ddev_fd)
            log.info("%s: redid %d log packs, lsids %d..%d", self.config.name, count, self.super.written_lsid, lsid)
        return lsid

    def _store_shrunk_header(self, pack: LogPack) -> None:
        """Replace the stored header of a pack cut at a torn IO by the cut one, as WalB's redo does.

        New packs follow the cut pack; were its old header left, a reader starting before it
        (the storage agent shipping logs) would cut it again at the overwritten IO and never
        see them.
        """
        header = pack.header
        os.pwrite(self.ldev_fd, pack.serialize_header(self.super.log_checksum_salt),
                  self.super.offset_pb(header.logpack_lsid) * self.pbs)
        os.fdatasync(self.ldev_fd)
        log.warning("%s: log pack at lsid %d was torn; kept its first %d IOs", self.config.name,
                    header.logpack_lsid, len(header.records))

    # ------------------------------------------------------------------ properties

    @property
    def size_lb(self) -> int:
        return self.super.device_size

    def lsids(self) -> Lsids:
        with self._lock:
            return Lsids(self._latest, self._completed, self._permanent, self._written, self._prev_written,
                         self._oldest)

    def log_usage(self) -> int:
        """PBs of log between oldest and latest."""
        with self._lock:
            return self._latest - self._oldest

    def log_capacity(self) -> int:
        return self.super.ring_buffer_size

    def counters(self) -> IoCounters:
        """A copy of the IO counters."""
        with self._lock:
            return replace(self._counters)

    @property
    def frozen(self) -> bool:
        with self._lock:
            return self._frozen

    # ------------------------------------------------------------------ the write path

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Log and acknowledge a write of ``data`` at byte ``offset``.

        Raises:
            DeviceIoError: the device refuses it (beyond the end, overflow policy error).
        """
        if not data:
            return
        view = memoryview(data).cast("B")
        if offset % LB or len(view) % LB:
            view, offset = self._read_modify_write(offset, view)
        start = offset // LB
        self._check_range(start, len(view) // LB)
        step = MAX_LOGGED_IO_LB
        requests = [_Request(DiffIo.normal(lb, view[(lb - start) * LB:(min(lb + step, start + len(view) // LB)
                                                                          - start) * LB]))
                    for lb in range(start, start + len(view) // LB, step)]
        self._submit(requests)

    def write_zeros(self, offset: int, length: int) -> None:
        """Write zeros (logged as data, so every archive discard policy restores them)."""
        chunk = bytes(min(length, 1 << 20))
        end = offset + length
        while offset < end:
            count = min(len(chunk), end - offset)
            self.write(offset, memoryview(chunk)[:count])
            offset += count

    def discard(self, offset: int, length: int) -> None:
        """Log a discard of whole LBs in [offset, offset + length) bytes (partial LBs are ignored)."""
        start = -(-offset // LB)
        end = (offset + length) // LB
        if end <= start:
            return
        self._check_range(start, end - start)
        requests = [_Request(DiffIo(lb, min(MAX_DISCARD_IO_LB, end - lb), IoKind.DISCARD))
                    for lb in range(start, end, MAX_DISCARD_IO_LB)]
        self._submit(requests)

    def _check_range(self, start: int, blocks: int) -> None:
        if start + blocks > self.size_lb:
            raise DeviceIoError(f"IO [{start}, {start + blocks}) LB beyond the device's {self.size_lb} LB",
                                errno.ENOSPC)

    def _read_modify_write(self, offset: int, view: memoryview) -> tuple[memoryview, int]:
        """Widen an unaligned write to whole LBs with the current contents around it."""
        start = offset - offset % LB
        end = -(-(offset + len(view)) // LB) * LB
        if end > self.size_lb * LB:
            raise DeviceIoError(f"write at {offset} beyond the device's end", errno.ENOSPC)
        merged = bytearray(self.read(start, end - start))
        merged[offset - start:offset - start + len(view)] = view
        return memoryview(merged), start

    def _submit(self, requests: list[_Request]) -> None:
        with self._lock:
            if self._closed:
                raise DeviceIoError("device is shutting down", errno.EIO)
            self._queue.extend(requests)
            nbytes = sum(request.io.blocks for request in requests) * LB
            if requests[0].io.kind == IoKind.DISCARD:
                self._counters.discards += 1
                self._counters.discard_bytes += nbytes
            else:
                self._counters.writes += 1
                self._counters.write_bytes += nbytes
        while True:
            with self._write_lock:
                if all(request.done for request in requests):
                    break
                self._lead()
        self._wait_for_room()
        for request in requests:
            if request.error is not None:
                raise request.error

    def _lead(self) -> None:
        """As leader, log everything queued, in packs.

        A log write that fails (a short write, an ldev error) fails every request of the
        batch not yet logged, so none of their writers waits for it forever.
        """
        self._wait_while_frozen()
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._log_batch(batch)
        except (OSError, DeviceIoError) as exc:
            error = exc if isinstance(exc, DeviceIoError) else \
                DeviceIoError(f"{self.config.ldev}: log write failed: {exc}", exc.errno or errno.EIO)
            log.error("%s: %s", self.config.name, error)
            for request in batch:
                if not request.done:
                    request.error, request.done = error, True

    def _log_batch(self, batch: list[_Request]) -> None:
        builder = LogpackBuilder(self.pbs, self.super.log_checksum_salt, self._latest, self.super.ring_buffer_size)
        in_pack: list[_Request] = []
        data_pb = 0
        for request in batch:
            io = request.io
            pb = -(-io.nbytes // self.pbs) if io.kind == IoKind.NORMAL else 0
            discard = io.kind == IoKind.DISCARD
            if not builder.empty and (not builder.fits(io.blocks, discard) or data_pb + pb > self._max_pack_pb):
                self._commit(builder, in_pack)
                builder = LogpackBuilder(self.pbs, self.super.log_checksum_salt, self._latest,
                                         self.super.ring_buffer_size)
                in_pack, data_pb = [], 0
            if discard:
                builder.add_discard(io.address, io.blocks)
            else:
                builder.add_normal(io.address, io.data())
            in_pack.append(request)
            data_pb += pb
        if in_pack:
            self._commit(builder, in_pack)

    def _commit(self, builder: LogpackBuilder, requests: list[_Request]) -> None:
        """Write one pack to the ring, then publish its IOs to the pending overlay."""
        header, record_data = builder.finish()
        next_lsid = header.next_lsid
        ring = self.super.ring_buffer_size
        if next_lsid - self._prev_written > ring:
            # The pack would overwrite logs a crash recovery still needs: checkpoint first.
            self.flush()
            self._checkpoint()
        if next_lsid - self._oldest > ring:
            if self.config.overflow == OverflowPolicy.ERROR:
                error = DeviceIoError(f"{self.config.name}: log ring overflow (usage would be "
                                      f"{next_lsid - self._oldest} PB of {ring}); write refused")
                with self._lock:
                    self._counters.refused_writes += len(requests)
                for request in requests:
                    request.error, request.done = error, True
                return
            if not self.overflow:
                log.warning("%s: log ring overflow; logs are lost until reset-wal", self.config.name)
            self.overflow = True
        self._write_pack(header, record_data)
        with self._lock:
            for request in requests:
                self._pending.add(request.io)
                self._pending_bytes += request.io.nbytes if request.io.kind == IoKind.NORMAL else 0
                request.done = True
            self._latest = self._completed = next_lsid
            self._counters.logpacks += 1
        if self._pending_bytes >= self.config.flush_size:
            self._wake_flusher.set()

    def _write_pack(self, header: LogpackHeader, record_data: list[bytes | memoryview]) -> None:
        """Write header and data PBs at their ring positions, one pwritev per contiguous run.

        The data may wrap to the ring start once, at a record boundary; padding records'
        PBs are not written (their content is never read).
        """
        pbs = self.pbs
        runs: list[tuple[int, list[bytes | memoryview], int]] = []  # (lsid, buffers, PBs)
        runs.append((header.logpack_lsid, [header.serialize(pbs, self.super.log_checksum_salt)], 1))
        for rec, data in zip(header.records, record_data, strict=True):
            if not rec.is_normal:
                continue
            tail = -len(data) % pbs
            parts = [data, bytes(tail)] if tail else [data]
            count = (len(data) + tail) // pbs
            lsid, buffers, run_pb = runs[-1]
            if lsid + run_pb == rec.lsid and self.super.offset_pb(rec.lsid) != self.super.ring_buffer_offset:
                buffers.extend(parts)
                runs[-1] = (lsid, buffers, run_pb + count)
            else:
                runs.append((rec.lsid, parts, count))
        for lsid, buffers, run_pb in runs:
            offset = self.super.offset_pb(lsid) * pbs
            if os.pwritev(self.ldev_fd, buffers, offset) != run_pb * pbs:
                raise DeviceIoError(f"{self.config.ldev}: short write of log at {offset}")

    def _wait_for_room(self) -> None:
        """Writers wait while too much data waits to be applied (bounds memory)."""
        with self._lock:
            while self._pending_bytes > self.config.max_pending and not self._closed:
                self._wake_flusher.set()
                self._lock.wait(0.1)

    def _wait_while_frozen(self) -> None:
        with self._lock:
            while self._frozen:
                if self._freeze_deadline is not None and time.monotonic() >= self._freeze_deadline:
                    self._frozen, self._freeze_deadline = False, None
                    log.info("%s: freeze timed out; melted", self.config.name)
                    break
                self._lock.wait(0.05)

    # ------------------------------------------------------------------ reads

    def read(self, offset: int, size: int) -> bytes:
        """Read bytes from the ddev with the not yet applied writes laid over them."""
        end = min(offset + size, self.size_lb * LB)
        if end <= offset:
            return b""
        with self._lock:
            self._counters.reads += 1
            self._counters.read_bytes += end - offset
            data = bytearray(os.pread(self.ddev_fd, end - offset, offset))
            if len(data) < end - offset:
                data.extend(bytes(end - offset - len(data)))
            first, last = offset // LB, -(-end // LB)
            for table in (self._applying, self._pending):
                if table is None:
                    continue
                for io in table.overlapping(first, last):
                    lo, hi = max(io.address * LB, offset), min(io.end * LB, end)
                    if io.kind == IoKind.NORMAL:
                        data[lo - offset:hi - offset] = io.data()[lo - io.address * LB:hi - io.address * LB]
                    else:
                        data[lo - offset:hi - offset] = bytes(hi - lo)
        return bytes(data)

    # ------------------------------------------------------------------ flush, apply, checkpoint

    def flush(self) -> None:
        """Make every acknowledged write permanent (sync the ldev) and apply it to the ddev."""
        with self._lock:
            target = self._completed
        with self._flush_lock:
            with self._lock:
                if self._permanent >= target and self._applying is None and not len(self._pending):
                    return
                self._counters.log_syncs += 1
                target = self._completed
                applying, self._pending = self._pending, IntervalMap(on_cut=lambda io: io)
                self._applying = applying
                applied_bytes, self._pending_bytes = self._pending_bytes, 0
            os.fdatasync(self.ldev_fd)
            with self._lock:
                self._permanent = max(self._permanent, target)
                self._lock.notify_all()
            for io in applying:
                self._apply_io(io)
            with self._lock:
                self._applying = None
                self._written = max(self._written, target)
                self._lock.notify_all()
            del applied_bytes

    def _apply_io(self, io: DiffIo) -> None:
        offset = io.address * LB
        if io.kind == IoKind.NORMAL:
            data = io.data()
            done = 0
            while done < len(data):
                done += os.pwrite(self.ddev_fd, data[done:], offset + done)
        else:
            # The ddev gets the discard (a punched hole in an image file): it reads back zeros.
            try:
                discard_range(self.ddev_fd, offset, io.nbytes)
            except OSError:
                write_zeros(self.ddev_fd, offset, io.nbytes)

    def _flusher(self) -> None:
        interval = self.config.flush_interval_ms / 1000
        while not self._stop.is_set():
            self._wake_flusher.wait(interval)
            self._wake_flusher.clear()
            try:
                self.flush()
            except OSError as exc:
                log.error("%s: flush failed: %s", self.config.name, exc)

    def _checkpoint(self) -> None:
        """Save ``written`` (after syncing the ddev) and ``oldest`` in the super sector."""
        with self._checkpoint_lock:  # two at once could save an older written lsid last
            with self._lock:
                written = self._written
                oldest = self._oldest
            if written == self.super.written_lsid and oldest == self.super.oldest_lsid:
                return
            os.fdatasync(self.ddev_fd)
            with self._lock:
                self.super = replace(self.super, written_lsid=written, oldest_lsid=min(oldest, written))
                self._write_super()
                self._prev_written = written

    def _write_super(self) -> None:
        block = self.super.serialize()
        os.pwrite(self.ldev_fd, block, super_sector_offset_pb(self.pbs) * self.pbs)
        os.fdatasync(self.ldev_fd)

    def _checkpointer(self) -> None:
        while not self._stop.wait(self.checkpoint_interval_ms / 1000):
            try:
                self._checkpoint()
            except OSError as exc:
                log.error("%s: checkpoint failed: %s", self.config.name, exc)

    def force_checkpoint(self) -> None:
        self.flush()
        self._checkpoint()

    def set_checkpoint_interval(self, interval_ms: int) -> None:
        if not 100 <= interval_ms <= 24 * 3600 * 1000:
            raise OperationError(f"checkpoint interval {interval_ms} ms is out of 100..86400000")
        self.checkpoint_interval_ms = interval_ms

    # ------------------------------------------------------------------ control operations

    def set_oldest_lsid(self, lsid: int) -> None:
        """Let the ring reuse space below ``lsid`` (WalB: oldest <= lsid <= prev_written)."""
        with self._lock:
            if not self._oldest <= lsid <= self._prev_written:
                raise OperationError(f"lsid {lsid} is out of [oldest {self._oldest}, prev_written "
                                     f"{self._prev_written}]")
            self._oldest = lsid
            self.super = replace(self.super, oldest_lsid=lsid)
            self._write_super()

    def wait_permanent(self, after: int, timeout: float) -> Lsids:
        """Block until ``permanent > after`` or ``timeout`` seconds pass; returns the lsids."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._permanent <= after and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(min(remaining, 1.0))
        return self.lsids()

    def freeze(self, timeout_s: float | None = None) -> None:
        """Hold every new write until ``melt`` (or the timeout)."""
        with self._lock:
            self._frozen = True
            self._freeze_deadline = time.monotonic() + timeout_s if timeout_s else None

    def melt(self) -> None:
        with self._lock:
            self._frozen = False
            self._freeze_deadline = None
            self._lock.notify_all()

    def reset_wal(self) -> None:
        """New uuid and salt, all lsids 0, ring size recomputed, overflow cleared."""
        with self._write_lock:
            self.flush()
            self._checkpoint()
            with self._lock:
                ring = ring_buffer_size_for(size_of(self.ldev_fd), self.pbs)
                fresh = uuidlib.uuid4().bytes
                self.super = replace(self.super, log_checksum_salt=int.from_bytes(fresh[:4], "little"),
                                     uuid=uuidlib.uuid4().bytes, ring_buffer_size=ring, oldest_lsid=0,
                                     written_lsid=0)
                self._write_super()
                # Invalidate the block at lsid 0 so no old pack is taken for a new one.
                os.pwrite(self.ldev_fd, bytes(self.pbs), self.super.offset_pb(0) * self.pbs)
                os.fdatasync(self.ldev_fd)
                self._latest = self._completed = self._permanent = self._written = 0
                self._prev_written = self._oldest = 0
                self.overflow = False
                self._lock.notify_all()
        log.info("%s: reset-wal: uuid %s", self.config.name, self.super.uuid.hex())

    def resize(self, size_lb: int) -> None:
        """Grow the device to ``size_lb`` (0: the whole ddev); shrinking is refused."""
        available = size_of(self.ddev_fd) // LB
        size_lb = size_lb or available
        if size_lb < self.size_lb:
            raise OperationError(f"cannot shrink {self.config.name} from {self.size_lb} to {size_lb} LB")
        if size_lb > available:
            raise OperationError(f"{self.config.ddev} holds {available} LB, less than {size_lb}")
        with self._lock:
            self.super = replace(self.super, device_size=size_lb)
            self._write_super()

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        """Apply and checkpoint everything, stop the threads and close the devices."""
        with self._lock:
            if self._closed:
                return
            self.melt()
            self._closed = True
        self._stop.set()
        self._wake_flusher.set()
        for thread in self._threads:
            thread.join()
        self.flush()
        self._checkpoint()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self.ldev_fd, self.ddev_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def format_ldev(ldev: str, ddev: str, name: str = "", pbs: int | None = None, discard: bool = True) -> SuperSector:
    """Write a fresh super sector (new uuid and salt) and invalidate the ring start."""
    ldev_fd = open_device_file(ldev)
    try:
        ddev_fd = open_device_file(ddev, writable=False)
        try:
            ddev_bytes = size_of(ddev_fd)
        finally:
            os.close(ddev_fd)
        if pbs is None:
            pbs = physical_block_size(ldev_fd) or 512
        ldev_bytes = size_of(ldev_fd)
        sector = SuperSector.format(ldev_bytes, ddev_bytes, pbs, name)
        if sector.ring_buffer_size < min_ring_pb(pbs):
            raise OperationError(f"{ldev}: {ldev_bytes} bytes leave a ring of {sector.ring_buffer_size} PB; "
                                 f"at least {min_ring_pb(pbs)} PB are needed")
        if discard and is_block_device(ldev_fd):
            try:
                discard_range(ldev_fd, 0, ldev_bytes)
            except OSError:
                pass  # not every device discards; the fresh salt invalidates old packs anyway
        os.pwrite(ldev_fd, sector.serialize(), super_sector_offset_pb(pbs) * pbs)
        os.pwrite(ldev_fd, bytes(pbs), sector.offset_pb(0) * pbs)
        os.fsync(ldev_fd)
        return sector
    finally:
        os.close(ldev_fd)
