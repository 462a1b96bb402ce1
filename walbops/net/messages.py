"""Control messages: their JSON Schemas, validation, and builders (docs/protocol.md §3–§8).

Every control message is a JSON object whose ``type`` member names it. :func:`validate` checks
a message against the schema of its type and raises :class:`InvalidMessage` naming the field;
:func:`validate_args` does the same for the arguments of the transfers of section 8. The
builders return plain dicts that pass :func:`validate`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import FormatError, InvalidMessage
from ..gid import MetaDiff

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

PROTOCOL_VERSION = 2  # 2: the handshake proves a link key of the client's role (section 4.7)
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})

ROLES = ("controller", "storage", "proxy", "archive")  # what a client says it is in hello
HOST_TYPES = ("storage", "proxy", "archive")  # what a server says it is in challenge
# The roles that may call some command on each host type (section 6.2; `version`, open to all,
# aside): an agent's role key file holds link keys for these roles and no other (section 4.7).
CALLERS = {
    "storage": ("controller",),
    "proxy": ("controller", "storage"),
    "archive": ("controller", "storage", "proxy", "archive"),
}
ACCEPTED = {"accepted": True}  # the result of an accepted asynchronous command or transfer

# Commands whose accepted response opens a stream (section 8).
WLOG_TRANSFER = "wlog-transfer"
WDIFF_TRANSFER = "wdiff-transfer"
DIRTY_FULL_SYNC = "dirty-full-sync"
DIRTY_HASH_SYNC = "dirty-hash-sync"
HASH_SIZE = 16  # [bytes] one MurmurHash3_x64_128 in a hashes frame
MAX_HASHES = 1024  # hashes in one hashes message
HASH_BATCH_BYTES = 4 << 20  # [bytes] of the image one hashes message covers (the last may cover less)


def hash_batch(bulk_lb: int) -> int:
    """How many bulks one hashes message covers: about HASH_BATCH_BYTES of the image, 1 to MAX_HASHES."""
    return max(1, min(MAX_HASHES, HASH_BATCH_BYTES // (bulk_lb * 512)))
VIRT_FULL_SCAN = "virt-full-scan"
REPL_SYNC = "repl-sync"  # archive -> archive: replication (section 8.6)
GATHER_LATEST_SNAP = "gather-latest-snap"  # storage -> archive: its latest snapshots (section 6.3)
MAX_GATHERED_VOLUMES = 4096  # volumes one gather-latest-snap asks about
REPL_KINDS = ("full", "resync", "diff")

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
MAX_TEXT = 4096  # [characters] of an error text or abort reason

_U32 = {"type": "integer", "minimum": 0, "maximum": U32_MAX}
_U64 = {"type": "integer", "minimum": 0, "maximum": U64_MAX}
_HEX32 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}  # nonces and proofs: 32 bytes
_CRC32 = {"type": "string", "pattern": "^[0-9a-f]{8}$"}  # a stream checksum
_UUID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
ID_PATTERN = "^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$"  # an agent's or a client's id (hello, challenge)
_ID = {"type": "string", "pattern": ID_PATTERN}
_VOL = {"type": "string", "pattern": "^[0-9A-Za-z-]{1,64}$"}  # WalB's volume id rule
_REASON = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,63}$"}
_TEXT = {"type": "string", "maxLength": MAX_TEXT}
_SNAP = r"\|[0-9]+(,[0-9]+)?\|"
_BULK_LB = {**_U32, "minimum": 1, "maximum": 8192}  # [LB] 4 MiB at most
_DIFF = {"type": "string", "maxLength": 256, "pattern": rf"^{_SNAP}-->{_SNAP} [M-][C-] \S+ [0-9]+$"}


def _message(type_name: str, properties: dict[str, Any], required: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The schema of one message type: ``type`` plus the given members, nothing else."""
    return {
        "type": "object",
        "properties": {"type": {"const": type_name}, **properties},
        "required": ["type", *(properties if required is None else required)],
        "additionalProperties": False,
    }


def _args(properties: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": {**properties, **(optional or {})}, "required": list(properties),
            "additionalProperties": False}


_RESPONSE_OK = _message("response", {"id": _U32, "ok": {"const": True}, "result": {}})
_RESPONSE_FAILED = _message("response", {"id": _U32, "ok": {"const": False}, "error": _TEXT, "reason": _REASON},
                            required=("id", "ok", "error"))

