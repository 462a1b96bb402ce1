"""The sending halves of the transfers (docs/protocol.md §8): full backup, wdiff, wlog, and
what both ends of a file stream share (:func:`receive_file`, :class:`InOrder`, :func:`prefetched`).

Each sender sends the request, and once it is accepted streams the data, ends the stream and
waits for the receiver's ``ack``; only then may the caller release its copy (free log
space, delete a diff, move to Target). A refusal raises RemoteError with WalB's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ..diff.bhash import bulk_hashes
from ..diff.io import is_all_zero
from ..errors import BadField, InvalidMessage, OperationError, RemoteError, WalbopsError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..gid import MetaDiff, MetaSnap
from ..net import messages
from ..net.frames import DataFrame
from ..net.stream import HashSyncCursor, ImageCursor, StreamDigest
from ..net.transport import Channel

FILE_READ = 1 << 20  # [bytes] read size when streaming a file
BACKUP_READ = 1 << 20  # [bytes] a full backup reads the device this much at a time (whole bulks)

T = TypeVar("T")


async def receive_file(channel: Channel, what: str, sender: str, limit: int,
                       take: Callable[[bytes], Awaitable[None]]) -> int:
    """Receive a stream whose data is a file (a wlog, a wdiff): hand each data frame to ``take``
    until ``end``, whose size and checksum must match. Returns the size.

    Args:
        what: the file's kind, and ``sender`` who sends it (``vol: the storage``), for errors.
        limit: the most bytes the request allows.

    Raises:
        BadField: the stream exceeds ``limit`` or carries a message it should not.
        ChecksumMismatch: ``end`` disagrees with the data.
        OperationError: the sender aborted.
    """
    digest = StreamDigest()
    while True:
        frame = await channel.recv()
        if isinstance(frame, DataFrame):
            digest.update(frame.data)
            if digest.size > limit:
                raise BadField(f"{what} stream exceeds the {limit} bytes its request allows")
            await take(frame.data)
            continue
        message = frame.message
        if message["type"] == "abort":
            raise OperationError(f"{sender} aborted: {message['reason']}")
        if message["type"] != "end":
            raise BadField(f"unexpected {message['type']} in a {what} stream")
        digest.check(message)
        return digest.size


class InOrder:
    """Blocking steps run in a thread one at a time, in order, while the caller goes on (receiving
    the next piece of a stream): at most one step is in flight. A step's failure is raised by the
    next ``submit`` or by ``drain``; ``settle`` (in a ``finally``) waits for the last step quietly,
    so that what it uses (a file, a descriptor) may be closed after it."""

    def __init__(self) -> None:
        self._pending: asyncio.Future[Any] | None = None

    async def submit(self, step: Callable[..., Any], *args: Any) -> None:
        await self.drain()
        self._pending = asyncio.ensure_future(asyncio.to_thread(step, *args))

    async def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()  # retrieved: the caller is already failing for a reason of its own


async def prefetched(items: Iterable[T]) -> AsyncGenerator[T, None]:
    """The items of a blocking iterable, each fetched in a thread while the caller uses the one before
    (the next read overlaps the current send). Close it (``contextlib.aclosing``) when leaving early."""
    iterator = iter(items)
    end = object()
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[Any] = loop.run_in_executor(None, next, iterator, end)
    try:
        while True:
            item = await pending
            if item is end:
                return
            pending = loop.run_in_executor(None, next, iterator, end)
            yield item
    finally:
        if not pending.done():
            with contextlib.suppress(Exception):
                await asyncio.wait([pending])  # the iterator's resources must outlive its last read
        if pending.done() and not pending.cancelled():
            pending.exception()  # retrieved: a failed read after an early exit is not worth a warning


async def request_accepted(channel: Channel, command: str, args: dict[str, Any]) -> None:
    result = await channel.request(command, args)
    if result != messages.ACCEPTED:
        raise RemoteError(f"{command}: unexpected answer {result!r}")


async def _finish(channel: Channel, digest: StreamDigest, gid: int | None = None) -> None:
    await channel.send_json(digest.end(gid))
    async with channel.keepalive():
        await channel.recv_json("ack")


async def send_full_backup(channel: Channel, vol: str, fd: int, size_lb: int, bulk_lb: int, timestamp: int,
                           on_accepted: Callable[[], Awaitable[bytes]], on_streamed: Callable[[], Awaitable[int]],
                           progress: Callable[[int], None] | None = None, throttle: "Throttle | None" = None) -> int:
    """Stream the volume behind ``fd`` to the primary archive (dirty-full-sync).

    Args:
        on_accepted: runs once the archive accepted (the storage resets its WAL there)
            and returns the device uuid for ``begin``.
        on_streamed: runs after the last bulk (the storage takes its snapshot) and
            returns gidE.
        progress: called with the LBs sent so far.

    Returns:
        gidE, once the archive acknowledged the base.
    """
    await request_accepted(channel, messages.DIRTY_FULL_SYNC,
                    {"vol": vol, "size_lb": size_lb, "bulk_lb": bulk_lb, "timestamp": timestamp})
    uuid = await on_accepted()
    await channel.send_json(messages.begin(uuid))
    async with contextlib.aclosing(prefetched(_read_bulks(fd, size_lb, bulk_lb))) as reads:
        digest = await send_image(channel, _paced(reads, throttle), size_lb, bulk_lb, progress)
    gid = await on_streamed()
    await _finish(channel, digest, gid)
    return gid


async def send_base_replica(channel: Channel, uuid: bytes, fd: int, size_lb: int, bulk_lb: int, base: str,
                            progress: Callable[[int], None] | None = None, start_lb: int = 0) -> None:
    """A full replication's stream (docs/protocol.md §8.6), once repl-sync answered ``full``: the
    base image behind ``fd`` from ``start_lb`` (a resumed one: what the destination lacks) and its
    MetaState ``base``; returns once the destination holds it."""
    await channel.send_json(messages.begin(uuid, size_lb, bulk_lb, base, start_lb or None))
    async with contextlib.aclosing(prefetched(_read_bulks(fd, size_lb, bulk_lb, start_lb))) as reads:
        digest = await send_image(channel, reads, size_lb, bulk_lb, progress)
    await _finish(channel, digest)


async def send_image(channel: Channel, pieces: AsyncIterator[tuple[int, bytes | memoryview]], size_lb: int,
                     bulk_lb: int, progress: Callable[[int], None] | None = None) -> StreamDigest:
    """The items of an image stream (docs/protocol.md §8.3) after its ``begin``, up to its ``end``.

    ``pieces`` are (offset_lb, data) of consecutive whole bulks from LB 0 (the last may be
    short). A bulk of data goes as ``chunk`` + its bytes, a run of all-zero bulks as one
    ``zero``. Returns the digest for ``end``.
    """
    digest = StreamDigest()
    zero_from: int | None = None
    bulk = bulk_lb * LOGICAL_BLOCK_SIZE
    async for start_lb, data in pieces:
        view = memoryview(data)
        for at in range(0, len(view), bulk):
            piece = view[at:at + bulk]
            offset_lb = start_lb + at // LOGICAL_BLOCK_SIZE
            if is_all_zero(piece):
                zero_from = offset_lb if zero_from is None else zero_from
                continue
            if zero_from is not None:
                await channel.send_json(messages.zero(zero_from, offset_lb - zero_from))
                zero_from = None
            count = len(piece) // LOGICAL_BLOCK_SIZE
            await channel.send_json(messages.chunk(offset_lb, count))
            digest.update(piece)
            await channel.send_data(piece)
            if progress is not None:
                progress(offset_lb + count)
    if zero_from is not None:
        await channel.send_json(messages.zero(zero_from, size_lb - zero_from))
    return digest


async def receive_image(channel: Channel, size_lb: int, bulk_lb: int, sender: str,
                        on_data: Callable[[int, bytes], Awaitable[None]],
                        on_zero: Callable[[int, int], Awaitable[None]], start_lb: int = 0) -> dict[str, Any]:
    """Receive the items of an image stream after its ``begin``, from ``start_lb``; returns its
    checked ``end``.

    ``on_data(offset, data)`` gets each data frame at its byte offset in the volume,
    ``on_zero(offset, length)`` each zero range [bytes], in order.

    Raises:
        InvalidMessage: items out of order, past the volume, or not covering it.
        ChecksumMismatch, BadField: ``end`` disagrees with the data.
        OperationError: the sender aborted.
    """
    cursor = ImageCursor(size_lb, bulk_lb, start_lb)
    digest = StreamDigest()
    while True:
        frame = await channel.recv()
        if isinstance(frame, DataFrame):
            offset = cursor.data(len(frame.data))
            digest.update(frame.data)
            await on_data(offset, frame.data)
            continue
        message = frame.message
        kind = message["type"]
        if kind == "abort":
            raise OperationError(f"{sender} aborted: {message['reason']}")
        if kind == "end":
            digest.check(message)
            cursor.finish()
            return message
        cursor.item(message)
        if kind == "zero":
            await on_zero(message["offset_lb"] * LOGICAL_BLOCK_SIZE, message["count_lb"] * LOGICAL_BLOCK_SIZE)


async def receive_hash_sync(channel: Channel, cursor: HashSyncCursor, hashing: asyncio.Task[None],
                            on_bulks: Callable[[list[list[int]], bytes], Awaitable[None]],
                            sender: str = "the storage") -> dict[str, Any]:
    """The archive's receiving half of a dirty-hash-sync, while ``hashing`` sends the hashes:
    ``on_bulks(items, data)`` for each ``bulks`` message with the bytes of its non-zero bulks;
    returns the checked ``end`` once the hashes are all sent.

    Raises:
        InvalidMessage: bulks out of order or past the hashed ones; ``end`` before every bulk was hashed.
        ChecksumMismatch, BadField: ``end`` disagrees with the data, or carries no gid.
        OperationError: the sender aborted, or sending the hashes failed.
    """
    digest = StreamDigest()
    receiving = asyncio.ensure_future(channel.recv())
    items: list[list[int]] = []
    data = bytearray()
    try:
        while True:
            await asyncio.wait([receiving] if hashing.done() else [receiving, hashing],
                               return_when=asyncio.FIRST_COMPLETED)
            if hashing.done() and not hashing.cancelled() and hashing.exception() is not None:
                raise OperationError(f"sending the hashes failed: {hashing.exception()}")
            if not receiving.done():
                continue
            frame = receiving.result()
            receiving = asyncio.ensure_future(channel.recv())
            if isinstance(frame, DataFrame):
                cursor.data(len(frame.data))
                digest.update(frame.data)
                data.extend(frame.data)
                if not cursor.pending:
                    await on_bulks(items, bytes(data))
                    data.clear()
                continue
            message = frame.message
            kind = message["type"]
            if kind == "abort":
                raise OperationError(f"{sender} aborted the hash sync: {message['reason']}")
            if kind == "end":
                await hashing  # the storage compared every bulk only once every hash went out
                digest.check(message)
                cursor.finish()
                if "gid" not in message:
                    raise BadField("end of a hash backup without its gid")
                return message
            if kind != "bulks":
                raise InvalidMessage(f"expected bulks or end in a hash sync, got {kind}")
            items = message["items"]
            if not cursor.bulks(items):
                await on_bulks(items, b"")  # all zeros: no data follows
    finally:
        if not receiving.done():
            receiving.cancel()
            await asyncio.wait([receiving])


async def _paced(pieces: AsyncIterator[tuple[int, bytes]],
                 throttle: "Throttle | None") -> AsyncIterator[tuple[int, bytes]]:
    async for piece in pieces:
        if throttle is not None:
            await throttle.pace(len(piece[1]))
        yield piece


class Throttle:
    """Keeps a scan at or below ``bytes_per_second`` (0: no limit); WalB's -full-scan-bps."""

    def __init__(self, bytes_per_second: Callable[[], int]) -> None:
        self.rate = bytes_per_second  # read each time: set-full-scan-bps changes it during a scan
        self.started = time.monotonic()
        self.done = 0  # [bytes]

    async def pace(self, size: int) -> None:
        self.done += size
        rate = self.rate()
        if rate > 0:
            ahead = self.done / rate - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)


