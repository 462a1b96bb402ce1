"""The sending halves of the transfers (docs/protocol.md §8): full backup, wdiff, wlog.

Each sends the request, and once it is accepted streams the data, ends the stream and
waits for the receiver's ``ack``; only then may the caller release its copy (free log
space, delete a diff, move to Target). A refusal raises RemoteError with WalB's reason.
"""

from __future__ import annotations

import asyncio
import mmap
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from ..diff.io import is_all_zero
from ..errors import RemoteError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from ..formats.meta import MetaDiff
from ..net import messages
from ..net.stream import StreamDigest
from ..net.transport import Channel

FILE_READ = 1 << 20  # [bytes] read size when streaming a file


async def _accepted(channel: Channel, command: str, args: dict[str, Any]) -> None:
    result = await channel.request(command, args)
    if result != messages.ACCEPTED:
        raise RemoteError(f"{command}: unexpected answer {result!r}")


async def _finish(channel: Channel, digest: StreamDigest, gid: int | None = None) -> None:
    await channel.send_json(digest.end(gid))
    async with channel.keepalive():
        await channel.recv_json("ack")


async def send_full_backup(channel: Channel, vol: str, fd: int, size_lb: int, bulk_lb: int, timestamp: int,
                           on_accepted: Callable[[], Awaitable[bytes]], on_streamed: Callable[[], Awaitable[int]],
                           progress: Callable[[int], None] | None = None) -> int:
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
    await _accepted(channel, messages.DIRTY_FULL_SYNC,
                    {"vol": vol, "size_lb": size_lb, "bulk_lb": bulk_lb, "timestamp": timestamp})
    uuid = await on_accepted()
    await channel.send_json(messages.begin(uuid))
    digest = StreamDigest()
    zero_from: int | None = None
    # Page-aligned, so an O_DIRECT descriptor can read into it.
    buffer = mmap.mmap(-1, bulk_lb * LOGICAL_BLOCK_SIZE)
    for offset_lb in range(0, size_lb, bulk_lb):
        count = min(bulk_lb, size_lb - offset_lb)
        data = await asyncio.to_thread(_read_bulk, fd, buffer, count * LOGICAL_BLOCK_SIZE,
                                       offset_lb * LOGICAL_BLOCK_SIZE)
        if is_all_zero(data):
            zero_from = offset_lb if zero_from is None else zero_from
            continue
        if zero_from is not None:
            await channel.send_json(messages.zero(zero_from, offset_lb - zero_from))
            zero_from = None
        await channel.send_json(messages.chunk(offset_lb, count))
        digest.update(data)
        await channel.send_data(data)
        if progress is not None:
            progress(offset_lb + count)
    if zero_from is not None:
        await channel.send_json(messages.zero(zero_from, size_lb - zero_from))
    gid = await on_streamed()
    await _finish(channel, digest, gid)
    return gid


def _read_bulk(fd: int, buffer: mmap.mmap, size: int, offset: int) -> bytes:
    """Read ``size`` bytes at ``offset`` (zeros past the end of the device)."""
    view = memoryview(buffer)[:size]
    got = os.preadv(fd, [view], offset)
    data = bytes(view[:got])
    return data + bytes(size - got) if got < size else data


def open_for_backup(path: str) -> int:
    """Open a device for a full backup with O_DIRECT, so its page cache (which a filesystem's
    direct writes bypass) cannot hand us stale blocks; plain reads where O_DIRECT is refused."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return os.open(path, os.O_RDONLY)


async def _send_chunks(channel: Channel, chunks: AsyncIterator[bytes] | Iterable[bytes], digest: StreamDigest) -> None:
    if hasattr(chunks, "__aiter__"):
        async for piece in chunks:  # type: ignore[union-attr]
            digest.update(piece)
            await channel.send_data(piece)
    else:
        for piece in chunks:  # type: ignore[union-attr]
            digest.update(piece)
            await channel.send_data(piece)


async def file_chunks(path: str) -> AsyncIterator[bytes]:
    """A file's bytes, read off the event loop."""
    with open(path, "rb") as stream:
        while True:
            piece = await asyncio.to_thread(stream.read, FILE_READ)
            if not piece:
                return
            yield piece


async def send_wdiff(channel: Channel, vol: str, uuid: bytes, size_lb: int, diff: MetaDiff,
                     chunks: AsyncIterator[bytes] | Iterable[bytes]) -> None:
    """Send one sorted wdiff (wdiff-transfer); returns once the archive holds it."""
    await _accepted(channel, messages.WDIFF_TRANSFER,
                    {"vol": vol, "uuid": uuid.hex(), "size_lb": size_lb, "diff": str(diff)})
    digest = StreamDigest()
    await _send_chunks(channel, chunks, digest)
    await _finish(channel, digest)


async def send_wlog(channel: Channel, vol: str, uuid: bytes, pbs: int, salt: int, size_lb: int, diff: MetaDiff,
                    max_log_pb: int, chunks: AsyncIterator[bytes] | Iterable[bytes]) -> None:
    """Send one wlog (wlog-transfer); returns once the proxy holds it durably."""
    await _accepted(channel, messages.WLOG_TRANSFER,
                    {"vol": vol, "uuid": uuid.hex(), "pbs": pbs, "salt": salt, "size_lb": size_lb,
                     "diff": str(diff), "max_log_pb": max_log_pb})
    digest = StreamDigest()
    await _send_chunks(channel, chunks, digest)
    await _finish(channel, digest)
