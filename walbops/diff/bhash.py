"""bhash: a stream hash of a whole volume image, computed the same way on a device and on an archive.

The image is cut into bulks of ``bulk`` bytes from offset 0 (the last one may be shorter);
bulk ``i`` is hashed with MurmurHash3_x64_128 seeded with ``i mod 2**32``, and the 16-byte
digests of all bulks are XORed (WalB's ``StreamHasher``, walb.md §6.4). The result prints as
32 hex digits of those 16 bytes in memory order (h1 then h2, little-endian), as WalB prints
a ``cybozu::murmurhash3::Hash``. docs/formats.md states it with an example.

The archive computes it over the *virtual* image at a gid — the base with the diffs of the
chain laid over it, DISCARD and ALLZERO reading as zeros — without writing that image
anywhere; a storage host computes it over its device. Equal hashes with the same bulk size
say the two images are equal.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator, Sequence

import mmh3
import numpy as np

from ..errors import UsageError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from .engine import full_image
from .files import merged_ios
from .io import DiffIo

DEFAULT_BULK = 256 << 10  # [bytes] WalB's bhash default
HASH_SIZE = 16  # [bytes] MurmurHash3_x64_128
READ_SIZE = 4 << 20  # [bytes] a device is read this much at a time (whole bulks)
_SEED_MODULUS = 1 << 32  # the seed is a uint32_t in WalB


def check_bulk(bulk: int) -> int:
    """A bulk size must be a positive multiple of 512 bytes.

    Raises:
        UsageError: it is not.
    """
    if bulk <= 0 or bulk % LOGICAL_BLOCK_SIZE:
        raise UsageError(f"bulk size {bulk} is not a positive multiple of {LOGICAL_BLOCK_SIZE} bytes")
    return bulk


def bulk_hash(bulk: bytes | bytearray | memoryview, seed: int) -> bytes:
    """MurmurHash3_x64_128 of one bulk, 16 bytes: what a hash backup compares bulk by bulk."""
    return bytes(mmh3.mmh3_x64_128_digest(bulk, seed % _SEED_MODULUS))


def bulk_hashes(window: bytes | bytearray | memoryview, bulk: int, seed: int) -> bytes:
    """The :func:`bulk_hash` of each bulk of ``window`` (whole LBs; the last bulk may be short),
    end to end: what one ``hashes`` batch of a hash sync carries.

    All-zero bulks, most of a sparse volume, share one hash computed once: they are found in
    one numpy pass and only the others are hashed one by one.
    """
    view = memoryview(window).cast("B")
    count = -(-len(view) // bulk)
    if count == 0:
        return b""
    words = np.frombuffer(view, dtype=np.uint64)  # whole LBs: a multiple of 8 bytes
    whole = len(view) // bulk
    nonzero = np.ones(count, dtype=bool)
    nonzero[:whole] = words[:whole * bulk // 8].reshape(whole, bulk // 8).any(axis=1)
    hashes = np.empty((count, HASH_SIZE), dtype=np.uint8)
    hashes[:] = np.frombuffer(bulk_hash(bytes(bulk), seed), dtype=np.uint8)
    differing = np.flatnonzero(nonzero).tolist()
    if differing:
        hashes[differing] = np.frombuffer(b"".join(bulk_hash(view[index * bulk:(index + 1) * bulk], seed)
                                                   for index in differing), dtype=np.uint8).reshape(-1, HASH_SIZE)
    return hashes.tobytes()


def virtual_bulk_hashes(base_fd: int | None, diff_paths: Sequence[str], size_lb: int, bulk: int, seed: int,
                        batch: int) -> Iterator[bytes]:
    """The :func:`bulk_hash` of every bulk of the base with ``diff_paths`` laid over it, ``batch``
    hashes (16 bytes each) at a time, in order: the receiving side of a hash sync."""
    return (hashes for _, _, hashes in virtual_hashed_windows(base_fd, diff_paths, size_lb, bulk, seed, batch))


def virtual_hashed_windows(base_fd: int | None, diff_paths: Sequence[str], size_lb: int, bulk: int, seed: int,
                           batch: int) -> Iterator[tuple[int, memoryview, bytes]]:
    """(offset_lb, window, hashes) of the base with ``diff_paths`` laid over it, ``batch`` bulks
    at a time, in order: the window's bytes and the :func:`bulk_hash` of each of its bulks (the
    bulk boundaries stay those of ``bulk``). A source archive sends a hash replication from them."""
    check_bulk(bulk)
    ios = merged_ios(diff_paths) if diff_paths else iter(())
    window_lb = batch * bulk // LOGICAL_BLOCK_SIZE
    for index, window in enumerate(full_image(_within(ios, size_lb), size_lb, base_fd, window_lb)):
        yield index * window_lb, window, bulk_hashes(window, bulk, seed)


class StreamHasher:
    """XOR of MurmurHash3_x64_128(bulk i, seed i) over the bulks given in order."""

    def __init__(self) -> None:
        self._value = 0
        self.bulks = 0
        self.size = 0  # [bytes] hashed so far

    def update(self, bulk: bytes | bytearray | memoryview) -> None:
        """Hash the next bulk (all but the last must have the same size: the caller cuts them)."""
        digest = mmh3.mmh3_x64_128_digest(bulk, self.bulks % _SEED_MODULUS)
        self._value ^= int.from_bytes(digest, "little")
        self.bulks += 1
        self.size += len(bulk)

    def digest(self) -> bytes:
        return self._value.to_bytes(HASH_SIZE, "little")

    def hexdigest(self) -> str:
        return self.digest().hex()


def hash_bulks(bulks: Iterable[bytes | bytearray | memoryview]) -> StreamHasher:
    hasher = StreamHasher()
    for bulk in bulks:
        hasher.update(bulk)
    return hasher


def hash_image(path: str, bulk: int = DEFAULT_BULK, size: int | None = None) -> StreamHasher:
    """bhash of a device or image file, read with O_DIRECT where it can be (past the page cache).

    Args:
        bulk: the bulk size [bytes], a multiple of 512.
        size: hash only the first ``size`` bytes (default: all of it).

    Raises:
        UsageError: a bad bulk size, or ``size`` beyond the end of the image.
        OSError: it cannot be read.
    """
    check_bulk(bulk)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(path, os.O_RDONLY)  # a filesystem without O_DIRECT (tmpfs)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if size is None:
            size = end
        elif size > end:
            raise UsageError(f"{path}: {size} bytes asked, it holds {end}")
        step = max(1, READ_SIZE // bulk) * bulk
        buffer = mmap.mmap(-1, step)  # page-aligned, for O_DIRECT
        view = memoryview(buffer)
        hasher = StreamHasher()
        offset = 0
        while offset < size:
            want = min(step, size - offset)
            # O_DIRECT wants whole sectors: read up to the next 512 and hash only what belongs.
            got = os.preadv(fd, [view[:-(-want // LOGICAL_BLOCK_SIZE) * LOGICAL_BLOCK_SIZE]], offset)
            if got < want:
                raise OSError(f"{path}: short read at byte {offset + got}")
            for at in range(0, want, bulk):
                hasher.update(view[at:min(at + bulk, want)])
            offset += want
        view.release()
        buffer.close()
        return hasher
    finally:
        os.close(fd)


def hash_virtual(base_fd: int | None, diff_paths: Sequence[str], size_lb: int, bulk: int = DEFAULT_BULK,
                 scan_lb: int | None = None) -> StreamHasher:
    """bhash of the base with ``diff_paths`` (oldest first, verified) laid over it.

    Args:
        base_fd: the base image, or None for zeros.
        size_lb: the volume size [LB]; ``scan_lb`` hashes only the first that many LB.
    """
    check_bulk(bulk)
    ios = merged_ios(diff_paths) if diff_paths else iter(())
    size_lb = size_lb if scan_lb is None else min(scan_lb, size_lb)
    return hash_bulks(full_image(_within(ios, size_lb), size_lb, base_fd, bulk // LOGICAL_BLOCK_SIZE))


def _within(ios: Iterator[DiffIo], size_lb: int) -> Iterator[DiffIo]:
    """The IOs cut at ``size_lb`` (a scan of the first part of a volume)."""
    for io in ios:
        if io.address >= size_lb:
            return
        yield io if io.end <= size_lb else io.cut(io.address, size_lb)