HashedBatches = Callable[[int], Iterator[tuple[int, bytes | memoryview, bytes]]]


async def send_hash_backup(channel: Channel, vol: str, fd: int, size_lb: int, bulk_lb: int, timestamp: int,
                           on_snapshot: Callable[[MetaSnap], Awaitable[bytes]],
                           on_streamed: Callable[[], Awaitable[int]],
                           progress: Callable[[int], None] | None = None,
                           throttle: Throttle | None = None) -> tuple[MetaSnap, int]:
    """The storage's half of a hash backup (dirty-hash-sync, docs/protocol.md §8.4).

    Args:
        on_snapshot: runs with the archive's latest snapshot once it accepted (the storage resets
            its WAL there, its next gid after the snapshot's) and returns the device uuid.
        on_streamed: runs once every bulk is compared (the storage takes its snapshot); returns gidE.

    Returns:
        (the archive's snapshot the backup started from, gidE), once the archive acknowledged.
    """
    await request_accepted(channel, messages.DIRTY_HASH_SYNC,
                    {"vol": vol, "size_lb": size_lb, "bulk_lb": bulk_lb, "timestamp": timestamp})

    async def begin(snap: MetaSnap) -> dict[str, Any]:
        return messages.begin(await on_snapshot(snap))

    batch = messages.hash_batch(bulk_lb)
    return await send_differing_bulks(channel, begin, lambda seed: _hashed_batches(fd, size_lb, bulk_lb, seed, batch),
                                      bulk_lb, on_streamed, progress, throttle)