SCHEMAS: dict[str, dict[str, Any]] = {
    "hello": _message("hello", {"version": _U32, "id": _ID, "role": {"enum": list(ROLES)}, "nonce": _HEX32}),
    "challenge": _message("challenge", {"version": _U32, "id": _ID, "host_type": {"enum": list(HOST_TYPES)},
                                        "nonce": _HEX32, "proof": _HEX32}),
    "auth": _message("auth", {"proof": _HEX32}),
    "welcome": _message("welcome", {}),
    "error": _message("error", {"reason": {"type": "string", "minLength": 1, "maxLength": 64}, "detail": _TEXT},
                      required=("reason",)),
    # rid: the request id of the operator's command that caused this request (logs.request_id),
    # carried from ctl to every agent it touches and on to the agents they call.
    "request": _message("request", {"id": _U32, "command": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,63}$"},
                                    "args": {"type": "object"},
                                    "rid": {"type": "string", "pattern": "^[0-9a-f]{1,32}$"}},
                        required=("id", "command", "args")),
    # ok selects the branch, so a failure names the field of the right one.
    "response": {"if": {"properties": {"ok": {"const": False}}, "required": ["ok"]},
                 "then": _RESPONSE_FAILED, "else": _RESPONSE_OK},
    "begin": _message("begin", {"uuid": _UUID, "size_lb": _U64, "bulk_lb": {**_U32, "minimum": 1},
                                "base": {"type": "string", "maxLength": 256}, "start_lb": _U64},
                      required=("uuid",)),
    "chunk": _message("chunk", {"offset_lb": _U64, "count_lb": {**_U32, "minimum": 1}}),
    "zero": _message("zero", {"offset_lb": _U64, "count_lb": {**_U64, "minimum": 1}}),
    "end": _message("end", {"size": _U64, "checksum": _CRC32, "gid": _U64}, required=("size", "checksum")),
    "ack": _message("ack", {}),
    "abort": _message("abort", {"reason": _TEXT}),
    "keepalive": _message("keepalive", {}),
    "hash-begin": _message("hash-begin", {"snap": {"type": "string", "maxLength": 64,
                                                   "pattern": rf"^{_SNAP}$"}, "seed": _U32}),
    "hashes": _message("hashes", {"offset_lb": _U64, "count": {"type": "integer", "minimum": 1,
                                                               "maximum": MAX_HASHES}}),
    # [offset_lb, count_lb, zero (0|1)] of the bulks of one batch that differ
    "bulks": _message("bulks", {"items": {"type": "array", "minItems": 1, "maxItems": MAX_HASHES,
                                          "items": {"type": "array", "prefixItems": [_U64, {**_U32, "minimum": 1},
                                                                                     {"enum": [0, 1]}],
                                                    "minItems": 3, "maxItems": 3}}}),
}

ARGS_SCHEMAS: dict[str, dict[str, Any]] = {
    WLOG_TRANSFER: _args({"vol": _VOL, "uuid": _UUID, "pbs": {"enum": [512, 4096]}, "salt": _U32,
                          "size_lb": _U64, "diff": _DIFF, "max_log_pb": _U64}),
    WDIFF_TRANSFER: _args({"vol": _VOL, "uuid": _UUID, "size_lb": _U64, "diff": _DIFF}),
    DIRTY_FULL_SYNC: _args({"vol": _VOL, "size_lb": _U64, "bulk_lb": _BULK_LB, "timestamp": _U64}),
    # diff: a hash replication's (from an archive only, section 8.6)
    DIRTY_HASH_SYNC: _args({"vol": _VOL, "size_lb": _U64, "bulk_lb": _BULK_LB, "timestamp": _U64}, {"diff": _DIFF}),
    REPL_SYNC: _args({"vol": _VOL, "uuid": _UUID, "archive_uuid": _UUID, "size_lb": _U64,
                      "do_resync": {"type": "boolean"}}, {"bulk_lb": _BULK_LB}),
}


