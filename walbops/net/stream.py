"""Bookkeeping for the two ends of a stream (docs/protocol.md §7, §8.3); pure, no I/O.

:class:`StreamDigest` counts and hashes a stream's data on both sides and checks the ``end``
message. :class:`ImageCursor` enforces the order of a dirty-full-sync stream: ``chunk`` and
``zero`` items contiguous from LB 0, each chunk followed by exactly its bytes, covering the
volume.
"""

from __future__ import annotations

import zlib
from typing import Any

from ..errors import BadField, ChecksumMismatch, InvalidMessage
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from . import messages


class StreamDigest:
    """The size and CRC-32 of the data frames of one stream, in order."""

    def __init__(self) -> None:
        self._crc = 0
        self.size = 0  # [bytes]

    def update(self, data: bytes | memoryview) -> None:
        self._crc = zlib.crc32(data, self._crc)
        self.size += len(data)

    @property
    def checksum(self) -> str:
        """CRC-32 (zlib's, ISO-HDLC) of the data so far, as 8 lowercase hex digits."""
        return f"{self._crc:08x}"

    def end(self, gid: int | None = None) -> dict[str, Any]:
        """The ``end`` message that closes the stream (with ``gid`` for dirty-full-sync)."""
        return messages.end(self.size, self.checksum, gid)

    def check(self, end: dict[str, Any]) -> None:
        """Compare what was received with the sender's ``end``.

        Raises:
            BadField: the sizes differ.
            ChecksumMismatch: the checksums differ.
        """
        if end["size"] != self.size:
            raise BadField(f"stream carried {self.size} bytes, its end says {end['size']}")
        if end["checksum"] != self.checksum:
            raise ChecksumMismatch(f"stream checksum {self.checksum} differs from its end's {end['checksum']}")


class ImageCursor:
    """Where the next item of a dirty-full-sync stream must start, and the bytes still owed.

    Args:
        size_lb: the volume size from the request.
        bulk_lb: the bulk size from the request; a chunk is at most this long.
        start_lb: where the stream starts (a resumed full replication: after what the receiver has).
    """

    def __init__(self, size_lb: int, bulk_lb: int, start_lb: int = 0) -> None:
        self.size_lb = size_lb
        self.bulk_lb = bulk_lb
        self.position_lb = start_lb  # [LB] the next item starts here
        self.pending = 0  # [bytes] still owed by the current chunk

    def item(self, message: dict[str, Any]) -> None:
        """Take a ``chunk`` or ``zero`` message.

        Raises:
            InvalidMessage: out of order, past the end, too long, or the previous chunk is short.
        """
        kind = message["type"]
        if kind not in ("chunk", "zero"):
            raise InvalidMessage(f"expected chunk or zero in an image stream, got {kind}")
        if self.pending:
            raise InvalidMessage(f"{kind} while the chunk before it still owes {self.pending} bytes")
        offset, count = message["offset_lb"], message["count_lb"]
        if offset != self.position_lb:
            raise InvalidMessage(f"{kind} at LB {offset}, expected LB {self.position_lb}")
        if offset + count > self.size_lb:
            raise InvalidMessage(f"{kind} [{offset}, {offset + count}) runs past the volume's {self.size_lb} LB")
        if kind == "chunk":
            if count > self.bulk_lb:
                raise InvalidMessage(f"chunk of {count} LB is longer than the bulk size of {self.bulk_lb} LB")
            self.pending = count * LOGICAL_BLOCK_SIZE
        self.position_lb = offset + count

    def data(self, length: int) -> int:
        """Account for ``length`` data bytes; return the byte offset in the volume where they go.

        Raises:
            InvalidMessage: data outside a chunk, or more than the chunk announced.
        """
        if length > self.pending:
            raise InvalidMessage(f"{length} data bytes where the current chunk owes {self.pending}")
        offset = self.position_lb * LOGICAL_BLOCK_SIZE - self.pending
        self.pending -= length
        return offset

    def finish(self) -> None:
        """Check, at ``end``, that the items covered the volume.

        Raises:
            InvalidMessage: a chunk is short, or the items stop before the volume's end.
        """
        if self.pending:
            raise InvalidMessage(f"stream ends while a chunk still owes {self.pending} bytes")
        if self.position_lb != self.size_lb:
            raise InvalidMessage(f"stream covers {self.position_lb} LB of the volume's {self.size_lb}")


class HashSyncCursor:
    """The archive's bookkeeping of a dirty-hash-sync: bulks hashed so far, and the storage's answers.

    The archive hashes bulks in order (``hashed``); the storage answers with ``bulks`` messages
    listing, in increasing order and inside the bulks hashed already, the bulks that differ, each
    followed by the bytes of those that are not all zeros (docs/protocol.md §8.4).

    Args:
        size_lb: the volume size; bulk_lb: the bulk size.
    """

    def __init__(self, size_lb: int, bulk_lb: int) -> None:
        self.size_lb = size_lb
        self.bulk_lb = bulk_lb
        self.hashed_lb = 0  # [LB] the archive has sent hashes up to here
        self.position_lb = 0  # [LB] the next item starts here or later
        self.pending = 0  # [bytes] still owed by the current bulks message

    def hashed(self, count: int) -> tuple[int, int]:
        """Account for ``count`` more bulks hashed; returns their (offset_lb, end_lb)."""
        start = self.hashed_lb
        self.hashed_lb = min(self.size_lb, start + count * self.bulk_lb)
        return start, self.hashed_lb

    @property
    def all_hashed(self) -> bool:
        return self.hashed_lb >= self.size_lb

    def bulks(self, items: list[list[int]]) -> int:
        """Take a ``bulks`` message; returns the data bytes that must follow it.

        Raises:
            InvalidMessage: an item out of order, longer than a bulk, or past the bulks hashed
                so far; or the bulks before it still owed data.
        """
        if self.pending:
            raise InvalidMessage(f"bulks while the ones before still owe {self.pending} bytes")
        total = 0
        for offset, count, zero in items:
            if offset < self.position_lb:
                raise InvalidMessage(f"bulk at LB {offset} goes back before LB {self.position_lb}")
            if count > self.bulk_lb:
                raise InvalidMessage(f"bulk of {count} LB is longer than the bulk size of {self.bulk_lb} LB")
            if offset + count > self.hashed_lb:
                raise InvalidMessage(f"bulk [{offset}, {offset + count}) LB reaches past the bulks hashed so far "
                                     f"({self.hashed_lb} LB of {self.size_lb})")
            self.position_lb = offset + count
            total += 0 if zero else count * LOGICAL_BLOCK_SIZE
        self.pending = total
        return total

    def data(self, length: int) -> None:
        """Account for ``length`` bytes of the current bulks' data.

        Raises:
            InvalidMessage: data where none is owed, or more than is owed.
        """
        if length > self.pending:
            raise InvalidMessage(f"{length} data bytes where the bulks owe {self.pending}")
        self.pending -= length

    def finish(self) -> None:
        """At ``end``: every bulk hashed and the last bulks' data complete.

        Raises:
            InvalidMessage: otherwise.
        """
        if self.pending:
            raise InvalidMessage(f"stream ends while the bulks still owe {self.pending} bytes")
        if not self.all_hashed:
            raise InvalidMessage(f"the storage ended at LB {self.hashed_lb} of {self.size_lb} hashed")
