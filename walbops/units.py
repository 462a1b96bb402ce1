"""Sizes as walb-tools writes them: a number with an optional k/m/g/t/p/e suffix, powers of 1024.

``64K``, ``16m``, ``1G``, ``1GiB`` and ``4096`` are all sizes in bytes (walb-tools'
``fromUnitIntString``). LVM's own size syntax (default unit MiB, fractions, sectors) is a
different language and lives with the LVM code.
"""

from __future__ import annotations

from .errors import UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}


def parse_size(value: int | str) -> int:
    """A byte size from ``4096``, ``64K``, ``16M``, ``1GiB`` …; an int passes as it is.

    Raises:
        UsageError: not a size, or negative.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f"{value}: a size cannot be negative")
        return value
    text = str(value)
    raw = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    number = raw[:-1] if unit else raw
    if not number.isdigit():
        raise UsageError(f"{text!r} is not a size (e.g. 4096, 64K, 16M, 1G)")
    return int(number) * _UNITS[unit]


def format_size(size: int) -> str:
    """``1.5 MiB``: a byte size for people, one decimal, powers of 1024 (bytes below 1 KiB)."""
    for name, unit in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                       ("KiB", 1 << 10)):
        if size >= unit:
            return f"{size / unit:.1f} {name}"
    return f"{size} B"
