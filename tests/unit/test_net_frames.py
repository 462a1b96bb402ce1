"""Frames: golden bytes both ways, incremental decoding, hostile input, a fuzzed round trip."""

from __future__ import annotations

import json
import os

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.errors import BadFrame, CompressionError, FormatError, FrameTooLarge, ProtocolError, TruncatedRecord
from walbops.net.frames import (
    DATA_FRAME_SIZE,
    HEADER,
    LZ4_HEADER,
    MAX_FRAME_SIZE,
    MAX_HANDSHAKE_PAYLOAD,
    MAX_PAYLOAD_SIZE,
    PROBE_SIZE,
    DataFrame,
    FrameDecoder,
    FrameType,
    JsonFrame,
    encode_data,
    encode_frame,
    encode_json,
    split_data,
)

# (frame, bytes on the wire) -- the same table as docs/protocol.md, Appendix A.
GOLDEN_JSON = [
    ({"type": "ack"}, bytes.fromhex("0f000000 01") + b'{"type":"ack"}'),
    ({"type": "zero", "offset_lb": 0, "count_lb": 2048},
     bytes.fromhex("2e000000 01") + b'{"count_lb":2048,"offset_lb":0,"type":"zero"}'),
    ({"type": "abort", "reason": "d\u00e9j\u00e0"},
     bytes.fromhex("23000000 01") + '{"reason":"d\u00e9j\u00e0","type":"abort"}'.encode()),
]
GOLDEN_DATA = [
    (b"Eggs", bytes.fromhex("05000000 02 45676773")),
    (b"", bytes.fromhex("01000000 02")),
    # 64 zero bytes pay to compress: original_size 64, then the lz4 block.
    (b"\0" * 64, bytes.fromhex("10000000 03 40000000 1f00010027500000000000")),
    (b"ab" * 32, bytes.fromhex("11000000 03 40000000 2f6162020026506261626162")),
    (b"\0" * 13, bytes.fromhex("0e000000 02") + b"\0" * 13),  # lz4 would not pay
]


def decode_all(data: bytes, max_payload: int = MAX_PAYLOAD_SIZE) -> list:
    decoder = FrameDecoder(max_payload)
    decoder.feed(data)
    frames = list(decoder)
    decoder.eof()
    return frames


def test_constants():
    assert HEADER.size == 5
    assert LZ4_HEADER.size == 4
    assert MAX_FRAME_SIZE == 16 * 1024 * 1024 + 5
    assert [int(t) for t in FrameType] == [1, 2, 3]


@pytest.mark.parametrize("message, wire", GOLDEN_JSON)
def test_json_golden_bytes_both_ways(message, wire):
    assert encode_json(message) == wire
    assert decode_all(wire) == [JsonFrame(message)]


@pytest.mark.parametrize("data, wire", GOLDEN_DATA)
def test_data_golden_bytes_both_ways(data, wire):
    assert encode_data(data) == wire
    assert decode_all(wire) == [DataFrame(data)]


def test_lz4_only_when_it_pays():
    incompressible = bytes(range(256))
    assert encode_data(incompressible)[4] == FrameType.DATA
    assert encode_data(b"\0" * 4096)[4] == FrameType.DATA_LZ4
    assert encode_data(b"\0" * 4096, compress=False) == encode_frame(FrameType.DATA, b"\0" * 4096)
    # 13 zero bytes make a 4 + 10 byte payload, one more than the data: sent raw.
    assert encode_data(b"\0" * 13)[4] == FrameType.DATA
    assert encode_data(b"\0" * 15)[4] == FrameType.DATA_LZ4


def test_large_incompressible_buffers_skip_compression():
    noise = os.urandom(DATA_FRAME_SIZE)
    assert encode_data(noise) == HEADER.pack(1 + len(noise), FrameType.DATA) + noise
    # Compressible somewhere in the samples: compressed whole, and only used because it pays.
    mostly_noise = noise[:-PROBE_SIZE] + bytes(PROBE_SIZE)
    assert encode_data(mostly_noise)[4] == FrameType.DATA_LZ4
    assert decode_all(encode_data(mostly_noise)) == [DataFrame(mostly_noise)]
    assert encode_data(bytes(DATA_FRAME_SIZE))[4] == FrameType.DATA_LZ4


def test_fed_byte_by_byte_equals_fed_at_once():
    stream = b"".join(wire for _, wire in GOLDEN_JSON + GOLDEN_DATA) + encode_data(bytes(range(256)) * 64)
    at_once = decode_all(stream)
    decoder = FrameDecoder()
    one_by_one = []
    for i in range(len(stream)):
        decoder.feed(stream[i:i + 1])
        one_by_one.extend(decoder)
    decoder.eof()
    assert one_by_one == at_once
    assert len(at_once) == len(GOLDEN_JSON) + len(GOLDEN_DATA) + 1
    assert decoder.buffered == 0


def test_partial_frame_waits_for_more():
    decoder = FrameDecoder()
    wire = encode_data(b"spam" * 10, compress=False)
    decoder.feed(wire[:-1])
    assert decoder.next_frame() is None
    decoder.feed(wire[-1:])
    assert decoder.next_frame() == DataFrame(b"spam" * 10)
    assert decoder.next_frame() is None


def test_oversized_length_is_refused_on_the_header_alone():
    decoder = FrameDecoder()
    # Only the header arrives: the decoder must refuse without waiting for 16 MiB.
    decoder.feed(HEADER.pack(MAX_PAYLOAD_SIZE + 2, FrameType.DATA))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
    assert decoder.buffered == HEADER.size


