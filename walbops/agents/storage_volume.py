"""A protected volume on the storage host: its wdev, state, shipped point and snapshot queue.

Network-free (WalB's StorageVolInfo): the storage agent drives the walb device through
its control socket and calls these methods. ``<base_dir>/<vol>/meta.json`` holds the
state, the wdev name, the wdev uuid at the last reset, ``done`` (the point already
shipped, a MetaLsidGid) and the queue of snapshots not yet shipped, oldest first.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from typing import Any

from ..errors import OperationError
from ..gid import (
    MetaDiff,
    MetaLsidGid,
    done_after_transfer,
    is_sent,
    needs_implicit_snapshot,
    next_explicit_gid,
    transfer_diff,
    transfer_end,
)
from . import metadata
from .state import STORAGE_TRANSITIONS, ActionCounter, StateMachine


def _record(data: dict[str, Any]) -> MetaLsidGid:
    return MetaLsidGid(int(data["lsid"]), int(data["gid"]), bool(data["is_mergeable"]), int(data["timestamp"]))


class StorageVolume:
    """One volume on the storage agent."""

    def __init__(self, base_dir: str, vol: str) -> None:
        self.vol = metadata.check_volume_id(vol)
        self.directory = os.path.join(base_dir, vol)
        meta = metadata.load(self.directory) or {}
        self.machine = StateMachine(STORAGE_TRANSITIONS, meta.get("state", "Clear"), self._persist_state)
        self.wdev: str = meta.get("wdev", "")
        self.uuid = bytes.fromhex(meta.get("uuid", "00" * 16))
        self.done = _record(meta["done"]) if "done" in meta else MetaLsidGid(0, 0)
        self.queue = [_record(item) for item in meta.get("queue", [])]
        self.actions = ActionCounter()
        self.progress_lb = 0

    # ------------------------------------------------------------------ persistence

    def _meta(self) -> dict[str, Any]:
        return {"vol": self.vol, "state": self.machine.state, "wdev": self.wdev, "uuid": self.uuid.hex(),
                "done": asdict(self.done), "queue": [asdict(rec) for rec in self.queue]}

    def _persist_state(self, state: str) -> None:
        if state != "Clear":
            self.save()

    def save(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        metadata.save(self.directory, self._meta())

    @property
    def state(self) -> str:
        return self.machine.state

    # ------------------------------------------------------------------ lifecycle

    def init_vol(self, wdev: str) -> None:
        with self.machine.transaction("Clear", "InitVol") as tx:
            self.wdev = wdev
            self.done = MetaLsidGid(0, 0)
            self.queue = []
            tx.commit("SyncReady")

    def clear_vol(self) -> None:
        with self.machine.transaction("SyncReady", "ClearVol") as tx:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.wdev, self.queue, self.done = "", [], MetaLsidGid(0, 0)
            tx.commit("Clear")

    def reset(self, uuid: bytes, gid: int = 0) -> None:
        """After reset-wal of the wdev: nothing is shipped and logs start at lsid 0 with ``gid``."""
        self.uuid = uuid
        self.done = MetaLsidGid(0, gid, is_mergeable=False, timestamp=int(time.time()))
        self.queue = []

    # ------------------------------------------------------------------ snapshots

    def _pre(self) -> MetaLsidGid:
        return self.queue[-1] if self.queue else self.done

    def take_snapshot(self, latest_lsid: int, max_wlog_send_pb: int, now: int | None = None,
                      explicit: bool = True) -> int:
        """Queue a snapshot at ``latest_lsid``; returns its gid (WalB's gid rule, §5.7)."""
        if explicit and self.state not in ("Target", "Stopped", "FullSync", "HashSync"):
            raise OperationError(f"{self.vol}: bad state {self.state} for a snapshot (needs Target or Stopped)")
        pre = self._pre()
        gid = next_explicit_gid(pre, latest_lsid, max_wlog_send_pb)
        self.queue.append(MetaLsidGid(latest_lsid, gid, is_mergeable=not explicit,
                                      timestamp=int(time.time()) if now is None else now))
        self.save()
        return gid

    def maybe_implicit_snapshot(self, latest_lsid: int, max_wlog_send_pb: int, interval: float,
                                now: int | None = None) -> int | None:
        """Cut an implicit snapshot if the queue is empty or its newest entry is old."""
        now = int(time.time()) if now is None else now
        newest = self.queue[-1] if self.queue else None
        if newest is None and latest_lsid == self.done.lsid:
            return None  # nothing new to describe
        if not needs_implicit_snapshot(newest, latest_lsid, now, int(interval)):
            return None
        return self.take_snapshot(latest_lsid, max_wlog_send_pb, now, explicit=False)

    # ------------------------------------------------------------------ shipping

    def next_transfer(self, max_wlog_send_pb: int, permanent_lsid: int) -> tuple[MetaLsidGid, int] | None:
        """(rec_e, lsid_limit) of the next wlog transfer, or None when nothing is ready."""
        ready = [rec for rec in self.queue if rec.lsid <= permanent_lsid]
        if not ready:
            return None
        return transfer_end(ready, self.done, max_wlog_send_pb, permanent_lsid)

    def transfer_diff(self, rec_e: MetaLsidGid, lsid_e: int) -> MetaDiff:
        return transfer_diff(self.done, rec_e, lsid_e)

    def finish_transfer(self, rec_e: MetaLsidGid, lsid_e: int) -> MetaLsidGid:
        """The proxy acknowledged logs up to ``lsid_e``: advance done, drop shipped snapshots."""
        self.done = done_after_transfer(self.done, rec_e, lsid_e)
        self.queue = [rec for rec in self.queue if not is_sent(rec, self.done)]
        self.save()
        return self.done

    def status(self) -> dict[str, Any]:
        return {"vol": self.vol, "state": self.state, "wdev": self.wdev, "uuid": self.uuid.hex(),
                "done": asdict(self.done), "queue": [asdict(rec) for rec in self.queue],
                "progress_lb": self.progress_lb}
