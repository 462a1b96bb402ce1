"""The cluster key and the mutual handshake (docs/protocol.md §4); pure, no sockets.

::

    client → server  hello     {version, id: C, role, nonce: Nc}
    server → client  challenge {version, id: S, host_type, nonce: Ns,
                                proof: HMAC-SHA256(K, "walbops-server\\0" || Nc || Ns || S)}
    client → server  auth      {proof: HMAC-SHA256(K, "walbops-client\\0" || Ns || Nc || C)}
    server → client  welcome   {}   or   error {reason: "authentication failed"}

The two labels keep server proofs and client proofs in disjoint domains, so a proof one side
computes can never be reflected back as the other side's (§4.4). ``K`` is the link key of the
client's role and the server's id, derived from the cluster key (§4.7): a process holds the
cluster key, or (a role key file) only the keys of its own roles and the link keys of the roles
that may call it, so a proxy's key file cannot prove the controller role. :class:`ClientHandshake` and
:class:`ServerHandshake` consume messages and return the messages to send; the asyncio shell in
:mod:`walbops.net.transport` only moves them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

from ..errors import (
    AuthenticationError,
    BadField,
    FrameTooLarge,
    InvalidMessage,
    OperationError,
    PeerTimeout,
    ProtocolError,
    ServerBusy,
    VersionMismatch,
)
from . import messages

KEY_SIZE = 32  # [bytes] the cluster key: as long as the SHA-256 block's security level needs
NONCE_SIZE = 32  # [bytes] per side and connection; from os.urandom, so never repeated in practice
SERVER_LABEL = b"walbops-server\0"
CLIENT_LABEL = b"walbops-client\0"
ROLE_LABEL = b"walbops-role\0"
LINK_LABEL = b"walbops-link\0"
KEYS_MAGIC = "walbops-keys 1"  # a role key file's first line
MAX_KEY_FILE = 4096  # [bytes] a role key file has at most a dozen lines of under 100 bytes
KEY_FILE_MODE = 0o600
_KEY_FILE_RE = re.compile(rb"([0-9a-fA-F]{%d})\n?" % (2 * KEY_SIZE))
_KEY_FILE_READ = 2 * KEY_SIZE + 2  # [bytes] 64 digits, a newline, and one more to notice junk


def generate_key() -> bytes:
    """A new random cluster key."""
    return os.urandom(KEY_SIZE)


def format_key(key: bytes) -> bytes:
    """The key file's content: 64 lowercase hex digits and a newline."""
    _check_key(key)
    return key.hex().encode("ascii") + b"\n"


