"""The FUSE frontend: the volume as one regular file, mounted over a file.

The mount point is itself a file; the FUSE root *is* the volume, so a loop device can be
attached to the mount point directly. Writes go through the walb write path; fsync makes
them permanent; a punched hole (what a loop device turns a discard into) is a logged
discard.
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from typing import Any

import mfusepy

from .core import LB, DeviceIoError, WalbDevice

log = logging.getLogger("walbops.device.fuse")

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


class VolumeFile(mfusepy.Operations):
    """mfusepy operations for a single-file filesystem backed by a WalbDevice."""

    use_ns = True

    def __init__(self, device: WalbDevice) -> None:
        self.device = device
        self.mounted_at = time.time_ns()

    def _check_root(self, path: str | None) -> None:
        if path not in (None, "/"):
            raise mfusepy.FuseOSError(errno.ENOENT)

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        self._check_root(path)
        return {
            "st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_uid": 0, "st_gid": 0,
            "st_size": self.device.size_lb * LB, "st_blocks": self.device.size_lb, "st_blksize": 4096,
            "st_atime": self.mounted_at, "st_mtime": self.mounted_at, "st_ctime": self.mounted_at,
        }

    def open(self, path: str, flags: int) -> int:
        self._check_root(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        return self.device.read(offset, size)

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        try:
            self.device.write(offset, data)
        except DeviceIoError as exc:
            log.warning("write refused: %s", exc)
            raise mfusepy.FuseOSError(exc.errno) from None
        return len(data)

    def fsync(self, path: str, datasync: int, fh: Any) -> int:
        self.device.flush()
        return 0

    def flush(self, path: str, fh: Any) -> int:
        return 0

    def release(self, path: str, fh: Any) -> int:
        return 0

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        # The size is the device's; opening with O_TRUNC must not fail, resizing must.
        if length != self.device.size_lb * LB:
            raise mfusepy.FuseOSError(errno.EPERM)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: Any) -> int:
        try:
            if mode & FALLOC_FL_PUNCH_HOLE:
                # A loop device turns discards (and write-zeroes that may unmap) into punched
                # holes: logged as DISCARD, and the ddev reads them back as zeros.
                self.device.discard(offset, size)
                return 0
            if mode & FALLOC_FL_ZERO_RANGE:
                self.device.write_zeros(offset, size)
                return 0
        except DeviceIoError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None
        if mode & ~FALLOC_FL_KEEP_SIZE == 0 and offset + size <= self.device.size_lb * LB:
            return 0  # the space already exists
        raise mfusepy.FuseOSError(errno.EOPNOTSUPP)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": self.device.size_lb // 8, "f_bfree": 0,
                "f_bavail": 0, "f_files": 1, "f_ffree": 0, "f_namemax": 255}
