"""gid assignment on the storage (walb.md §5.7, WalB ``src/storage_vol_info.cpp``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import BadField, OperationError
from .records import MetaDiff, MetaLsidGid


def next_explicit_gid(pre: MetaLsidGid, latest_lsid: int, max_wlog_send_pb: int) -> int:
    """The gid of a snapshot cut at ``latest_lsid``.

    ``pre`` is the newest queued record, or the done record if the queue is empty. One
    gid is skipped per ``max_wlog_send_pb`` of log since ``pre``, so that a long stretch
    can later be sent as several diffs (|g|-->|g+1|, ...). Implicit snapshots use the
    same rule.

    Raises:
        BadField: max_wlog_send_pb is not positive.
        OperationError: latest_lsid is behind pre.lsid.
    """
    if max_wlog_send_pb <= 0:
        raise BadField(f"max_wlog_send_pb must be positive, got {max_wlog_send_pb}")
    if latest_lsid < pre.lsid:
        raise OperationError(f"lsid {latest_lsid} is behind the previous snapshot's lsid {pre.lsid}")
    return pre.gid + 1 + (latest_lsid - pre.lsid) // max_wlog_send_pb


def needs_implicit_snapshot(newest: MetaLsidGid | None, latest_lsid: int, now: int, interval_sec: int) -> bool:
    """True if the storage should cut an implicit snapshot before a wlog transfer.

    That is when the queue is empty (``newest`` is None), or when new logs exist after
    the newest queued snapshot and it is at least ``interval_sec`` old.
    """
    if newest is None:
        return True
    return newest.lsid < latest_lsid and newest.timestamp + interval_sec <= now


def transfer_end(queue: Sequence[MetaLsidGid], done: MetaLsidGid, max_wlog_send_pb: int,
                 permanent_lsid: int) -> tuple[MetaLsidGid, int]:
    """Choose the end of the next wlog transfer: ``(rec_e, lsid_e)``.

    Args:
        queue: the queued snapshot records, oldest first (not empty).
        done: the record of the point already sent.
        max_wlog_send_pb: the most log to send at once.
        permanent_lsid: logs up to here are on the log device for good.

    The oldest record is the end, extended over newer records while the one passed over
    is mergeable and the next stays within max_wlog_send_pb of ``done`` and below
    permanent_lsid. ``lsid_e`` is rec_e.lsid if exactly one gid step is sent; otherwise
    at most max_wlog_send_pb past done.lsid.

    Raises:
        OperationError: the queue is empty or older than ``done``.
    """
    if not queue:
        raise OperationError("no snapshot record queued")
    rec_e = queue[0]
    count = 1
    while count < len(queue) and rec_e.is_mergeable:
        rec = queue[count]
        if rec.lsid > done.lsid + max_wlog_send_pb or rec.lsid > permanent_lsid:
            break
        rec_e = rec
        count += 1
    if not (done.lsid <= rec_e.lsid and done.gid < rec_e.gid):
        raise OperationError(f"queued record (lsid {rec_e.lsid}, gid {rec_e.gid}) is not after the done record "
                             f"(lsid {done.lsid}, gid {done.gid})")
    if count == 1 and rec_e.gid == done.gid + 1:
        # A single gid step cannot be split, so it goes whole even if it is too big.
        return rec_e, rec_e.lsid
    return rec_e, min(done.lsid + max_wlog_send_pb, rec_e.lsid)


def transfer_diff(done: MetaLsidGid, rec_e: MetaLsidGid, lsid_e: int) -> MetaDiff:
    """The diff a wlog transfer of (done.lsid, lsid_e] carries to the proxy.

    ``|done.gid|-->|rec_e.gid|`` if it reaches rec_e, else the partial
    ``|done.gid|-->|done.gid + 1|``; is_mergeable from ``done``, timestamp from rec_e.
    """
    end = rec_e.gid if lsid_e == rec_e.lsid else done.gid + 1
    return MetaDiff(done.gid, end, is_mergeable=done.is_mergeable, timestamp=rec_e.timestamp)


def done_after_transfer(done: MetaLsidGid, rec_e: MetaLsidGid, lsid_e: int) -> MetaLsidGid:
    """The new done record once a transfer up to ``lsid_e`` is acknowledged.

    A partial transfer stops at an implicit point ``done.gid + 1`` that keeps done's
    timestamp: the gid moved on, the time did not.
    """
    if lsid_e == rec_e.lsid:
        return rec_e
    return MetaLsidGid(lsid_e, done.gid + 1, is_mergeable=True, timestamp=done.timestamp)


def is_sent(rec: MetaLsidGid, done: MetaLsidGid) -> bool:
    """True if queued record ``rec`` is at or before ``done`` and can be dropped."""
    return rec.lsid < done.lsid or (rec.lsid == done.lsid and rec.gid <= done.gid)
