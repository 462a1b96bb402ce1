"""Backups and snapshots (the ``walb_backup`` and ``walb_snapshot`` modules).

A backup is "present" once the archive holds the volume (Archived or Stopped), the storage
ships its logs there (Target or Stopped) and its log did not overflow: running again changes
nothing. Otherwise a hash backup brings the archive's copy up to the device, keeping its
history, or a full backup copies the device when the archive holds nothing; ``force`` takes a
new full backup over an existing one (the archive's copy is cleared first). A snapshot always changes something; with
``digest`` (sha256) or ``block_hash`` (bhash, docs/formats.md 9.4) the walb device is frozen
while the snapshot is taken and the device read, so the value is the volume's content at
exactly that gid.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from typing import Any

from ..blockdev import open_uncached
from ..controller import Controller, Server
from ..device.control import DeviceClient
from ..diff import bhash
from ..errors import OperationError, UsageError
from . import Outcome
from .cluster import volume_status
from .volume import ensure_volume

READ_CHUNK = 4 << 20  # [bytes] per read while digesting a device
FREEZE_TIMEOUT = 3600.0  # [s] the device melts by itself after this, should the digest hang

ARCHIVE_HOLDS_BACKUP = {"Archived", "Stopped"}
STORAGE_SHIPPING = {"Target", "Stopped"}


def digest_of(path: str) -> str:
    """sha256 of a whole device or image, read past the page cache in large chunks."""
    digest = hashlib.sha256()
    fd = open_uncached(path)
    # Page-aligned, as O_DIRECT needs.
    with mmap.mmap(-1, READ_CHUNK) as buffer:
        view = memoryview(buffer)
        try:
            offset = 0
            while got := os.preadv(fd, [view], offset):
                digest.update(view[:got])
                offset += got
        finally:
            view.release()
            os.close(fd)
    return digest.hexdigest()


def _overflowed(controller: Controller, storage: Server, vol: str) -> bool:
    return bool(int(controller.get(storage, "is-overflow", vol)))


BACKUP_METHODS = ("auto", "full", "hash")


def ensure_backup(controller: Controller, storage: Server, vol: str, *, archive: Server | None = None,
                  method: str = "auto", force: bool = False, timeout: float = 3600.0, bulk_size: int | None = None,
                  check: bool = False) -> Outcome:
    """Make ``archive`` (default: the primary) hold a backup of ``vol`` fed by the storage's logs.

    Present when the archive holds the volume (Archived or Stopped), the storage ships to it
    (Target or Stopped) and its walb device did not overflow. Otherwise a backup is taken:
    ``hash`` (and ``auto`` when the archive holds the volume) brings the archive's copy up to the
    device and keeps every snapshot it had; ``full`` (and ``auto`` when it holds nothing) copies
    the whole device. A full backup over an archive that holds the volume deletes its history,
    so it needs ``force``.
    """
    if method not in BACKUP_METHODS:
        raise UsageError(f"method must be one of {', '.join(BACKUP_METHODS)}, not {method!r}")
    archive = archive or controller.layout.primary_archive
    storage_state = volume_status(controller, storage, vol)["state"]
    archive_state = volume_status(controller, archive, vol)["state"]
    before = {"storage": storage_state, "archive": archive_state}
    if storage_state == "Clear":
        raise OperationError(f"{vol} is not initialised on storage {storage.name}: "
                             "walb_volume state=initialized (with its wdev) first")
    archived = archive_state in ARCHIVE_HOLDS_BACKUP
    overflowed = storage_state in STORAGE_SHIPPING and _overflowed(controller, storage, vol)
    if archived and storage_state in STORAGE_SHIPPING and not overflowed and not force:
        restorable = controller.get_restorable(archive, vol, include_implicit=True)
        return Outcome(False, before, before, {"vol": vol, "archive": archive.name, "method": None,
                                               "gid": restorable[-1] if restorable else None,
                                               "bytes": 0, "duration": 0.0, "overflowed": False})
    kind = method if method != "auto" else ("hash" if archived and not force else "full")
    if kind == "hash" and not archived:
        raise OperationError(f"{vol}: archive {archive.name} holds no backup of it ({archive_state}); a hash "
                             "backup needs one: method full (or auto)")
    if kind == "hash" and archive_state != "Archived":
        raise OperationError(f"{vol}: archive {archive.name} is {archive_state}; start it (walb_volume "
                             "state=started) before a hash backup")
    if kind == "full" and archived and not force:
        raise OperationError(f"{vol}: archive {archive.name} already holds a backup ({archive_state}); a full "
                             "backup would delete its history: method hash (or auto) keeps it, force: true "
                             "replaces it")
    after = {"storage": "Target", "archive": "Archived"}
    values: dict[str, Any] = {"vol": vol, "archive": archive.name, "method": kind, "overflowed": overflowed}
    if check:
        return Outcome(True, before, after, {**values, "gid": None, "bytes": None, "duration": None})
    started = time.monotonic()
    if kind == "full":
        if archived:
            ensure_volume(controller, archive, vol, "cleared", force=True)
        gid = controller.full_backup(storage, vol, timeout=timeout, bulk_size=bulk_size, archive=archive)
    else:
        gid = controller.hash_backup(storage, vol, timeout=timeout, bulk_size=bulk_size, archive=archive)
    duration = time.monotonic() - started
    size_lb = int(controller.get(storage, "vol-size", vol))
    after = {"storage": volume_status(controller, storage, vol)["state"],
             "archive": volume_status(controller, archive, vol)["state"]}
    return Outcome(True, before, after, {**values, "gid": gid, "bytes": size_lb * 512 if kind == "full" else None,
                                         "duration": round(duration, 3)})


def take_snapshot(controller: Controller, storage: Server, vol: str, *, wait: bool = True,
                  archives: list[Server] | None = None, digest: bool = False, block_hash: bool = False,
                  timeout: float = 600.0, check: bool = False) -> Outcome:
    """Take an explicit snapshot; optionally digest (sha256) and bhash the device at it, and wait
    until restorable."""
    status = volume_status(controller, storage, vol)
    if status["state"] not in ("Target", "Standby"):
        raise OperationError(f"{vol} on storage {storage.name} is {status['state']}: a snapshot needs it "
                             "started (walb_volume state=started)")
    if check:
        return Outcome(True, values={"vol": vol, "gid": None, "digest": None, "bhash": None, "restorable": False})
    values: dict[str, Any] = {"vol": vol, "digest": None, "bhash": None}
    if digest or block_hash:
        with DeviceClient(status["wdev"], timeout=60.0) as device:
            path = device.call("status")["path"]
            device.call("freeze", timeout=FREEZE_TIMEOUT)
            try:
                gid = int(controller.run(storage, "snapshot", vol=vol)["gid"])
                if digest:
                    values["digest"] = digest_of(path)
                if block_hash:
                    values["bhash"] = bhash.hash_image(path).hexdigest()
            finally:
                device.call("melt")
    else:
        gid = int(controller.run(storage, "snapshot", vol=vol)["gid"])
    values.update(gid=gid, timestamp=int(time.time()), restorable=False)
    if wait and status["state"] == "Target":
        for archive in archives or [controller.layout.primary_archive]:
            controller.kick_proxies(vol)
            controller.wait_for_restorable(archive, vol, gid, timeout)
        values["restorable"] = True
    return Outcome(True, values=values)
