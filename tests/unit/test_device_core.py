"""The walb device's write path in-process (no FUSE): packs, overlay reads, redo, group commit."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import write_torn_pack

from walbops.device.core import DeviceConfig, DeviceIoError, OverflowPolicy, WalbDevice, _Request, format_ldev
from walbops.diff.io import DiffIo
from walbops.diff.logs import LdevLogReader, read_super
from walbops.errors import OperationError

MiB = 1 << 20


def files(tmp_path: Path, ldev: int = 8 * MiB, ddev: int = 4 * MiB, pbs: int = 512) -> DeviceConfig:
    ldev_path, ddev_path = tmp_path / "ldev", tmp_path / "ddev"
    ldev_path.write_bytes(b"")
    os.truncate(ldev_path, ldev)
    ddev_path.write_bytes(b"")
    os.truncate(ddev_path, ddev)
    format_ldev(str(ldev_path), str(ddev_path), "unit", pbs)
    return DeviceConfig("unit", str(ldev_path), str(ddev_path), flush_interval_ms=3_600_000,
                        checkpoint_interval_ms=3_600_000)


def packs(config: DeviceConfig, begin: int = 0):
    fd = os.open(config.ldev, os.O_RDONLY)
    try:
        return list(LdevLogReader(fd, read_super(fd)).packs(begin))
    finally:
        os.close(fd)


def test_reads_see_writes_before_they_reach_the_ddev(tmp_path):
    device = WalbDevice(files(tmp_path))
    try:
        device.write(4096, b"\x01" * 8192)
        assert Path(device.config.ddev).read_bytes()[4096:12288] == bytes(8192), "not applied yet"
        assert device.read(0, 16384) == bytes(4096) + b"\x01" * 8192 + bytes(4096)
        device.discard(8192, 4096)
        assert device.read(4096, 8192) == b"\x01" * 4096 + bytes(4096)
        lsids = device.lsids()
        assert lsids.permanent < lsids.completed == lsids.latest
        device.flush()
        lsids = device.lsids()
        assert lsids.permanent == lsids.written == lsids.latest
        assert Path(device.config.ddev).read_bytes()[4096:12288] == b"\x01" * 4096 + bytes(4096)
    finally:
        device.close()


def test_unaligned_writes_keep_the_bytes_around_them(tmp_path):
    device = WalbDevice(files(tmp_path))
    try:
        device.write(0, b"\xaa" * 1024)
        device.write(100, b"\xbb" * 10)
        assert device.read(0, 1024) == b"\xaa" * 100 + b"\xbb" * 10 + b"\xaa" * 914
    finally:
        device.close()


def test_writes_beyond_the_end_are_refused(tmp_path):
    device = WalbDevice(files(tmp_path))
    try:
        with pytest.raises(DeviceIoError, match="beyond"):
            device.write(4 * MiB - 512, b"\0" * 1024)
        assert device.lsids().latest == 0
    finally:
        device.close()


def test_concurrent_writes_share_log_packs(tmp_path):
    device = WalbDevice(files(tmp_path, ldev=32 * MiB))

    def writer(index: int) -> None:
        for round_ in range(40):
            device.write((index * 40 + round_) * 4096, bytes([index + 1]) * 4096)

    # Frozen, every writer's first write waits in the queue: the leader logs them together
    # once melted, whatever the scheduling.
    device.freeze()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(device._queue) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    device.melt()
    for thread in threads:
        thread.join()
    device.close()
    logged = packs(device.config)
    assert sum(pack.header.n_records for pack in logged) == 320
    assert max(pack.header.n_records for pack in logged) > 1, "some pack holds writes of several writers"
    data = Path(device.config.ddev).read_bytes()
    for index in range(8):
        assert data[index * 40 * 4096:(index + 1) * 40 * 4096] == bytes([index + 1]) * 40 * 4096


def crash(device: WalbDevice) -> None:
    """Stop a device the way a SIGKILL does: nothing applied, nothing checkpointed."""
    device._stop.set()
    os.close(device.ldev_fd)
    os.close(device.ddev_fd)


def test_reopening_redoes_logs_from_the_checkpoint(tmp_path):
    config = files(tmp_path)
    device = WalbDevice(config)
    device.write(0, b"\x07" * 4096)
    device.force_checkpoint()
    device.write(8192, b"\x08" * 4096)
    crash(device)  # logged but never applied nor checkpointed
    assert Path(config.ddev).read_bytes()[8192:12288] == bytes(4096)
    reopened = WalbDevice(config)
    try:
        assert Path(config.ddev).read_bytes()[8192:12288] == b"\x08" * 4096
        assert reopened.lsids().latest == reopened.lsids().written
    finally:
        reopened.close()


def test_redo_cuts_a_torn_pack_and_stores_the_cut_header(tmp_path):
    """WalB's redo of a partially valid pack: its valid IOs are applied, the cut header is
    written back, and the logs written after it read on from an lsid before it."""
    config = files(tmp_path)
    device = WalbDevice(config)
    device.write(64 * 4096, b"\x01" * 4096)
    latest = device.lsids().latest
    crash(device)
    write_torn_pack(config.ldev, latest, [(0, b"\x02" * 4096), (8, b"\x03" * 4096), (16, b"\x04" * 4096)])
    reopened = WalbDevice(config)
    try:
        assert reopened.read(0, 12288) == b"\x02" * 4096 + b"\x03" * 4096 + bytes(4096)
        assert reopened.lsids().latest == latest + 1 + 2 * 4096 // 512
        reopened.write(128 * 4096, b"\x05" * 4096)
        reopened.flush()
    finally:
        reopened.close()
    logged = packs(config)
    assert [len(pack.header.records) for pack in logged] == [1, 2, 1]
    assert not any(pack.shrunk for pack in logged), "the stored header is the cut one"
    assert bytes(logged[-1].data) == b"\x05" * 4096


def test_a_failed_log_write_fails_its_whole_batch_and_the_device_goes_on(tmp_path, monkeypatch):
    """A full or failing ldev: the writes of the batch get the error (none waits forever for a
    leader that gave up), nothing of them is published, and the next write is logged where
    they would have been."""
    device = WalbDevice(files(tmp_path))
    try:
        real_pwritev = os.pwritev
        failures = iter([OSError(errno.ENOSPC, "No space left on device")])

        def full_once(fd, buffers, offset):
            failure = next(failures, None)
            if failure is not None:
                raise failure
            return real_pwritev(fd, buffers, offset)

        monkeypatch.setattr(os, "pwritev", full_once)
        queued = _Request(DiffIo.normal(64, b"\x09" * 4096))  # another writer's, in the same batch
        device._queue.append(queued)
        with pytest.raises(DeviceIoError, match="No space left") as raised:
            device.write(0, b"\x08" * 4096)
        assert raised.value.errno == errno.ENOSPC
        assert queued.done and queued.error is raised.value
        assert device.lsids().latest == 0 and device.read(0, 4096) == bytes(4096)
        device.write(0, b"\x07" * 4096)
        assert device.lsids().latest == 1 + 8
    finally:
        device.close()
    assert [bytes(pack.data) for pack in packs(device.config)] == [b"\x07" * 4096]


def test_error_policy_refuses_writes_that_would_overflow(tmp_path):
    config = files(tmp_path, ldev=3 * MiB)
    device = WalbDevice(DeviceConfig(**{**config.__dict__, "overflow": OverflowPolicy.ERROR}))
    try:
        with pytest.raises(DeviceIoError, match="overflow"):
            for offset in range(0, 4 * MiB, 64 * 1024):
                device.write(offset, b"\x01" * 64 * 1024)
        assert not device.overflow
        assert device.log_usage() <= device.log_capacity()
    finally:
        device.close()


def test_overwrite_policy_flags_overflow_and_reset_wal_clears_it(tmp_path):
    device = WalbDevice(files(tmp_path, ldev=3 * MiB))
    try:
        for offset in range(0, 4 * MiB, 64 * 1024):
            device.write(offset, b"\x02" * 64 * 1024)
        assert device.overflow
        old_uuid = device.super.uuid
        device.reset_wal()
        assert not device.overflow and device.super.uuid != old_uuid and device.lsids().latest == 0
        assert device.read(0, 64 * 1024) == b"\x02" * 64 * 1024
    finally:
        device.close()


def test_set_oldest_lsid_bounds_and_resize(tmp_path):
    device = WalbDevice(files(tmp_path))
    try:
        device.write(0, b"\x03" * 4096)
        with pytest.raises(OperationError, match="prev_written"):
            device.set_oldest_lsid(device.lsids().latest)
        device.force_checkpoint()
        device.set_oldest_lsid(device.lsids().prev_written)
        with pytest.raises(OperationError, match="shrink"):
            device.resize(1)
        with pytest.raises(OperationError, match="holds"):
            device.resize(device.size_lb * 4)
    finally:
        device.close()
