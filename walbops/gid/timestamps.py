"""Timestamps as WalB prints them: unix seconds to and from UTC text.

Two forms: compact ``YYYYMMDDhhmmss`` (diff file names, the base state) and pretty
``YYYY-MM-DDThh:mm:ss`` (``get`` output, where 0 prints as ``---``).
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from ..errors import BadField

# [s] 9999-12-31T23:59:59Z: the last time a four-digit year can print.
MAX_PRINTABLE_TIMESTAMP = 253402300799
# WalB's util::timeToPrintable shows timestamp 0 (never set) as this.
NO_TIMESTAMP_TEXT = "---"

_COMPACT_TIME_FORMAT = "%Y%m%d%H%M%S"  # cybozu::unixTimeToStr, used in names and base files
_PRETTY_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # cybozu::unixTimeToPrettyStr, used in `get` output


def _format_time(timestamp: int, fmt: str) -> str:
    if timestamp > MAX_PRINTABLE_TIMESTAMP:
        raise BadField(f"timestamp {timestamp} is past year 9999 and cannot be printed")
    return datetime.fromtimestamp(timestamp, UTC).strftime(fmt)


def _parse_time(text: str, fmt: str) -> int:
    try:
        when = datetime.strptime(text, fmt)
    except ValueError:
        raise BadField(f"bad timestamp {text!r}") from None
    # strptime tolerates unpadded fields; WalB's forms are fixed-width, so insist on that.
    if when.strftime(fmt) != text:
        raise BadField(f"bad timestamp {text!r}")
    timestamp = calendar.timegm(when.timetuple())
    if timestamp < 0:
        raise BadField(f"timestamp {text!r} is before 1970")
    return timestamp


def format_compact_time(timestamp: int) -> str:
    """Format unix time as ``YYYYMMDDhhmmss`` in UTC (diff file names, base state)."""
    return _format_time(timestamp, _COMPACT_TIME_FORMAT)


def parse_compact_time(text: str) -> int:
    """Parse ``YYYYMMDDhhmmss`` (UTC) into unix time.

    Raises:
        BadField: not 14 digits forming a valid time at or after 1970.
    """
    return _parse_time(text, _COMPACT_TIME_FORMAT)


def format_pretty_time(timestamp: int) -> str:
    """Format unix time as ``YYYY-MM-DDThh:mm:ss`` in UTC, or ``---`` for 0, as WalB prints it."""
    if timestamp == 0:
        return NO_TIMESTAMP_TEXT
    return _format_time(timestamp, _PRETTY_TIME_FORMAT)


def parse_pretty_time(text: str) -> int:
    """Parse the output of :func:`format_pretty_time`.

    Raises:
        BadField: neither ``---`` nor ``YYYY-MM-DDThh:mm:ss``.
    """
    if text == NO_TIMESTAMP_TEXT:
        return 0
    return _parse_time(text, _PRETTY_TIME_FORMAT)
