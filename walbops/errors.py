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
    │   ├── CompressionError          a compressed image does not decompress
    │   └── BadFrame                  a network frame that does not follow docs/protocol.md
    ├── MissingExtra                  exit 4   an optional dependency is not installed
    ├── OperationError                exit 5   a valid request that cannot be done now
    │   └── RemoteError               the peer refused a request or aborted a transfer
    └── ProtocolError                 exit 6   a conversation with a peer failed (docs/protocol.md)
        ├── FrameTooLarge             a frame or its data exceeds the limit (refused unread)
        ├── InvalidMessage            a control message fails its schema or comes out of turn
        ├── VersionMismatch           the peer speaks another protocol version
        ├── AuthenticationError       the peer cannot prove it holds the cluster key
        ├── PeerClosed                the peer closed the connection
        └── PeerTimeout               the peer sent nothing within the socket timeout

Format errors name where the problem is (``source`` and ``offset``) so the CLI can
print one line such as ``s1.wlog: offset 8192: logpack header checksum mismatch``.
Malformed network frames are format errors too (the source is the peer, the offset the
frame's position in the stream); everything else that goes wrong in a conversation is a
:class:`ProtocolError`, whose ``reason`` is what walbops tells the peer in its ``error``
message before it closes the connection.
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


class BadFrame(FormatError):
    """A network frame is malformed: zero length, unknown type, or a payload that is not valid JSON."""


class RemoteError(OperationError):
    """The peer refused a request (``ok: false``) or aborted a transfer.

    Args:
        error: the peer's human-readable message.
        reason: the peer's machine-readable reason (WalB's refusal strings such as
            ``stopped``, ``syncing``, ``too-old-diff``), when it gave one.
    """

    def __init__(self, error: str, reason: str | None = None) -> None:
        super().__init__(f"{error} ({reason})" if reason else error)
        self.error = error
        self.reason = reason


class ProtocolError(WalbopsError):
    """A conversation with a peer failed: it broke docs/protocol.md, or the connection did.

    ``reason`` is the text of the ``error`` message sent to the peer before closing.
    """

    exit_code = 6
    reason = "protocol error"


class FrameTooLarge(ProtocolError):
    """A frame's length field, or the size of the data it carries, exceeds the protocol's limit."""

    reason = "frame too large"


class InvalidMessage(ProtocolError):
    """A control message fails its schema or is not one the conversation allows at this point."""


class VersionMismatch(ProtocolError):
    """The peer speaks a protocol version this walbops does not."""

    reason = "version mismatch"


class AuthenticationError(ProtocolError):
    """The peer cannot prove that it holds the cluster key."""

    reason = "authentication failed"


class ServerBusy(ProtocolError):
    """The server has too many connections in their handshake to take one more; try again later."""

    reason = "busy"


class PeerClosed(ProtocolError):
    """The peer closed the connection (or it was reset)."""


class PeerTimeout(ProtocolError):
    """The peer sent nothing, or did not read, within the socket timeout."""

    reason = "timeout"
