"""What a walb device does when its log ring is full; apart from the device so that the commands
that only offer the choice (``walbops ensure device --overflow``) need not import the device."""

from __future__ import annotations

import enum


class OverflowPolicy(enum.StrEnum):
    """What happens when the ring is full (latest - oldest would exceed its size)."""

    OVERWRITE = "overwrite"  # keep writing, raise the overflow flag until reset-wal (WalB's default)
    ERROR = "error"  # fail new writes with EIO (WalB's is_error_before_overflow)
