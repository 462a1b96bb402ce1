"""Control message schemas, builders, transfer arguments, and the stream bookkeeping."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walbops.errors import BadField, ChecksumMismatch, InvalidMessage, ProtocolError
from walbops.net import messages
from walbops.net.stream import ImageCursor, StreamDigest

NONCE = "ab" * 32
UUID = "0123456789abcdef" * 2
DIFF = "|0|-->|3| M- 2017-05-24T04:49:40 4128"

BUILT = [
    messages.hello("s0", "storage", NONCE),
    messages.challenge("a0", "archive", NONCE, NONCE),
    messages.auth(NONCE),
    messages.welcome(),
    messages.error("authentication failed"),
    messages.error("version mismatch", "this server speaks protocol version 1"),
    messages.request(1, "snapshot", {"vol": "vol0"}),
    messages.request(2, "status"),
    messages.response(1, {"gid": 5}),
    messages.response(1),
    messages.response(1, messages.ACCEPTED),
    messages.response(7, error="vol0: a backup is running", reason="syncing"),
    messages.response(7, error="no such command"),
    messages.begin(bytes(range(16))),
    messages.begin(bytes(range(16)), size_lb=65536, bulk_lb=512),
    messages.hash_begin("|3,7|", 2**32 - 1),
    messages.hashes(512, 1024),
    messages.bulks([(512, 8, False), (1024, 8, True)]),
    messages.chunk(0, 512),
    messages.zero(512, 1 << 40),
    messages.end(4096, "00" * 4),
    messages.end(4096, "00" * 4, gid=3),
    messages.ack(),
    messages.abort("disk full"),
    messages.keepalive(),
]


def test_every_message_type_has_a_schema_and_a_builder():
    assert {m["type"] for m in BUILT} == set(messages.SCHEMAS)
    assert set(messages.SCHEMAS) == {"hello", "challenge", "auth", "welcome", "error", "request", "response",
                                     "begin", "chunk", "zero", "end", "ack", "abort", "keepalive", "hash-begin",
                                     "hashes", "bulks"}


@pytest.mark.parametrize("message", BUILT, ids=lambda m: m["type"])
def test_builders_pass_validation(message):
    assert messages.validate(message) == message["type"]


@pytest.mark.parametrize("message, field", [
    ({**messages.hello("s0", "storage", NONCE), "nonce": "xyz"}, "hello.nonce"),
    ({**messages.hello("s0", "storage", NONCE), "nonce": NONCE.upper()}, "hello.nonce"),
    ({**messages.hello("s0", "storage", NONCE), "role": "root"}, "hello.role"),
    ({**messages.hello("s0", "storage", NONCE), "id": ""}, "hello.id"),
    ({**messages.hello("s0", "storage", NONCE), "version": -1}, "hello.version"),
    ({**messages.hello("s0", "storage", NONCE), "extra": 1}, "hello: Additional properties"),
    ({"type": "hello", "version": 2, "id": "s0", "role": "storage"}, "'nonce' is a required property"),
    ({"type": "request", "id": 1, "command": "Get", "args": {}}, "request.command"),
    ({"type": "request", "id": 2**32, "command": "get", "args": {}}, "request.id"),
    ({"type": "request", "id": 1, "command": "get", "args": []}, "request.args"),
    ({"type": "response", "id": 1, "ok": False, "error": "x", "reason": "Not A Token"}, "response.reason"),
    ({"type": "response", "id": 1, "ok": False}, "'error' is a required property"),
    ({"type": "response", "id": 1, "ok": True}, "'result' is a required property"),
    ({"type": "chunk", "offset_lb": 0, "count_lb": 0}, "chunk.count_lb"),
    ({"type": "hashes", "offset_lb": 0, "count": 1025}, "hashes.count"),
    ({"type": "hash-begin", "snap": "|7,3", "seed": 1}, "hash-begin.snap"),
    ({"type": "bulks", "items": [[0, 8, 2]]}, "bulks.items.0.2"),
    ({"type": "bulks", "items": []}, "bulks.items"),
    ({"type": "zero", "offset_lb": 2**64, "count_lb": 1}, "zero.offset_lb"),
    ({"type": "end", "size": 1, "checksum": "00"}, "end.checksum"),
    ({"type": "begin", "uuid": "00" * 15}, "begin.uuid"),
    ({"type": "abort", "reason": "x" * 5000}, "abort.reason"),
])
def test_validation_names_the_field(message, field):
    with pytest.raises(InvalidMessage) as info:
        messages.validate(message)
    assert field in str(info.value)
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize("message", [None, [], "hello", {}, {"type": 1}, {"type": "shutdown"}])
def test_unknown_or_missing_type(message):
    with pytest.raises(InvalidMessage):
        messages.validate(message)


def test_booleans_are_not_integers():
    with pytest.raises(InvalidMessage, match="request.id"):
        messages.validate({"type": "request", "id": True, "command": "get", "args": {}})


# bulks messages near and past every bound of the schema: types, ranges, lengths, extra members.
_ANY_SCALAR = st.one_of(st.integers(-2, 2**64 + 1), st.booleans(), st.floats(allow_nan=False), st.text(max_size=2),
                        st.none())
_ITEM = st.one_of(st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.sampled_from([0, 1])).map(list),
                  st.lists(_ANY_SCALAR, min_size=0, max_size=4), _ANY_SCALAR)
_BULKS = st.fixed_dictionaries({"type": st.just("bulks"),
                                "items": st.one_of(st.lists(_ITEM, min_size=0, max_size=6), _ANY_SCALAR)},
                               optional={"extra": _ANY_SCALAR})


@given(_BULKS)
@settings(max_examples=500, deadline=None)
def test_the_bulks_fast_path_accepts_only_what_the_schema_accepts(message):
    if messages._surely_valid_bulks(message):
        assert messages.validator("bulks").is_valid(message)


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.booleans()),
                min_size=1, max_size=messages.MAX_HASHES))
@settings(max_examples=100, deadline=None)
def test_built_bulks_messages_take_the_fast_path(items):
    assert messages._surely_valid_bulks(messages.bulks(items))


@pytest.mark.parametrize("items, field", [
    ([[1, 0, 0]], "bulks.items.0.1"), ([[1, 8, True]], "bulks.items.0.2"), ([[1, 8]], "bulks.items.0"),
    ([[1.5, 8, 0]], "bulks.items.0.0"), ([], "bulks.items"),
])
def test_a_bulks_message_off_the_fast_path_is_refused_by_name(items, field):
    with pytest.raises(InvalidMessage, match=field.replace(".", r"\.")):
        messages.validate({"type": "bulks", "items": items})


TRANSFER_ARGS = {
    messages.WLOG_TRANSFER: {"vol": "vol0", "uuid": UUID, "pbs": 512, "salt": 7, "size_lb": 2048, "diff": DIFF,
                             "max_log_pb": 1 << 20},
    messages.WDIFF_TRANSFER: {"vol": "vol0", "uuid": UUID, "size_lb": 2048, "diff": DIFF},
    messages.DIRTY_FULL_SYNC: {"vol": "vol0", "size_lb": 2048, "bulk_lb": 512, "timestamp": 1_500_000_000},
}


@pytest.mark.parametrize("command", sorted(TRANSFER_ARGS))
def test_transfer_args(command):
    args = TRANSFER_ARGS[command]
    messages.validate_args(command, args)
    for name in args:
        with pytest.raises(InvalidMessage, match=f"'{name}' is a required property"):
            messages.validate_args(command, {k: v for k, v in args.items() if k != name})
    with pytest.raises(InvalidMessage, match="Additional properties"):
        messages.validate_args(command, {**args, "surprise": 1})


@pytest.mark.parametrize("command, name, value", [
    (messages.WLOG_TRANSFER, "pbs", 1024),
    (messages.WLOG_TRANSFER, "salt", 2**32),
    (messages.WLOG_TRANSFER, "uuid", "xyz"),
    (messages.WDIFF_TRANSFER, "vol", "vol 0"),
    (messages.WDIFF_TRANSFER, "diff", "|3|-->|0| M- 2017-05-24T04:49:40 4128"),  # breaks progress
    (messages.WDIFF_TRANSFER, "diff", "|0|-->|3| M- yesterday 4128"),
    (messages.DIRTY_FULL_SYNC, "bulk_lb", 0),
    (messages.DIRTY_FULL_SYNC, "bulk_lb", 8193),
])
def test_bad_transfer_args_are_named(command, name, value):
    with pytest.raises(InvalidMessage, match=f"args.{name}"):
        messages.validate_args(command, {**TRANSFER_ARGS[command], name: value})


def test_other_commands_pass_unchecked():
    messages.validate_args("snapshot", {"anything": [1, 2]})


def test_texts_are_capped():
    assert len(messages.abort("x" * 10_000)["reason"]) == messages.MAX_TEXT
    assert len(messages.response(1, error="x" * 10_000)["error"]) == messages.MAX_TEXT


def test_stream_digest():
    sender, receiver = StreamDigest(), StreamDigest()
    for piece in (b"walb", b"", b"ops" * 1000):
        sender.update(piece)
        receiver.update(memoryview(piece))
    end = sender.end(gid=9)
    assert end == {"type": "end", "size": 3004, "checksum": f"{zlib.crc32(b'walb' + b'ops' * 1000):08x}", "gid": 9}
    assert StreamDigest().checksum == "00000000"
    messages.validate(end)
    receiver.check(end)
    with pytest.raises(BadField, match="3004 bytes"):
        receiver.check({**end, "size": 3005})
    with pytest.raises(ChecksumMismatch):
        receiver.check({**end, "checksum": "00" * 4})


def test_image_cursor_in_order():
    cursor = ImageCursor(size_lb=2500, bulk_lb=1024)
    cursor.item(messages.chunk(0, 1024))
    assert cursor.data(100_000) == 0
    assert cursor.data(1024 * 512 - 100_000) == 100_000
    cursor.item(messages.zero(1024, 1024))
    cursor.item(messages.chunk(2048, 452))
    assert cursor.data(452 * 512) == 2048 * 512
    cursor.finish()


@pytest.mark.parametrize("steps, match", [
    ([("item", messages.chunk(8, 8))], "expected LB 0"),
    ([("item", messages.chunk(0, 2048))], "longer than the bulk size"),
    ([("item", messages.zero(0, 4097))], "runs past"),
    ([("data", 1)], "owes 0"),
    ([("item", messages.chunk(0, 8)), ("data", 8 * 512 + 1)], "owes 4096"),
    ([("item", messages.chunk(0, 8)), ("item", messages.zero(8, 8))], "still owes"),
    ([("item", messages.chunk(0, 8)), ("data", 512), ("finish", None)], "still owes"),
    ([("item", messages.zero(0, 8)), ("finish", None)], "covers 8 LB of the volume's 4096"),
    ([("item", messages.end(0, "00" * 4))], "expected chunk or zero"),
])
def test_image_cursor_refuses(steps, match):
    cursor = ImageCursor(size_lb=4096, bulk_lb=1024)
    with pytest.raises(InvalidMessage, match=match):
        for action, argument in steps:
            if action == "item":
                cursor.item(argument)
            elif action == "data":
                cursor.data(argument)
            else:
                cursor.finish()


def test_hash_sync_cursor_keeps_bulks_within_the_hashed_ones():
    from walbops.net.stream import HashSyncCursor

    cursor = HashSyncCursor(size_lb=2048 + 100, bulk_lb=512)
    assert cursor.hashed(2) == (0, 1024)
    assert cursor.bulks([[512, 512, 0]]) == 512 * 512
    with pytest.raises(InvalidMessage, match="still owe"):
        cursor.bulks([[1024, 8, 1]])
    cursor.data(512 * 512)
    with pytest.raises(InvalidMessage, match="goes back"):
        cursor.bulks([[0, 512, 1]])
    with pytest.raises(InvalidMessage, match="past the bulks hashed"):
        cursor.bulks([[1024, 512, 1]])
    assert cursor.hashed(3) == (1024, 2148)  # the last bulk is short
    assert cursor.bulks([[1536, 512, 1], [2048, 100, 0]]) == 100 * 512
    with pytest.raises(InvalidMessage, match="still owe"):
        cursor.finish()
    with pytest.raises(InvalidMessage, match="where the bulks owe"):
        cursor.data(101 * 512)
    cursor.data(100 * 512)
    cursor.finish()
    with pytest.raises(InvalidMessage, match="longer than the bulk size"):
        HashSyncCursor(4096, 512).bulks([[0, 1024, 0]])
    short = HashSyncCursor(size_lb=4096, bulk_lb=512)
    short.hashed(1)
    with pytest.raises(InvalidMessage, match="ended at LB 512 of 4096"):
        short.finish()
