"""The walbops error tree.

Every error walbops raises on purpose derives from :class:`WalbopsError`, which
carries the process exit code the CLI uses for it::

    WalbopsError                      exit 1
    ├── UsageError                    exit 2   bad arguments or options
    ├── FormatError                   exit 3   bytes that do not follow docs/formats.md
    │   ├── TruncatedRecord           input ends inside a record
    │   ├── BadMagic                  wrong sector type, preamble or version
    │   ├── UnsupportedVersion        a version we do not read
    │   ├── ChecksumMismatch          a WalB checksum does not verify
    │   ├── BadField                  a field out of its bounds or inconsistent
    │   └── CompressionError          a compressed image does not decompress
    ├── MissingExtra                  exit 4   an optional dependency is not installed
    └── OperationError                exit 5   a valid request that cannot be done now

Format errors name where the problem is (``source`` and ``offset``) so the CLI can
print one line such as ``s1.wlog: offset 8192: logpack header checksum mismatch``.
"""

from __future__ import annotations


class WalbopsError(Exception):
    """Base of all walbops errors."""

    exit_code = 1


class UsageError(WalbopsError):
    """A command was called with bad arguments."""

    exit_code = 2


class FormatError(WalbopsError):
    """Bytes that do not follow the WalB formats.

    Args:
        message: what was wrong.
        offset: byte offset of the offending record in its source, when known.
        source: the file or stream name, when known.
    """

    exit_code = 3

    def __init__(self, message: str, offset: int | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.source = source

    def located(self, source: str | None = None, offset: int | None = None) -> "FormatError":
        """Fill in where the error happened if the raiser did not know; returns self."""
        if self.source is None:
            self.source = source
        if self.offset is None:
            self.offset = offset
        return self

    def __str__(self) -> str:
        parts = []
        if self.source is not None:
            parts.append(self.source)
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        parts.append(self.message)
        return ": ".join(parts)


class TruncatedRecord(FormatError):
    """The input ends inside a record."""


class BadMagic(FormatError):
    """A sector type, preamble or format version is not the expected one."""


class UnsupportedVersion(FormatError):
    """The format version is one walbops does not read."""


class ChecksumMismatch(FormatError):
    """A WalB checksum does not verify."""


class BadField(FormatError):
    """A field is out of its bounds or inconsistent with the others."""


class CompressionError(FormatError):
    """A compressed image does not decompress to the size it claims."""


class MissingExtra(WalbopsError):
    """An optional dependency needed for this operation is not installed."""

    exit_code = 4


class OperationError(WalbopsError):
    """A well-formed request that cannot be carried out in the current state."""

    exit_code = 5
