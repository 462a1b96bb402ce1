"""The one table of store kinds: what ``--store``, the archive config and ``open_store`` accept.

A new kind is a :class:`~walbops.store.Store` subclass with ``kind``, ``config_properties``,
``from_config`` and ``parse_flag``, added to ``_BACKENDS``; nothing else names the kinds.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import UsageError
from . import Store
from .dirstore import DirStore
from .lvmstore import LvmStore

_BACKENDS: dict[str, type[Store]] = {"dir": DirStore, "lvm": LvmStore}
STORE_KINDS = tuple(_BACKENDS)


def _backend(kind: str) -> type[Store]:
    backend = _BACKENDS.get(kind)
    if backend is None:
        raise UsageError(f"unknown store kind {kind!r} (expected one of {', '.join(STORE_KINDS)})")
    return backend


def open_store(kind: str, **options: Any) -> Store:
    """Open a store of ``kind`` with its constructor's options.

    ``open_store("dir", root="/var/lib/walbops/archive")``;
    ``open_store("lvm", vg="archive", thinpool="pool")``.

    Raises:
        UsageError: an unknown kind or option.
    """
    backend = _backend(kind)
    try:
        inspect.signature(backend).bind(**options)
    except TypeError as exc:
        raise UsageError(f"store {kind}: {exc}") from None
    return backend(**options)


def store_config_schema() -> dict[str, Any]:
    """The JSON Schema of the archive's ``store`` key: one object form per kind."""
    return {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": kind}, **backend.config_properties},
         "required": ["kind", *backend.config_required], "additionalProperties": False}
        for kind, backend in _BACKENDS.items()]}


def store_from_config(spec: dict[str, Any], base_dir: str) -> Store:
    """The store an archive config's ``store`` value describes (it passed :func:`store_config_schema`)."""
    return _backend(spec["kind"]).from_config(spec, base_dir)


def parse_store_flag(text: str) -> dict[str, Any]:
    """``--store KIND[:REST]`` as a ``store`` config value (``dir:/srv/images``, ``lvm:vg0/pool``).

    Raises:
        UsageError: an unknown kind, or REST that does not fit it.
    """
    kind, _, rest = text.partition(":")
    return {"kind": kind, **_backend(kind).parse_flag(rest)}
