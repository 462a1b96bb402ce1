"""Frames on a walbops connection (docs/protocol.md §2); pure, no I/O.

::

    frame = length u32 || type u8 || payload[length - 1]

    type 0x01 JSON      payload = one UTF-8 JSON object (a control message)
    type 0x02 DATA      payload = raw data
    type 0x03 DATA_LZ4  payload = original_size u32 || lz4 block

All integers little-endian. ``length`` counts the type byte and the payload. A ``DATA_LZ4``
frame is only sent when it is shorter than the ``DATA`` frame for the same bytes.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lz4.block

from ..errors import BadFrame, CompressionError, FrameTooLarge, TruncatedRecord

HEADER = struct.Struct("<IB")  # length u32 || type u8
LZ4_HEADER = struct.Struct("<I")  # original_size u32, in front of the lz4 block

MAX_PAYLOAD_SIZE = 16 << 20  # [bytes] of any frame's payload, and of the data one frame carries
MAX_FRAME_SIZE = HEADER.size + MAX_PAYLOAD_SIZE  # [bytes] 16 MiB + 5: a whole frame on the wire
MAX_HANDSHAKE_PAYLOAD = 4 << 10  # [bytes] before authentication; a hello is ~200 bytes
DATA_FRAME_SIZE = 1 << 20  # [bytes] how much data senders put in one frame when they split
# lz4 runs at ~1700 MB/s on incompressible data here, a third of a sender's time at loopback speed, and
# wdiff images are already compressed. So a large buffer is first probed with three samples of
# PROBE_SIZE; if they do not shrink by 1/32, the whole buffer would not pay either and is sent raw.
PROBE_SIZE = 16 << 10  # [bytes]
_PROBE_FROM = 4 * PROBE_SIZE  # [bytes] smaller buffers are compressed whole at once


class FrameType(enum.IntEnum):
    """The type byte of a frame."""

    JSON = 0x01
    DATA = 0x02
    DATA_LZ4 = 0x03


@dataclass(frozen=True)
class JsonFrame:
    """A control message: a decoded JSON object (not yet validated against its schema)."""

    message: dict[str, Any]


@dataclass(frozen=True)
class DataFrame:
    """Data bytes, decompressed if they travelled as ``DATA_LZ4``."""

    data: bytes


Frame = JsonFrame | DataFrame


def encode_frame(frame_type: FrameType, payload: bytes) -> bytes:
    """Serialize one frame.

    Raises:
        FrameTooLarge: the payload exceeds ``MAX_PAYLOAD_SIZE``.
    """
    if len(payload) > MAX_PAYLOAD_SIZE:
        raise FrameTooLarge(f"payload of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD_SIZE}")
    return HEADER.pack(1 + len(payload), frame_type) + payload


def encode_json(message: dict[str, Any]) -> bytes:
    """Serialize a control message as a ``JSON`` frame, in the canonical encoding.

    Raises:
        TypeError: ``message`` is not a dict or holds something JSON cannot represent.
        ValueError: it holds NaN or an infinity.
        FrameTooLarge: the encoded message exceeds ``MAX_PAYLOAD_SIZE``.
    """
    if not isinstance(message, dict):
        raise TypeError(f"a control message is a JSON object, not {type(message).__name__}")
    # Sorted keys and no whitespace make the bytes reproducible (golden tests, captures).
    text = json.dumps(message, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False)
    return encode_frame(FrameType.JSON, text.encode("utf-8"))


def encode_data(data: bytes | memoryview, compress: bool = True) -> bytes:
    """Serialize data as one ``DATA_LZ4`` frame if that is shorter, else as a ``DATA`` frame.

    Raises:
        FrameTooLarge: ``data`` exceeds ``MAX_PAYLOAD_SIZE``; split it first (:func:`split_data`).
    """
    if len(data) > MAX_PAYLOAD_SIZE:
        raise FrameTooLarge(f"{len(data)} bytes of data exceed the frame limit of {MAX_PAYLOAD_SIZE}")
    if compress and data and (len(data) < _PROBE_FROM or _may_pay(data)):
        # store_size=True prepends the original size as a u32 LE: exactly LZ4_HEADER || block.
        packed = lz4.block.compress(data, mode="default", store_size=True)
        if len(packed) < len(data):
            return encode_frame(FrameType.DATA_LZ4, packed)
    # join copies the data once, straight into the frame (no intermediate bytes(data)).
    return b"".join((HEADER.pack(1 + len(data), FrameType.DATA), data))


def _may_pay(data: bytes | memoryview) -> bool:
    """Whether samples from the start, middle and end of ``data`` compress by at least 1/32."""
    view = memoryview(data)
    middle = (len(view) - PROBE_SIZE) // 2
    sample = b"".join((view[:PROBE_SIZE], view[middle:middle + PROBE_SIZE], view[-PROBE_SIZE:]))
    return len(lz4.block.compress(sample, mode="default", store_size=False)) < len(sample) - len(sample) // 32


def split_data(data: bytes | memoryview, size: int = DATA_FRAME_SIZE) -> Iterator[memoryview]:
    """Cut ``data`` into zero-copy pieces of at most ``size`` bytes (none for empty data)."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start:start + size]


