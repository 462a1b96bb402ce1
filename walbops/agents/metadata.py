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
from ..errors import UsageError

VOLUME_ID = re.compile(r"[0-9A-Za-z-]{1,64}")  # WalB's command_param_parser rule
META_FILE = "meta.json"


def check_volume_id(vol: str) -> str:
    if not isinstance(vol, str) or not VOLUME_ID.fullmatch(vol):
        raise UsageError(f"volume id {vol!r}: 1-64 characters of [0-9A-Za-z-]")
    return vol


def save(directory: str, meta: dict[str, Any]) -> None:
    atomic_write(os.path.join(directory, META_FILE), json.dumps(meta, indent=1, sort_keys=True).encode())


def load(directory: str) -> dict[str, Any] | None:
    """The saved metadata, or None if the volume has none."""
    try:
        with open(os.path.join(directory, META_FILE)) as stream:
            meta: dict[str, Any] = json.load(stream)
    except FileNotFoundError:
        return None
    return meta


def volume_dirs(base_dir: str) -> list[str]:
    """Volume ids that have a directory with metadata under ``base_dir``."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(name for name in os.listdir(base_dir)
                  if VOLUME_ID.fullmatch(name) and os.path.exists(os.path.join(base_dir, name, META_FILE)))
