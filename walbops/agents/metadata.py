"""Per-volume metadata on disk: one JSON file per volume, replaced atomically.

``<base_dir>/<vol>/meta.json`` is written to a temporary file, synced, renamed over the
old one and the directory synced, so a crash leaves either the old or the new file,
never a torn one (WalB's ``util::saveFile``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..durable import atomic_write, fsync_dir  # noqa: F401  (fsync_dir: for the volumes)
from ..errors import BadField, UsageError

VOLUME_ID = re.compile(r"[0-9A-Za-z-]{1,64}")  # WalB's command_param_parser rule
META_FILE = "meta.json"
MAX_META_SIZE = 16 << 20  # [bytes] far above any volume's (a storage's queue of snapshots is the largest)


def check_volume_id(vol: str) -> str:
    if not isinstance(vol, str) or not VOLUME_ID.fullmatch(vol):
        raise UsageError(f"volume id {vol!r}: 1-64 characters of [0-9A-Za-z-]")
    return vol


def save(directory: str, meta: dict[str, Any]) -> None:
    atomic_write(os.path.join(directory, META_FILE), json.dumps(meta, indent=1, sort_keys=True).encode())


def meta_path(base_dir: str, vol: str) -> str:
    return os.path.join(base_dir, vol, META_FILE)


def load(directory: str) -> dict[str, Any] | None:
    """The saved metadata, or None if the volume has none.

    Raises:
        BadField: the file is not a JSON object (the volume is broken, docs/agents.md).
        OSError: the file cannot be read.
    """
    path = os.path.join(directory, META_FILE)
    try:
        with open(path, "rb") as stream:
            content = stream.read(MAX_META_SIZE + 1)
    except FileNotFoundError:
        return None
    if len(content) > MAX_META_SIZE:
        raise BadField(f"metadata larger than {MAX_META_SIZE} bytes", source=path)
    try:
        meta = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadField(f"not JSON ({exc})", source=path) from None
    if not isinstance(meta, dict):
        raise BadField(f"a JSON object was expected, not {type(meta).__name__}", source=path)
    return meta


def volume_dirs(base_dir: str) -> list[str]:
    """Volume ids that have a directory with metadata under ``base_dir``."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(name for name in os.listdir(base_dir)
                  if VOLUME_ID.fullmatch(name) and os.path.exists(os.path.join(base_dir, name, META_FILE)))
