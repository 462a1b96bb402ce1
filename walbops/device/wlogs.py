"""Reading logs out of a device's ring as a wlog stream (what the storage agent ships)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from ..diff.logs import LdevLogReader, LogPack, read_super
from ..errors import OperationError
from ..formats.ldev import end_marker
from ..formats.wlog import WlogHeader

PIECE_BYTES = 1 << 20  # [bytes] of the ring per piece of the wlog stream


@dataclass(frozen=True)
class Extent:
    """The whole, valid packs from ``begin`` that reach a limit: they end at ``end``.

    ``shrunk`` is the last pack when it had to be cut at an invalid IO (WalB's end of valid
    logs): its header in the ring no longer describes it, so it is sent re-serialized.
    """

    begin: int
    end: int
    shrunk: LogPack | None = None


class RingLogs:
    """The permanent logs of a device between two lsids, read from its ldev.

    Args:
        ldev: path of the log device.
    """

    def __init__(self, ldev: str) -> None:
        self.fd = os.open(ldev, os.O_RDONLY | os.O_CLOEXEC)
        self.super = read_super(self.fd)
        self.reader = LdevLogReader(self.fd, self.super)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "RingLogs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extent(self, begin: int, limit: int) -> Extent:
        """Where whole packs from ``begin`` end once they reach ``limit`` (or valid logs end).

        Every pack is read and verified here (headers and IO checksums), so :meth:`wlog` can
        send the ring's bytes as they are: the range stays in the ring until the storage moves
        the oldest lsid past it, which it does only after the proxy's ``ack``.
        """
        end, last = begin, None
        for pack in self.reader.packs(begin, limit):
            end, last = pack.header.next_lsid, pack
        return Extent(begin, end, last if last is not None and last.shrunk else None)

    def stream(self, begin: int, limit: int) -> Iterator[bytes | memoryview]:
        """The wlog file of the packs from ``begin`` to ``limit``, a pack boundary, read, verified
        and yielded one window at a time (so a send overlaps the reading of the ring).

        Raises:
            OperationError: valid logs end before ``limit``, or a pack crosses it; raised
                before the end marker, so the receiver never takes a short wlog.
        """
        pbs, salt = self.super.physical_bs, self.super.log_checksum_salt
        yield WlogHeader(pbs, salt, self.super.uuid, begin).serialize()
        end = begin
        for stored, packs in self.reader.windows(begin, limit):
            yield stored
            if packs[-1].shrunk:
                yield packs[-1].serialize_header(salt) + bytes(packs[-1].data)
            end = packs[-1].header.next_lsid
        if end != limit:
            raise OperationError(f"valid logs end at lsid {end}, not at {limit}")
        yield end_marker(pbs, salt)

    def wlog(self, extent: Extent) -> Iterator[bytes]:
        """The wlog file of the packs of ``extent``: header, packs, end marker.

        The packs are the ring's bytes, ``PIECE_BYTES`` at a time (several packs per piece).
        """
        pbs, salt = self.super.physical_bs, self.super.log_checksum_salt
        yield WlogHeader(pbs, salt, self.super.uuid, extent.begin).serialize()
        shrunk = extent.shrunk
        yield from self.reader.read_raw(extent.begin, extent.end if shrunk is None else shrunk.header.logpack_lsid,
                                        PIECE_BYTES)
        if shrunk is not None:
            yield shrunk.serialize_header(salt) + bytes(shrunk.data)
        yield end_marker(pbs, salt)