def test_largest_frame_is_accepted():
    header = HEADER.pack(MAX_PAYLOAD_SIZE + 1, FrameType.DATA)
    frames = decode_all(header + bytes(MAX_PAYLOAD_SIZE))
    assert len(frames[0].data) == MAX_PAYLOAD_SIZE


def test_handshake_limit():
    message = {"type": "auth", "proof": "x" * MAX_HANDSHAKE_PAYLOAD}
    with pytest.raises(FrameTooLarge):
        decode_all(encode_json(message), max_payload=MAX_HANDSHAKE_PAYLOAD)
    assert decode_all(encode_json({"type": "welcome"}), max_payload=MAX_HANDSHAKE_PAYLOAD)


def test_encoders_refuse_oversized_payloads():
    with pytest.raises(FrameTooLarge):
        encode_data(bytes(MAX_PAYLOAD_SIZE + 1))
    with pytest.raises(FrameTooLarge):
        encode_json({"type": "abort", "reason": "x" * MAX_PAYLOAD_SIZE})
    with pytest.raises(TypeError):
        encode_json(["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_json({"type": "x", "value": float("nan")})


@pytest.mark.parametrize("wire, error, match", [
    (HEADER.pack(0, 0), BadFrame, "length 0"),
    (HEADER.pack(3, 0x04) + b"ab", BadFrame, "unknown frame type 0x04"),
    (HEADER.pack(1, 0x00), BadFrame, "unknown frame type 0x00"),
    (encode_frame(FrameType.JSON, b"\xff\xfe"), BadFrame, "not UTF-8"),
    (encode_frame(FrameType.JSON, b'{"type": '), BadFrame, "does not parse"),
    (encode_frame(FrameType.JSON, b"[1, 2]"), BadFrame, "list, not an object"),
    (encode_frame(FrameType.JSON, b'"ack"'), BadFrame, "str, not an object"),
    (encode_frame(FrameType.JSON, b'{"type": "ack", "type": "end"}'), BadFrame, "duplicate"),
    (encode_frame(FrameType.JSON, b'{"type": "x", "n": NaN}'), BadFrame, "NaN"),
    (encode_frame(FrameType.JSON, b"[" * 100_000), BadFrame, "does not parse"),
    (encode_frame(FrameType.DATA_LZ4, b"\x40\x00"), TruncatedRecord, "shorter than its size field"),
    (encode_frame(FrameType.DATA_LZ4, LZ4_HEADER.pack(MAX_PAYLOAD_SIZE + 1) + b"\x00" * 8), FrameTooLarge, "claims"),
    (encode_frame(FrameType.DATA_LZ4, LZ4_HEADER.pack(4) + b"\x40abcd"), BadFrame, "does not pay"),
])
def test_malformed_frames(wire, error, match):
    with pytest.raises(error, match=match):
        decode_all(wire)


def test_lz4_size_mismatch_and_truncated_block():
    data = b"walb" * 1000
    block = lz4.block.compress(data, store_size=False)
    # Claims more than the block holds: the codec stops early, the size check catches it.
    with pytest.raises(CompressionError, match="decompresses to 4000 bytes, expected 4001"):
        decode_all(encode_frame(FrameType.DATA_LZ4, LZ4_HEADER.pack(len(data) + 1) + block))
    # A block cut short does not decompress at all.
    with pytest.raises(CompressionError):
        decode_all(encode_frame(FrameType.DATA_LZ4, LZ4_HEADER.pack(len(data)) + block[:-3]))
    # Claims less: the output does not fit.
    with pytest.raises(CompressionError):
        decode_all(encode_frame(FrameType.DATA_LZ4, LZ4_HEADER.pack(len(data) - 1) + block))


def test_stream_ending_inside_a_frame():
    decoder = FrameDecoder()
    decoder.feed(encode_json({"type": "ack"}) + encode_data(b"abc")[:-1])
    assert decoder.next_frame() == JsonFrame({"type": "ack"})
    assert decoder.next_frame() is None
    with pytest.raises(TruncatedRecord) as info:
        decoder.eof()
    assert info.value.offset == 19  # the second frame starts after the 19-byte ack


def test_errors_are_walbops_errors_with_offsets():
    decoder = FrameDecoder()
    decoder.feed(encode_json({"type": "ack"}) + HEADER.pack(2, 9) + b"x")
    assert decoder.next_frame() == JsonFrame({"type": "ack"})
    with pytest.raises(FormatError) as info:
        decoder.next_frame()
    assert info.value.offset == 19
    assert isinstance(FrameTooLarge("x"), ProtocolError)


def test_split_data():
    assert list(split_data(b"")) == []
    pieces = list(split_data(bytes(2 * DATA_FRAME_SIZE + 1)))
    assert [len(p) for p in pieces] == [DATA_FRAME_SIZE, DATA_FRAME_SIZE, 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=3000),
                          st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 500))),
                max_size=8),
       st.booleans(), st.integers(min_value=1, max_value=4096))
def test_data_round_trip(chunks, compress, piece):
    wire = b"".join(encode_data(chunk, compress) for chunk in chunks)
    decoder = FrameDecoder()
    out = []
    for start in range(0, len(wire), piece):
        decoder.feed(wire[start:start + piece])
        out.extend(decoder)
    decoder.eof()
    assert out == [DataFrame(chunk) for chunk in chunks]


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10)))
def test_json_round_trip(message):
    wire = encode_json(message)
    assert decode_all(wire) == [JsonFrame(message)]
    assert json.loads(wire[HEADER.size:]) == message
