"""Archive stores: where an archive keeps each volume's base image and its restored snapshots.

Vocabulary (WalB's, ``reference/walb.md`` §1.4, §5.6):

* **volume** (``vol``): a protected volume, named by a volume id of 1..64 ``[0-9A-Za-z-]``.
* **base**: the block image the archive's diffs apply to (WalB's LV ``wb_<vol>``). Its
  MetaState — which snapshot it holds, whether an apply is half done — is the archive
  agent's, not the store's.
* **restored image**: the volume materialised at a clean snapshot ``gid``: a clone of
  the base with the selected diffs applied (``wr_<vol>_<gid>``). It is made under a tmp
  name (``wr_<vol>_<gid>_tmp``) and renamed only once complete and synced, so a name
  without ``_tmp`` is always a whole image; :meth:`Store.cleanup` removes tmp leftovers.
* **attachment**: a loop device over a restored image, so it can be mounted.

The agent owns volume state, wdiff files and metadata, and picks the diffs (the gid
model, ``walbops.diff.chain``); the store only lays the files it is given over an image.
Crash safety of an apply is the agent's too: it writes the "applying" MetaState before
:meth:`Store.apply_to_base` and the new state after it, and an interrupted apply is
completed by applying the same diffs again.

Two kinds (``docs/stores.md``): ``dir`` (:class:`~walbops.store.dirstore.DirStore`, image
files, reflink clones) and ``lvm`` (:class:`~walbops.store.lvmstore.LvmStore`, WalB's LVs).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import loop
from ..diff.engine import BlockTarget, DiscardPolicy
from ..diff.io import Stats
from ..durable import fsync_dir  # noqa: F401  (the store's modules import it from here)
from .clone import CloneMethod, ClonePolicy
from .diffs import apply_diffs, verify_or_refuse
from .names import check_gid, check_volume_id

logger = logging.getLogger("walbops.store")

__all__ = [
    "STORE_KINDS", "CloneMethod", "ClonePolicy", "Restored", "Store", "check_gid", "check_volume_id", "open_store",
    "parse_store_flag", "store_config_schema", "store_from_config",
]


@dataclass(frozen=True)
class Restored:
    """A restored image, as :meth:`Store.restore` made it.

    It is path-like: ``os.open(restored, ...)`` and ``str(restored)`` give ``path``.
    """

    vol: str
    gid: int
    path: str  # the image file or device node
    clone: CloneMethod  # how the base was cloned
    stats: Stats = field(default_factory=Stats)  # the IOs of the diffs laid over it

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def as_dict(self) -> dict[str, Any]:
        return {"vol": self.vol, "gid": self.gid, "path": self.path, "clone": str(self.clone), **self.stats.as_dict()}


class Store(abc.ABC):
    """The archive's block images of every volume: one base each, and restored snapshots.

    Every method validates ``vol`` (:class:`~walbops.errors.UsageError`) and names the
    volume, the gid and the path or LV in the errors it raises. Refused operations
    raise :class:`~walbops.errors.OperationError`.
    """

    kind: str
    # The config keys of this kind besides ``kind`` (JSON Schema properties), and which are required.
    config_properties: ClassVar[dict[str, Any]] = {}
    config_required: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abc.abstractmethod
    def from_config(cls, spec: dict[str, Any], base_dir: str) -> "Store":
        """The store an archive's config describes (``spec`` passed its schema)."""

    @classmethod
    @abc.abstractmethod
    def parse_flag(cls, rest: str) -> dict[str, Any]:
        """The config of ``--store KIND:REST`` (REST may be empty).

        Raises:
            UsageError: REST does not describe a store of this kind.
        """

    # -- base ---------------------------------------------------------------------------

    @abc.abstractmethod
    def create_base(self, vol: str, size_lb: int, zero: bool = False) -> str:
        """Create a base of ``size_lb`` LB; returns its path or device.

        A file or a thin LV reads as zeros. A thick LV holds what its extents held
        unless ``zero``; a full backup zeroes the ranges it skips instead
        (``new_base_reads_zeros``).

        Raises:
            OperationError: the base exists already.
        """

    @property
    def new_base_reads_zeros(self) -> bool:
        """Whether a base just made by ``create_base`` (without ``zero``) reads as zeros."""
        return True

    @abc.abstractmethod
    def base_exists(self, vol: str) -> bool:
        """Whether ``vol`` has a base."""

    @abc.abstractmethod
    def base_size_lb(self, vol: str) -> int:
        """Size of the base [LB] (for LVM, rounded up to whole extents).

        Raises:
            OperationError: there is no base.
        """

    @abc.abstractmethod
    def base_allocated(self, vol: str) -> int:
        """Bytes the base takes on the store's disk (a sparse file's allocated blocks; an LV's size).

        Raises:
            OperationError: there is no base.
        """

    @abc.abstractmethod
    def grow_base(self, vol: str, size_lb: int, zero_new: bool = False) -> int:
        """Grow the base to at least ``size_lb`` LB; returns the new size [LB].

        A base never shrinks: a size at or below the current one changes nothing.

        Args:
            zero_new: make the added range read as zeros where the store does not
                guarantee it (a thick LV's new extents hold old data).
        """

    @abc.abstractmethod
    def base_path(self, vol: str) -> str:
        """The base's image file or device node (it may not exist, or not be active)."""

    @abc.abstractmethod
    def open_base(self, vol: str, writable: bool = True,
                  discard: DiscardPolicy = DiscardPolicy.IGNORE) -> AbstractContextManager[BlockTarget]:
        """A context manager yielding the base as a BlockTarget (full-backup bulks go there).

        Leaving it writable fsyncs the base before it is closed.
        """

    def apply_to_base(self, vol: str, diff_paths: Sequence[str], discard: DiscardPolicy = DiscardPolicy.IGNORE,
                      on_verified: Callable[[], None] | None = None,
                      on_io: Callable[[], None] | None = None) -> Stats:
        """Verify every diff, then apply them merged (oldest first) onto the base and fsync.

        The caller records the "applying" MetaState in ``on_verified`` (after the diffs are
        known sound, before the first write); a crash half way is repaired by calling this
        again with the same diffs (WalB §5.6). ``on_io`` runs before each IO is written.

        Raises:
            OperationError: a diff is corrupt (its FormatError is the ``__cause__``) or
                reaches beyond the base; the base is then untouched and ``on_verified``
                has not run.
        """
        what = f"volume {vol}: cannot apply to the base {self.base_path(vol)}"
        verified = verify_or_refuse(what, diff_paths, self.base_size_lb(vol), discard)
        if on_verified is not None:
            on_verified()
        with self.open_base(vol, writable=True, discard=discard) as target:
            apply_diffs(verified, target, on_io)
        logger.info("volume %s: applied %d diffs to the base %s", vol, len(diff_paths), self.base_path(vol))
        return verified.stats

    # -- restored images ----------------------------------------------------------------

    @abc.abstractmethod
    def restore(self, vol: str, gid: int, diff_paths: Sequence[str],
                discard: DiscardPolicy = DiscardPolicy.IGNORE) -> Restored:
        """Materialise snapshot ``gid``: clone the base, apply the merged diffs, fsync, rename.

        Args:
            diff_paths: the diffs that take the base to ``gid``, oldest first
                (``DiffDirectory.restore_paths``).

        Raises:
            OperationError: ``gid`` is restored already, there is no base, or a diff is
                corrupt (its FormatError is the ``__cause__``); nothing is left behind.
        """

    @abc.abstractmethod
    def restored(self, vol: str) -> list[int]:
        """The gids of the complete restored images of ``vol``, ascending."""

    @abc.abstractmethod
    def restored_path(self, vol: str, gid: int) -> str:
        """The image file or device node of restored ``gid`` (it may not exist)."""

    @abc.abstractmethod
    def delete_restored(self, vol: str, gid: int) -> None:
        """Detach and delete restored image ``gid``.

        Raises:
            OperationError: it does not exist, or it is mounted.
        """

    @abc.abstractmethod
    def attach(self, vol: str, gid: int, read_only: bool = True) -> str:
        """A loop device over restored ``gid`` (the existing one if it is attached already)."""

    @abc.abstractmethod
    def detach(self, vol: str, gid: int) -> list[str]:
        """Detach the loop devices over restored ``gid``; returns them.

        Raises:
            OperationError: one is mounted.
        """

    # -- whole volumes ------------------------------------------------------------------

    @abc.abstractmethod
    def cleanup(self, vol: str) -> list[str]:
        """Remove what interrupted restores left (``*_tmp``); returns what was removed.

        Called for every volume when the archive agent starts.
        """

    @abc.abstractmethod
    def remove_volume(self, vol: str) -> None:
        """Remove the base and every restored image of ``vol`` (detaching them first).

        Raises:
            OperationError: a restored image is mounted.
        """

    @abc.abstractmethod
    def volumes(self) -> list[str]:
        """The volume ids the store holds a base or a restored image for."""

    def has_restored(self, vol: str, gid: int) -> bool:
        return check_gid(gid) in self.restored(vol)

    def attached(self, vol: str, gid: int) -> str | None:
        """The loop device over restored ``gid`` if one is attached (read-only first); attaches nothing."""
        found = sorted(loop.attachments(self.restored_path(vol, gid)), key=lambda a: not a.read_only)
        return found[0].device if found else None


# The store kinds and their classes are registered in walbops.store.registry, the one table of them.
from .registry import STORE_KINDS, open_store, parse_store_flag, store_config_schema, store_from_config  # noqa: E402
