"""The ``dir`` store: image files in a directory, restored snapshots as reflink clones.

Layout under ``root`` (docs/stores.md)::

    <root>/<vol>/base.img                          sparse base image
    <root>/<vol>/.base.img.tmp                     base being created
    <root>/<vol>/restored/wr_<vol>_<gid>.img       restored snapshot gid
    <root>/<vol>/restored/wr_<vol>_<gid>_tmp.img   restore in progress

Operations on one volume are not safe against each other: the archive agent runs them
one at a time per volume, as walb-archive does under its per-volume lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from .. import loop
from ..diff.engine import BlockTarget, DiscardPolicy
from ..errors import OperationError, UsageError
from ..formats.ldev import LOGICAL_BLOCK_SIZE
from . import Restored, Store, fsync_dir
from .clone import ClonePolicy, clone_file
from .diffs import apply_diffs, verify_or_refuse
from .names import VOLUME_ID_RE, check_gid, check_size_lb, check_volume_id, parse_restored_name, restored_name

logger = logging.getLogger("walbops.store")

BASE_FILE = "base.img"
BASE_TMP_FILE = ".base.img.tmp"
RESTORED_DIR = "restored"
IMAGE_SUFFIX = ".img"


class DirStore(Store):
    """Base and restored images as files under ``root``.

    Args:
        root: the store's directory (created when the first volume is).
        clone: how restores clone the base: ``auto`` (reflink, else sparse copy),
            ``reflink`` (reflink or fail), ``copy`` (always a sparse copy).
    """

    kind = "dir"
    config_properties: ClassVar[dict[str, Any]] = {"directory": {"type": "string", "minLength": 1}}

    @classmethod
    def from_config(cls, spec: dict[str, Any], base_dir: str) -> "DirStore":
        """``{"kind": "dir", "directory": D}``; without a directory, ``<base_dir>/images``."""
        return cls(spec.get("directory") or os.path.join(base_dir, "images"))

    @classmethod
    def parse_flag(cls, rest: str) -> dict[str, Any]:
        return {"directory": rest} if rest else {}

    def __init__(self, root: str, clone: ClonePolicy | str = ClonePolicy.AUTO) -> None:
        self.root = os.path.abspath(root)
        try:
            self.clone = ClonePolicy(clone)
        except ValueError:
            raise UsageError(f"clone policy {clone!r} is not one of {', '.join(ClonePolicy)}") from None

    def __repr__(self) -> str:
        return f"DirStore({self.root!r}, clone={self.clone.value!r})"

    # -- paths ----------------------------------------------------------------------------

    def volume_dir(self, vol: str) -> str:
        return os.path.join(self.root, check_volume_id(vol))

    def base_path(self, vol: str) -> str:
        return os.path.join(self.volume_dir(vol), BASE_FILE)

    def restored_dir(self, vol: str) -> str:
        return os.path.join(self.volume_dir(vol), RESTORED_DIR)

    def restored_path(self, vol: str, gid: int) -> str:
        return os.path.join(self.restored_dir(vol), restored_name(vol, gid) + IMAGE_SUFFIX)

    def _tmp_path(self, vol: str, gid: int) -> str:
        return os.path.join(self.restored_dir(vol), restored_name(vol, gid, tmp=True) + IMAGE_SUFFIX)

    def _require_base(self, vol: str) -> str:
        path = self.base_path(vol)
        if not os.path.isfile(path):
            raise OperationError(f"volume {vol}: no base image at {path}")
        return path

    def _require_restored(self, vol: str, gid: int) -> str:
        path = self.restored_path(vol, gid)
        if not os.path.isfile(path):
            raise OperationError(f"volume {vol}: gid {gid} is not restored (no {path})")
        return path

    # -- base -----------------------------------------------------------------------------

    def create_base(self, vol: str, size_lb: int, zero: bool = False) -> str:
        # A new file is one hole, which reads as zeros: zero has nothing to do.
        path = self.base_path(vol)
        check_size_lb(size_lb)
        if os.path.exists(path):
            raise OperationError(f"volume {vol}: a base image exists already at {path}")
        directory = self.volume_dir(vol)
        os.makedirs(os.path.join(directory, RESTORED_DIR), exist_ok=True)
        tmp = os.path.join(directory, BASE_TMP_FILE)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size_lb * LOGICAL_BLOCK_SIZE)  # all hole: reads as zeros, costs nothing
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(directory)
        fsync_dir(self.root)
        logger.info("volume %s: created base %s (%d LB)", vol, path, size_lb)
        return path

    def base_exists(self, vol: str) -> bool:
        return os.path.isfile(self.base_path(vol))

    def base_size_lb(self, vol: str) -> int:
        return os.path.getsize(self._require_base(vol)) // LOGICAL_BLOCK_SIZE

    def base_allocated(self, vol: str) -> int:
        return os.stat(self._require_base(vol)).st_blocks * 512  # st_blocks counts 512-byte units

    def grow_base(self, vol: str, size_lb: int, zero_new: bool = False) -> int:
        # A file grows by a hole, which reads as zeros: zero_new has nothing to do.
        path = self._require_base(vol)
        current = self.base_size_lb(vol)
        if check_size_lb(size_lb) <= current:
            return current
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size_lb * LOGICAL_BLOCK_SIZE)
            os.fsync(fd)
        finally:
            os.close(fd)
        logger.info("volume %s: grew base %s from %d to %d LB", vol, path, current, size_lb)
        return size_lb

    @contextlib.contextmanager
    def open_base(self, vol: str, writable: bool = True,
                  discard: DiscardPolicy = DiscardPolicy.IGNORE) -> Iterator[BlockTarget]:
        path = self._require_base(vol)
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            yield BlockTarget(fd, os.fstat(fd).st_size // LOGICAL_BLOCK_SIZE, discard)
            if writable:
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- restored images ------------------------------------------------------------------

    def restore(self, vol: str, gid: int, diff_paths: Sequence[str],
                discard: DiscardPolicy = DiscardPolicy.IGNORE) -> Restored:
        final = self.restored_path(vol, check_gid(gid))
        if os.path.exists(final):
            raise OperationError(f"volume {vol}: gid {gid} is restored already at {final}")
        base = self._require_base(vol)
        size_lb = self.base_size_lb(vol)
        verified = verify_or_refuse(f"volume {vol}: cannot restore gid {gid}", diff_paths, size_lb, discard)
        tmp = self._tmp_path(vol, gid)
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a restore that died; nothing refers to it
        src = os.open(base, os.O_RDONLY)
        try:
            dst = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    method = clone_file(src, dst, self.clone)
                except OSError as exc:
                    raise OperationError(f"volume {vol}: cannot clone {base} to {tmp} for gid {gid}: {exc}") from exc
                apply_diffs(verified, BlockTarget(dst, size_lb, discard))
            finally:
                os.close(dst)
            os.rename(tmp, final)
            fsync_dir(os.path.dirname(final))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            os.close(src)
        logger.info("volume %s: restored gid %d at %s (%s, %d diffs)", vol, gid, final, method, len(diff_paths))
        return Restored(vol, gid, final, method, verified.stats)

    def _restored_names(self, vol: str) -> Iterator[tuple[str, int, bool]]:
        """(file name, gid, is_tmp) of the restored images of ``vol``."""
        directory = self.restored_dir(vol)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            parsed = parse_restored_name(name.removesuffix(IMAGE_SUFFIX)) if name.endswith(IMAGE_SUFFIX) else None
            if parsed is not None and parsed[0] == vol:
                yield name, parsed[1], parsed[2]

    def restored(self, vol: str) -> list[int]:
        return sorted(gid for _, gid, is_tmp in self._restored_names(check_volume_id(vol)) if not is_tmp)

    def delete_restored(self, vol: str, gid: int) -> None:
        path = self._require_restored(vol, gid)
        loop.detach(path)
        os.unlink(path)
        fsync_dir(os.path.dirname(path))
        logger.info("volume %s: deleted restored gid %d (%s)", vol, gid, path)

    def attach(self, vol: str, gid: int, read_only: bool = True) -> str:
        return loop.attach(self._require_restored(vol, gid), read_only)

    def detach(self, vol: str, gid: int) -> list[str]:
        return loop.detach(self.restored_path(vol, gid))

    # -- whole volumes --------------------------------------------------------------------

    def cleanup(self, vol: str) -> list[str]:
        removed = []
        leftovers = [os.path.join(self.volume_dir(vol), BASE_TMP_FILE)]
        leftovers += [os.path.join(self.restored_dir(vol), name)
                      for name, _, is_tmp in self._restored_names(vol) if is_tmp]
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
        if removed:
            logger.info("volume %s: removed leftovers %s", vol, ", ".join(removed))
        return removed

    def remove_volume(self, vol: str) -> None:
        directory = self.volume_dir(vol)
        if not os.path.isdir(directory):
            return
        loop.detach(*[os.path.join(self.restored_dir(vol), name) for name, _, _ in self._restored_names(vol)])
        shutil.rmtree(directory)
        fsync_dir(self.root)
        logger.info("volume %s: removed %s", vol, directory)

    def volumes(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if VOLUME_ID_RE.fullmatch(name) and (
            os.path.isfile(os.path.join(self.root, name, BASE_FILE))
            or os.path.isdir(os.path.join(self.root, name, RESTORED_DIR))))