@functools.cache
def validator(schema_name: str, of_args: bool = False) -> Draft202012Validator:
    """The validator of a message type's schema (or of a transfer command's arguments), made when
    first needed: jsonschema takes about 0.3 s to import, which every short command that only
    names a role or a host type (``walbops keygen``, ``walbops ensure``) would pay."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator((ARGS_SCHEMAS if of_args else SCHEMAS)[schema_name])


def _field(error: ValidationError, prefix: str) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    return f"{prefix}.{path}" if path else prefix


def _check(schema: Draft202012Validator, instance: Any, where: str) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(schema.iter_errors(instance))
    if error is not None:
        raise InvalidMessage(f"{_field(error, where)}: {error.message}")


def _surely_valid_bulks(message: dict[str, Any]) -> bool:
    """True only for a ``bulks`` message its schema accepts, in one plain pass: the schema's
    validator takes about 1 ms over a batch of 100 items, which a 10 % hash backup pays 500 times.
    False sends the message to the schema, which then names what is wrong. Tested against it."""
    items = message.get("items")
    if len(message) != 2 or type(items) is not list or not 1 <= len(items) <= MAX_HASHES:
        return False
    for item in items:
        if type(item) is not list or len(item) != 3:
            return False
        offset, count, zero = item
        if type(offset) is not int or type(count) is not int or type(zero) is not int \
                or not (0 <= offset <= U64_MAX and 1 <= count <= U32_MAX and zero in (0, 1)):
            return False
    return True


# Plain checks that accept a subset of what a type's schema accepts, for the hot messages.
_FAST_PATHS: dict[str, Callable[[dict[str, Any]], bool]] = {"bulks": _surely_valid_bulks}


def validate(message: Any) -> str:
    """Check a control message against the schema of its type; return the type.

    Raises:
        InvalidMessage: not an object, an unknown type, or a member that breaks the schema
            (the error names it, e.g. ``hello.nonce``).
    """
    if not isinstance(message, dict):
        raise InvalidMessage(f"a control message is an object, not {type(message).__name__}")
    type_name = message.get("type")
    if not isinstance(type_name, str) or type_name not in SCHEMAS:
        raise InvalidMessage(f"unknown message type {type_name!r}")
    fast = _FAST_PATHS.get(type_name)
    if fast is None or not fast(message):
        _check(validator(type_name), message, type_name)
    return type_name


def validate_args(command: str, args: dict[str, Any]) -> None:
    """Check the arguments of a transfer request (section 8); other commands pass unchecked.

    Raises:
        InvalidMessage: a missing, extra or malformed argument (named as ``args.diff`` …).
    """
    if command not in ARGS_SCHEMAS:
        return
    _check(validator(command, of_args=True), args, "args")
    if "diff" in args:
        try:
            MetaDiff.parse(args["diff"])
        except FormatError as exc:
            raise InvalidMessage(f"args.diff: {exc}") from exc


# Builders. Each returns a message that passes validate().

def hello(client_id: str, role: str, nonce: str, version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    return {"type": "hello", "version": version, "id": client_id, "role": role, "nonce": nonce}


def challenge(server_id: str, host_type: str, nonce: str, proof: str,
              version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    return {"type": "challenge", "version": version, "id": server_id, "host_type": host_type,
            "nonce": nonce, "proof": proof}


def auth(proof: str) -> dict[str, Any]:
    return {"type": "auth", "proof": proof}


def welcome() -> dict[str, Any]:
    return {"type": "welcome"}


def error(reason: str, detail: str | None = None) -> dict[str, Any]:
    """A connection-level error; the sender closes right after it."""
    message: dict[str, Any] = {"type": "error", "reason": reason}
    if detail:
        message["detail"] = detail[:MAX_TEXT]
    return message


def request(request_id: int, command: str, args: dict[str, Any] | None = None,
            rid: str | None = None) -> dict[str, Any]:
    message = {"type": "request", "id": request_id, "command": command, "args": {} if args is None else args}
    if rid is not None:
        message["rid"] = rid
    return message


def response(request_id: int, result: Any = None, *, error: str | None = None,
             reason: str | None = None) -> dict[str, Any]:
    """A success (``result``) or, when ``error`` is given, a refusal with an optional ``reason``."""
    if error is None:
        return {"type": "response", "id": request_id, "ok": True, "result": result}
    message: dict[str, Any] = {"type": "response", "id": request_id, "ok": False, "error": error[:MAX_TEXT]}
    if reason is not None:
        message["reason"] = reason
    return message


def begin(uuid: bytes, size_lb: int | None = None, bulk_lb: int | None = None,
          base: str | None = None, start_lb: int | None = None) -> dict[str, Any]:
    """The start of an image stream; a virt-full-scan also says the image's size and bulk, a full
    replication the base state it sends, a resumed one where its items start."""
    message: dict[str, Any] = {"type": "begin", "uuid": uuid.hex()}
    if size_lb is not None:
        message["size_lb"] = size_lb
    if bulk_lb is not None:
        message["bulk_lb"] = bulk_lb
    if base is not None:
        message["base"] = base
    if start_lb is not None:
        message["start_lb"] = start_lb
    return message


def chunk(offset_lb: int, count_lb: int) -> dict[str, Any]:
    return {"type": "chunk", "offset_lb": offset_lb, "count_lb": count_lb}


def zero(offset_lb: int, count_lb: int) -> dict[str, Any]:
    return {"type": "zero", "offset_lb": offset_lb, "count_lb": count_lb}


def end(size: int, checksum: str, gid: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "end", "size": size, "checksum": checksum}
    if gid is not None:
        message["gid"] = gid
    return message


def ack() -> dict[str, Any]:
    return {"type": "ack"}


def abort(reason: str) -> dict[str, Any]:
    return {"type": "abort", "reason": reason[:MAX_TEXT]}


def keepalive() -> dict[str, Any]:
    return {"type": "keepalive"}


def hash_begin(snap: str, seed: int) -> dict[str, Any]:
    return {"type": "hash-begin", "snap": snap, "seed": seed}


def hashes(offset_lb: int, count: int) -> dict[str, Any]:
    return {"type": "hashes", "offset_lb": offset_lb, "count": count}


def bulks(items: list[tuple[int, int, bool]]) -> dict[str, Any]:
    """The bulks of a hash-sync batch that differ: (offset_lb, count_lb, all zeros) each."""
    return {"type": "bulks", "items": [[offset, count, int(zero)] for offset, count, zero in items]}
