"""Reading logs out of a device's ring as a wlog stream (what the storage agent ships)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..diff.logs import LdevLogReader, read_super
from ..formats.ldev import end_marker
from ..formats.wlog import WlogHeader


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

    def end_of(self, begin: int, limit: int) -> int:
        """Where whole packs from ``begin`` end once they reach ``limit`` (or valid logs end)."""
        lsid = begin
        for pack in self.reader.packs(begin, limit):
            lsid = pack.header.next_lsid
        return lsid

    def wlog(self, begin: int, end: int) -> Iterator[bytes]:
        """The wlog file of the packs in [begin, end): header, packs, end marker."""
        pbs, salt = self.super.physical_bs, self.super.log_checksum_salt
        yield WlogHeader(pbs, salt, self.super.uuid, begin).serialize()
        for pack in self.reader.packs(begin, end):
            yield pack.serialize_header(salt)
            yield bytes(pack.data)
        yield end_marker(pbs, salt)