def parse_key(content: bytes, source: str | None = None) -> bytes:
    """Parse a key file's content (the final newline is optional).

    Raises:
        BadField: anything but 64 hex digits and an optional newline.
    """
    match = _KEY_FILE_RE.fullmatch(content)
    if match is None:
        raise BadField(f"a key file holds {2 * KEY_SIZE} hex digits and a newline", source=source)
    return bytes.fromhex(match[1].decode("ascii"))


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read the cluster key from a key file.

    Raises:
        OperationError: the file is not a regular file, is owned by another user than us or
            root, or grants any permission to group or others.
        BadField: the content is not a key.
        OSError: the file cannot be opened or read.
    """
    name = os.fspath(path)
    return parse_key(_read_secret(name, _KEY_FILE_READ), name)


def load_keys(path: str | os.PathLike[str]) -> bytes | Keys:
    """Read a key file: the cluster key (bytes), or a role key file (:class:`Keys`, §4.7).

    Raises:
        OperationError, OSError: as :func:`load_key`.
        BadField: the content is neither a cluster key nor a role key file.
    """
    name = os.fspath(path)
    content = _read_secret(name, MAX_KEY_FILE + 1)
    if content.startswith(KEYS_MAGIC.encode()):
        if len(content) > MAX_KEY_FILE:
            raise BadField(f"a role key file is at most {MAX_KEY_FILE} bytes", source=name)
        return parse_keys(content, name)
    return parse_key(content, name)


def _read_secret(name: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of a file that must be a regular file, ours, and private."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; on a
    # regular file the flag changes nothing.
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        # fstat the open file, not the path, so what we check is what we read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OperationError(f"{name}: a key file must be a regular file")
        if info.st_uid not in (os.geteuid(), 0):
            # Like ssh with its identity files: another user could have replaced the content.
            raise OperationError(f"{name}: key file is owned by uid {info.st_uid}, not by us "
                                 f"(uid {os.geteuid()}) or root; run chown {os.geteuid()} {name}")
        if info.st_mode & 0o077:
            raise OperationError(f"{name}: key file mode {stat.S_IMODE(info.st_mode):04o} gives group or others "
                                 f"access; run chmod 600 {name}")
        return os.read(fd, limit)
    finally:
        os.close(fd)


def role_key(cluster_key: bytes, role: str) -> bytes:
    """HMAC-SHA256(cluster key, ROLE_LABEL || role): what a client of ``role`` holds (§4.7)."""
    _check_key(cluster_key)
    return hmac.digest(cluster_key, ROLE_LABEL + role.encode("ascii"), hashlib.sha256)


def link_key(key_of_role: bytes, server_id: str) -> bytes:
    """HMAC-SHA256(role key, LINK_LABEL || server id): the handshake's key between a client of
    that role and the server ``server_id`` (§4.7)."""
    _check_key(key_of_role)
    return hmac.digest(key_of_role, LINK_LABEL + server_id.encode("utf-8"), hashlib.sha256)


@dataclass(frozen=True)
class Keys:
    """A role key file (§4.7): the keys of the roles its holder acts as, and, for an agent, the
    link keys of the roles that may call it.

    A process holding ``Keys`` proves only those roles: it cannot derive another role's key,
    nor any link key into another agent.
    """

    roles: tuple[tuple[str, bytes], ...]  # (role, role key), for connections this process opens
    agent_id: str | None = None  # the agent the link keys are for
    accepts: tuple[tuple[str, bytes], ...] = ()  # (caller role, link key into agent_id)

    @classmethod
    def issue(cls, cluster_key: bytes, roles: tuple[str, ...], agent_id: str | None = None) -> Keys:
        """The key file of a process acting as ``roles``; with ``agent_id``, also of the agents
        with that id whose kinds are among ``roles``: the link keys of their callers
        (:data:`messages.CALLERS`) and of their own kinds (one file serves a host's storage and
        proxy agents alike)."""
        for role in roles:
            if role not in messages.ROLES:
                raise BadField(f"role {role!r} is not one of {', '.join(messages.ROLES)}")
        accepts: tuple[tuple[str, bytes], ...] = ()
        if agent_id is not None:
            if not any(role in messages.CALLERS for role in roles):
                raise BadField(f"an agent's key file names its kind among its roles "
                               f"({', '.join(messages.HOST_TYPES)})")
            if not re.fullmatch(messages.ID_PATTERN, agent_id):
                raise BadField(f"agent id {agent_id!r} does not match {messages.ID_PATTERN}")
            # Its callers, and its own kind: a process holding the agent's own file may ask it
            # `version` (a liveness check; §6.2 lets that role call nothing else there).
            callers = [caller for caller in messages.ROLES
                       if any(caller in messages.CALLERS.get(role, ()) or caller == role for role in roles)]
            accepts = tuple((caller, link_key(role_key(cluster_key, caller), agent_id)) for caller in callers)
        return cls(tuple((role, role_key(cluster_key, role)) for role in roles), agent_id, accepts)

    def holds_role(self, role: str) -> bool:
        return role in dict(self.roles)

    def client_key(self, role: str, server_id: str) -> bytes:
        """The link key a client of ``role`` proves itself with to ``server_id``.

        Raises:
            AuthenticationError: this file holds no key for ``role``.
        """
        key = dict(self.roles).get(role)
        if key is None:
            raise AuthenticationError(f"the key file holds no {role} key (it has {self.describe_roles()})")
        return link_key(key, server_id)

    def server_key(self, role: str, server_id: str) -> bytes | None:
        """The link key a client of ``role`` must prove to us, agent ``server_id``; None if no client
        of that role may connect to us."""
        return dict(self.accepts).get(role) if server_id == self.agent_id else None

    def describe_roles(self) -> str:
        return ", ".join(role for role, _ in self.roles) or "no role"

    def describe_accepts(self) -> str:
        return ", ".join(role for role, _ in self.accepts) or "no role"


def parse_keys(content: bytes, source: str | None = None) -> Keys:
    """Parse a role key file::

        walbops-keys 1
        id ID                     (an agent's file only)
        role ROLE HEX64           (one per role its holder acts as)
        accept ROLE HEX64         (an agent's file only: one per role that may call it)

    Raises:
        BadField: any other line, a repeated role, a key that is not 64 hex digits, or accept
            lines without an id.
    """
    try:
        lines = content.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise BadField("a role key file is ASCII text", source=source) from None
    if not lines or lines[0] != KEYS_MAGIC:
        raise BadField(f"a role key file starts with the line {KEYS_MAGIC!r}", source=source)
    agent_id: str | None = None
    sections: dict[str, dict[str, bytes]] = {"role": {}, "accept": {}}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        where = f"{source or 'role key file'} line {number}"
        if len(fields) == 2 and fields[0] == "id" and agent_id is None:
            agent_id = fields[1]
            continue
        if len(fields) != 3 or fields[0] not in sections:
            raise BadField(f"{where}: expected 'id ID', 'role ROLE KEY' or 'accept ROLE KEY'")
        kind, role, hex_key = fields
        if role not in messages.ROLES or role in sections[kind]:
            raise BadField(f"{where}: {role!r} is not a role ({', '.join(messages.ROLES)}) or is repeated")
        sections[kind][role] = parse_key(hex_key.encode("ascii"), where)
    if sections["accept"] and agent_id is None:
        raise BadField("a role key file with accept lines names its agent with an 'id' line", source=source)
    return Keys(tuple(sections["role"].items()), agent_id, tuple(sections["accept"].items()))


def format_keys(keys: Keys) -> bytes:
    """The role key file's content (see :func:`parse_keys`)."""
    lines = [KEYS_MAGIC]
    if keys.agent_id is not None:
        lines.append(f"id {keys.agent_id}")
    lines += [f"role {role} {key.hex()}" for role, key in keys.roles]
    lines += [f"accept {role} {key.hex()}" for role, key in keys.accepts]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_key(path: str | os.PathLike[str], key: bytes | None = None, *, force: bool = False) -> bytes:
    """Write a cluster key file atomically with mode 0600 and return the key (a new one unless given).

    The file appears complete or not at all. Without ``force`` an existing file is never
    replaced: the new file is hard-linked into place, which fails if the name exists.

    Raises:
        OperationError: ``path`` exists and ``force`` is false.
        OSError: the directory is not writable, or another file system error.
    """
    key = generate_key() if key is None else key
    _write_secret(path, format_key(key), force)
    return key


def write_keys(path: str | os.PathLike[str], keys: Keys, *, force: bool = False) -> None:
    """Write a role key file as :func:`write_key` writes a cluster key file."""
    _write_secret(path, format_keys(keys), force)


def _write_secret(path: str | os.PathLike[str], content: bytes, force: bool) -> None:
    name = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(name)
    # mkstemp creates the file with mode 0600 and O_EXCL.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(name)}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, name)
        else:
            try:
                os.link(tmp, name)
            except FileExistsError:
                raise OperationError(f"{name} exists; refusing to overwrite a key file") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def make_nonce() -> bytes:
    """A fresh handshake nonce."""
    return os.urandom(NONCE_SIZE)


def server_proof(key: bytes, client_nonce: bytes, server_nonce: bytes, server_id: str) -> bytes:
    """HMAC-SHA256(key, SERVER_LABEL || client_nonce || server_nonce || server_id)."""
    _check_key(key)
    return hmac.digest(key, SERVER_LABEL + client_nonce + server_nonce + server_id.encode("utf-8"), hashlib.sha256)


def client_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, client_id: str) -> bytes:
    """HMAC-SHA256(key, CLIENT_LABEL || server_nonce || client_nonce || client_id)."""
    _check_key(key)
    return hmac.digest(key, CLIENT_LABEL + server_nonce + client_nonce + client_id.encode("utf-8"), hashlib.sha256)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise BadField(f"a cluster key is {KEY_SIZE} bytes, not {len(key)}")


def _verify(expected: bytes, proof_hex: str) -> bool:
    # The schema has checked the hex; compare_digest keeps the time independent of the content.
    return hmac.compare_digest(expected, bytes.fromhex(proof_hex))


def _version_of(message: dict[str, Any]) -> int | None:
    """``version`` if it is an integer; read before the schema, which may differ between versions."""
    version = message.get("version")
    return version if type(version) is int else None


_PEER_ERRORS: dict[str, type[ProtocolError]] = {
    AuthenticationError.reason: AuthenticationError,
    VersionMismatch.reason: VersionMismatch,
    PeerTimeout.reason: PeerTimeout,
    FrameTooLarge.reason: FrameTooLarge,
    ServerBusy.reason: ServerBusy,
}


class _Handshake:
    """What both sides share: the peer's refusals and what to send when we refuse."""

    def __init__(self, key: bytes | Keys, nonce: bytes | None) -> None:
        if not isinstance(key, Keys):
            _check_key(key)
        self._key = key
        self._nonce = make_nonce() if nonce is None else nonce
        if len(self._nonce) != NONCE_SIZE:
            raise BadField(f"a nonce is {NONCE_SIZE} bytes, not {len(self._nonce)}")
        self._peer_refused = False
        self.done = False

    def refusal(self, exc: Exception) -> dict[str, Any] | None:
        """The ``error`` message to send after ``exc``; None when the peer refused us (never answer an error)."""
        if self._peer_refused:
            return None
        return error_message(exc)

    def _expect(self, message: dict[str, Any], type_name: str) -> None:
        """Raise the peer's refusal, or InvalidMessage if ``message`` is not a ``type_name``."""
        got = message.get("type")
        if got == "error":
            self._peer_refused = True
            raise peer_error(message)
        if self.done:
            raise InvalidMessage(f"{got!r} after the handshake has finished")
        if got != type_name:
            raise InvalidMessage(f"expected {type_name} during the handshake, got {got!r}")


class ClientHandshake(_Handshake):
    """The client's side: :meth:`hello` first, then :meth:`receive` the challenge and the welcome.

    Args:
        key: the cluster key, or a role key file's keys that hold ``role``.
        client_id: this client's id (the ``id`` of ``hello``, covered by the client proof).
        role: one of :data:`messages.ROLES`.
        nonce: for tests only; a fresh random nonce otherwise.

    Raises:
        AuthenticationError: ``key`` holds no key for ``role``.
    """

    def __init__(self, key: bytes | Keys, client_id: str, role: str, nonce: bytes | None = None) -> None:
        super().__init__(key, nonce)
        if isinstance(key, Keys) and not key.holds_role(role):
            raise AuthenticationError(f"cannot connect as {role}: the key file holds no {role} key "
                                      f"(it has {key.describe_roles()})")
        self.client_id = client_id
        self.role = role
        self.server_id: str | None = None
        self.host_type: str | None = None
        self._server_nonce: bytes | None = None

    def hello(self) -> dict[str, Any]:
        """The first message."""
        message = messages.hello(self.client_id, self.role, self._nonce.hex())
        messages.validate(message)  # a bad id or role is our bug: fail before sending it
        return message

    def receive(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Take the server's next message; return ``auth`` after the challenge, None after ``welcome``.

        Raises:
            AuthenticationError: the server cannot prove the key, or refused ours.
            VersionMismatch: the server speaks another version, or refused ours.
            InvalidMessage: a message out of turn or against its schema.
            ProtocolError: any other refusal by the server.
        """
        if self._server_nonce is None:
            self._expect(message, "challenge")
            version = _version_of(message)
            if version is not None and version != messages.PROTOCOL_VERSION:
                raise VersionMismatch(f"server speaks protocol version {version}; "
                                      f"this client speaks {messages.PROTOCOL_VERSION}")
            messages.validate(message)
            server_nonce = bytes.fromhex(message["nonce"])
            link = (self._key.client_key(self.role, message["id"]) if isinstance(self._key, Keys)
                    else link_key(role_key(self._key, self.role), message["id"]))
            expected = server_proof(link, self._nonce, server_nonce, message["id"])
            if not _verify(expected, message["proof"]):
                raise AuthenticationError(f"server {message['id']} ({message['host_type']}) "
                                          f"cannot prove the key of {self.role} clients")
            self._server_nonce = server_nonce
            self.server_id = message["id"]
            self.host_type = message["host_type"]
            return messages.auth(client_proof(link, server_nonce, self._nonce, self.client_id).hex())
        self._expect(message, "welcome")
        messages.validate(message)
        self.done = True
        return None


class ServerHandshake(_Handshake):
    """The server's side: :meth:`receive` the hello (→ challenge), then the auth (→ welcome).

    Args:
        key: the cluster key, or the agent's role key file's keys (issued for ``server_id``).
        server_id: this server's id (the ``id`` of ``challenge``, covered by the server proof).
        host_type: one of :data:`messages.HOST_TYPES`.
        nonce: for tests only; a fresh random nonce otherwise.
    """

    def __init__(self, key: bytes | Keys, server_id: str, host_type: str, nonce: bytes | None = None) -> None:
        super().__init__(key, nonce)
        self.server_id = server_id
        self.host_type = host_type
        self.client_id: str | None = None
        self.role: str | None = None
        self._hello: tuple[bytes, str, bytes] | None = None  # the client's nonce, id and link key

    def receive(self, message: dict[str, Any]) -> dict[str, Any]:
        """Take the client's next message; return ``challenge`` after hello, ``welcome`` after auth.

        Raises:
            AuthenticationError: the client's proof does not verify, or it refused ours.
            VersionMismatch: the client speaks another version.
            InvalidMessage: a message out of turn (a request before auth) or against its schema.
            ProtocolError: any other refusal by the client.
        """
        if self._hello is None:
            self._expect(message, "hello")
            version = _version_of(message)
            if version is not None and version not in messages.SUPPORTED_VERSIONS:
                raise VersionMismatch(f"client speaks protocol version {version}; "
                                      f"this server speaks protocol version {messages.PROTOCOL_VERSION}")
            messages.validate(message)
            client_nonce = bytes.fromhex(message["nonce"])
            role = message["role"]
            if isinstance(self._key, Keys):
                accepted = self._key.server_key(role, self.server_id)
                if accepted is None:
                    raise AuthenticationError(f"the {self.host_type} agent {self.server_id} takes no {role} clients "
                                              f"(its key file accepts {self._key.describe_accepts()})")
                link = accepted
            else:
                link = link_key(role_key(self._key, role), self.server_id)
            self._hello = (client_nonce, message["id"], link)
            self.client_id = message["id"]
            self.role = role
            proof = server_proof(link, client_nonce, self._nonce, self.server_id)
            reply = messages.challenge(self.server_id, self.host_type, self._nonce.hex(), proof.hex())
            messages.validate(reply)  # a bad server id or host type is our bug
            return reply
        self._expect(message, "auth")
        messages.validate(message)
        client_nonce, client_id, link = self._hello
        expected = client_proof(link, self._nonce, client_nonce, client_id)
        if not _verify(expected, message["proof"]):
            raise AuthenticationError(f"client {client_id} ({self.role}) cannot prove the key of its role")
        self.done = True
        return messages.welcome()


def error_message(exc: Exception) -> dict[str, Any]:
    """The ``error`` message that tells the peer why we close after ``exc`` (docs/protocol.md §9)."""
    reason = exc.reason if isinstance(exc, ProtocolError) else ProtocolError.reason
    return messages.error(reason, str(exc))


def peer_error(message: dict[str, Any], handshake: bool = True) -> ProtocolError:
    """The exception for an ``error`` message the peer sent, during the handshake or after it.

    Raises:
        InvalidMessage: the error message itself breaks its schema.
    """
    messages.validate(message)
    reason = message["reason"]
    detail = message.get("detail")
    what = "peer refused the handshake" if handshake else "peer gave up on the connection"
    text = f"{what}: {reason}" + (f" ({detail})" if detail else "")
    return _PEER_ERRORS.get(reason, ProtocolError)(text)
