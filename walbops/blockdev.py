"""Block device and image file primitives: size, discard, zeroing, hole punching."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct

BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)
BLKDISCARD = 0x1277  # _IO(0x12, 119)
BLKZEROOUT = 0x127F  # _IO(0x12, 127)
BLKSSZGET = 0x1268  # logical sector size
BLKPBSZGET = 0x127B  # physical sector size
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]

ZERO_CHUNK = bytes(1 << 20)  # [bytes] reused for writing zeros


def same_node(one: os.stat_result, other: os.stat_result) -> bool:
    """The same file by device and inode; two block device nodes of one device are the same too."""
    if stat.S_ISBLK(one.st_mode) and stat.S_ISBLK(other.st_mode):
        return one.st_rdev == other.st_rdev
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def is_block_device(fd: int) -> bool:
    return stat.S_ISBLK(os.fstat(fd).st_mode)


def size_of(fd: int) -> int:
    """Size in bytes of a block device or regular file."""
    if is_block_device(fd):
        raw = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return int(struct.unpack("<Q", raw)[0])
    return os.fstat(fd).st_size


def size_of_path(path: str) -> int:
    """Size in bytes of the block device or regular file at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return size_of(fd)
    finally:
        os.close(fd)


def physical_block_size(fd: int) -> int | None:
    """The device's physical block size, or None for a regular file."""
    if not is_block_device(fd):
        return None
    raw = fcntl.ioctl(fd, BLKPBSZGET, b"\0" * 4)
    return int(struct.unpack("<I", raw)[0])


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a byte range of a regular file; it reads back as zeros."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """Write all of ``data`` at ``offset`` (pwrite may write less than asked); returns its length."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def write_zeros(fd: int, offset: int, length: int) -> None:
    """Write zeros over a byte range."""
    end = offset + length
    while offset < end:
        count = min(len(ZERO_CHUNK), end - offset)
        os.pwrite(fd, memoryview(ZERO_CHUNK)[:count], offset)
        offset += count


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make a byte range read as zeros, as cheaply as the target allows."""
    if is_block_device(fd):
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("<QQ", offset, length))
            return
        except OSError:
            pass
    else:
        try:
            punch_hole(fd, offset, length)
            return
        except OSError:
            pass
    write_zeros(fd, offset, length)


def discard_range(fd: int, offset: int, length: int) -> None:
    """Pass a discard down: BLKDISCARD on a block device, a punched hole in a file."""
    if is_block_device(fd):
        fcntl.ioctl(fd, BLKDISCARD, struct.pack("<QQ", offset, length))
    else:
        punch_hole(fd, offset, length)


def open_uncached(path: str) -> int:
    """Open a device for reading with O_DIRECT: its page cache, which a mounted filesystem's
    data writes bypass, could otherwise hand back stale blocks. Plain reads where O_DIRECT
    is refused (tmpfs files)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The ``(offset, end)`` byte ranges of ``fd`` that hold data, per SEEK_DATA/SEEK_HOLE.

    A filesystem without hole reporting answers with one extent over the whole file; so does a
    block device (an LV base: the kernel's block devices answer SEEK_DATA with EINVAL).
    """
    if is_block_device(fd):
        return [(0, size)] if size > 0 else []
    extents = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        offset = end
    return extents