async def send_differing_bulks(channel: Channel, begin: Callable[[MetaSnap], Awaitable[dict[str, Any]]],
                               batches: HashedBatches, bulk_lb: int, on_streamed: Callable[[], Awaitable[int]],
                               progress: Callable[[int], None] | None = None,
                               throttle: Throttle | None = None) -> tuple[MetaSnap, int]:
    """The sending half of a dirty-hash-sync once the receiver started it (docs/protocol.md §8.4,
    §8.6): a storage scanning its device, or a source archive scanning its image at a snapshot.

    Args:
        begin: runs with the receiver's snapshot (``hash-begin``) and returns the ``begin`` message.
        batches: ``batches(seed)`` yields (offset_lb, data, hashes) of the image to send, a hash
            batch (messages.hash_batch) at a time: what the receiver's next ``hashes`` covers.
        on_streamed: runs once every bulk is compared; returns the gid ``end`` carries.

    Returns:
        (the receiver's snapshot, the gid ``end`` carried), once the receiver acknowledged.
    """
    hash_begin = await channel.recv_json("hash-begin")
    snap = MetaSnap.parse(hash_begin["snap"])
    await channel.send_json(await begin(snap))
    digest = StreamDigest()
    bulk = bulk_lb * LOGICAL_BLOCK_SIZE
    async with channel.keepalive(), contextlib.aclosing(prefetched(batches(int(hash_begin["seed"])))) as reads:
        async for offset_lb, data, ours in reads:
            announced = await channel.recv_json("hashes")
            frame = await channel.recv()
            count = len(ours) // messages.HASH_SIZE
            if announced["offset_lb"] != offset_lb or announced["count"] != count or not isinstance(frame, DataFrame) \
                    or len(frame.data) != len(ours):
                raise InvalidMessage(f"hashes at LB {announced['offset_lb']} for {announced['count']} bulks, where "
                                     f"{count} bulks from LB {offset_lb} were due")
            # One comparison for the whole batch: the bulks whose 16 bytes differ.
            differ = np.flatnonzero((np.frombuffer(ours, dtype=np.uint64) != np.frombuffer(frame.data, dtype=np.uint64))
                                    .reshape(count, 2).any(axis=1)).tolist()
            if differ:
                # One message for the batch's differing bulks, then their bytes (all-zero ones go as a flag).
                view = memoryview(data)
                items, pieces = [], []
                for index in differ:
                    piece = view[index * bulk:(index + 1) * bulk]
                    zero = is_all_zero(piece)
                    items.append((offset_lb + index * bulk_lb, len(piece) // LOGICAL_BLOCK_SIZE, zero))
                    if not zero:
                        pieces.append(piece)
                await channel.send_json(messages.bulks(items))
                if pieces:
                    joined = b"".join(pieces)
                    digest.update(joined)
                    await channel.send_data(joined)
            if progress is not None:
                progress(offset_lb + len(data) // LOGICAL_BLOCK_SIZE)
            if throttle is not None:
                await throttle.pace(len(data))
    gid = await on_streamed()
    await _finish(channel, digest, gid)
    return snap, gid


def _hashed_batches(fd: int, size_lb: int, bulk_lb: int, seed: int, batch: int) -> Iterator[tuple[int, bytes, bytes]]:
    """(offset_lb, data, hashes) of ``batch`` bulks of the device at a time: the region the archive's
    next hashes message covers, read in one go, and the bulk_hash of each of its bulks. The next
    region is read while this one is hashed."""
    bulk = bulk_lb * LOGICAL_BLOCK_SIZE
    for offset_lb, data in _read_ahead(fd, size_lb, batch * bulk_lb):
        yield offset_lb, data, bulk_hashes(data, bulk, seed)


def _read_bulks(fd: int, size_lb: int, bulk_lb: int, start_lb: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset_lb, data) of the device from ``start_lb`` (a bulk boundary), whole bulks at a time,
    about BACKUP_READ bytes per read."""
    return _read_ahead(fd, size_lb, max(1, BACKUP_READ // (bulk_lb * LOGICAL_BLOCK_SIZE)) * bulk_lb, start_lb)


def _read_ahead(fd: int, size_lb: int, step_lb: int, start_lb: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset_lb, data) of the device from ``start_lb``, ``step_lb`` at a time, the next read already
    running on a thread of its own while the caller works on this one (a storage's disk is then
    busy while it hashes). Closing the iterator waits for that read."""
    # Page-aligned, so an O_DIRECT descriptor can read into it. One is enough: each read is copied
    # out of it on the reader's thread before the next read is submitted.
    buffer = mmap.mmap(-1, step_lb * LOGICAL_BLOCK_SIZE)
    offsets = range(start_lb, size_lb, step_lb)

    def read(index: int) -> bytes:
        offset_lb = offsets[index]
        count = min(step_lb, size_lb - offset_lb)
        return _read_bulk(fd, buffer, count * LOGICAL_BLOCK_SIZE, offset_lb * LOGICAL_BLOCK_SIZE)

    if not offsets:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as reader:
        pending = reader.submit(read, 0)
        for index, offset_lb in enumerate(offsets):
            data = pending.result()
            if index + 1 < len(offsets):
                pending = reader.submit(read, index + 1)
            yield offset_lb, data


def _read_bulk(fd: int, buffer: mmap.mmap, size: int, offset: int) -> bytes:
    """Read ``size`` bytes at ``offset`` (zeros past the end of the device)."""
    view = memoryview(buffer)[:size]
    got = os.preadv(fd, [view], offset)
    data = bytes(view[:got])
    return data + bytes(size - got) if got < size else data


Chunks = AsyncIterator[bytes] | Iterable[bytes] | Iterable[bytes | memoryview]


async def _send_chunks(channel: Channel, chunks: Chunks, digest: StreamDigest) -> None:
    """Send the pieces, each as data frames; a blocking iterable is read in a thread, a piece ahead."""
    stream: AsyncIterator[bytes | memoryview] = chunks if hasattr(chunks, "__aiter__") \
        else prefetched(chunks)  # type: ignore[assignment, arg-type]
    try:
        async for piece in stream:
            digest.update(piece)
            await channel.send_data(piece)
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()  # its file or ring is let go now, not when it is collected


def _file_pieces(path: str) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as stream:
        while piece := stream.read(FILE_READ):
            yield piece


def file_chunks(path: str) -> AsyncGenerator[bytes, None]:
    """A file's bytes, read off the event loop, the next piece while the caller sends the current."""
    return prefetched(_file_pieces(path))


async def send_wdiff(channel: Channel, vol: str, uuid: bytes, size_lb: int, diff: MetaDiff,
                     chunks: Chunks) -> None:
    """Send one sorted wdiff (wdiff-transfer); returns once the archive holds it."""
    await request_accepted(channel, messages.WDIFF_TRANSFER,
                    {"vol": vol, "uuid": uuid.hex(), "size_lb": size_lb, "diff": str(diff)})
    digest = StreamDigest()
    await _send_chunks(channel, chunks, digest)
    await _finish(channel, digest)


async def send_wlog(channel: Channel, vol: str, uuid: bytes, pbs: int, salt: int, size_lb: int, diff: MetaDiff,
                    max_log_pb: int, chunks: Chunks) -> None:
    """Send one wlog (wlog-transfer); returns once the proxy holds it durably."""
    await request_accepted(channel, messages.WLOG_TRANSFER,
                    {"vol": vol, "uuid": uuid.hex(), "pbs": pbs, "salt": salt, "size_lb": size_lb,
                     "diff": str(diff), "max_log_pb": max_log_pb})
    digest = StreamDigest()
    try:
        await _send_chunks(channel, chunks, digest)
    except (WalbopsError, OSError) as exc:
        # The logs could not be read to the end: the proxy must discard what it got (§7.2).
        await channel.send_abort(str(exc))
        raise
    await _finish(channel, digest)