class FrameDecoder:
    """Cut a byte stream into frames: feed it bytes, take frames out.

    Each header is checked as soon as its 5 bytes are in, so an oversized or unknown frame is
    refused before its payload is read. After it has raised, a decoder must not be used again.

    Args:
        max_payload: the largest payload to accept; :data:`MAX_HANDSHAKE_PAYLOAD` until the
            peer has authenticated, then :data:`MAX_PAYLOAD_SIZE`. May be changed between frames.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD_SIZE) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._position = 0  # stream offset of the buffer's first byte, for error messages

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def eof(self) -> None:
        """Tell the decoder that the stream has ended.

        Raises:
            TruncatedRecord: the stream ended inside a frame.
        """
        if self._buffer:
            raise TruncatedRecord(f"connection closed inside a frame ({len(self._buffer)} bytes buffered)",
                                  self._position)

    def __iter__(self) -> Iterator[Frame]:
        """Yield every complete frame buffered so far."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None until more bytes are fed.

        Raises:
            FrameTooLarge: the length field or an lz4 original size exceeds the limit.
            BadFrame: zero length, an unknown type, bad JSON, or lz4 that does not pay.
            TruncatedRecord: a ``DATA_LZ4`` payload shorter than its size field.
            CompressionError: an lz4 block that does not decompress to its size.
        """
        buffer = self._buffer
        if len(buffer) < HEADER.size:
            return None
        length, raw_type = HEADER.unpack_from(buffer)
        frame_type = self._check_header(length, raw_type)
        end = HEADER.size + length - 1
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            payload = bytes(view[HEADER.size:end])
        del buffer[:end]
        offset = self._position
        self._position += end
        if frame_type == FrameType.JSON:
            return JsonFrame(_decode_json(payload, offset))
        if frame_type == FrameType.DATA:
            return DataFrame(payload)
        return DataFrame(_decode_lz4(payload, offset))

    def _check_header(self, length: int, raw_type: int) -> FrameType:
        if length == 0:
            raise BadFrame("frame length 0 leaves no room for the type byte", self._position)
        if length - 1 > self.max_payload:
            raise FrameTooLarge(f"frame of {length - 1} payload bytes exceeds the limit of {self.max_payload}")
        try:
            return FrameType(raw_type)
        except ValueError:
            raise BadFrame(f"unknown frame type 0x{raw_type:02x}", self._position) from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Two readers could disagree on which of the duplicates wins: refuse them all.
        raise ValueError("duplicate member names")
    return result


def _decode_json(payload: bytes, offset: int) -> dict[str, Any]:
    try:
        message = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant,
                             object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise BadFrame(f"JSON frame is not UTF-8: {exc.reason}", offset) from exc
    except (ValueError, RecursionError) as exc:
        raise BadFrame(f"JSON frame does not parse: {exc}", offset) from exc
    if not isinstance(message, dict):
        raise BadFrame(f"JSON frame holds a {type(message).__name__}, not an object", offset)
    return message


def _decode_lz4(payload: bytes, offset: int) -> bytes:
    if len(payload) < LZ4_HEADER.size:
        raise TruncatedRecord(f"lz4 frame of {len(payload)} bytes is shorter than its size field", offset)
    (original_size,) = LZ4_HEADER.unpack_from(payload)
    if original_size > MAX_PAYLOAD_SIZE:
        raise FrameTooLarge(f"lz4 frame claims {original_size} bytes, over the limit of {MAX_PAYLOAD_SIZE}")
    if len(payload) >= original_size:
        raise BadFrame(f"lz4 frame of {len(payload)} bytes for {original_size} bytes of data does not pay", offset)
    block = memoryview(payload)[LZ4_HEADER.size:]
    try:
        data = lz4.block.decompress(block, uncompressed_size=original_size)
    except lz4.block.LZ4BlockError as exc:
        raise CompressionError(f"lz4 frame does not decompress: {exc}", offset) from exc
    # The codec stops early on a short block without complaint: the size is our check.
    if len(data) != original_size:
        raise CompressionError(f"lz4 frame decompresses to {len(data)} bytes, expected {original_size}", offset)
    return data
