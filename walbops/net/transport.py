"""The asyncio shell around frames, messages and the handshake (docs/protocol.md).

This module only moves bytes: :mod:`.frames` cuts them into frames, :mod:`.auth` decides the
handshake, :mod:`.messages` validates. A :class:`Channel` is an authenticated connection;
:func:`open_connection` makes one as a client, :func:`accept_channel` as a server, and
:func:`serve` runs a handler for every client that authenticates.

Every read and write is bounded by the channel's socket timeout; the handshake as a whole by
``handshake_timeout``. When this side finds the peer at fault it sends an ``error`` message
(best effort) and closes; the exception is raised to the caller either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, cast

from ..errors import (
    AuthenticationError,
    FormatError,
    InvalidMessage,
    PeerClosed,
    PeerTimeout,
    ProtocolError,
    RemoteError,
    ServerBusy,
    WalbopsError,
)
from ..logs import RateLimit, request_id_var
from . import messages
from .auth import ClientHandshake, ServerHandshake, error_message, peer_error
from .frames import (
    MAX_HANDSHAKE_PAYLOAD,
    MAX_PAYLOAD_SIZE,
    DataFrame,
    Frame,
    FrameDecoder,
    JsonFrame,
    encode_data,
    encode_json,
    split_data,
)
from .tls import Secret, certified_role, credentials, tls_failure

HANDSHAKE_TIMEOUT = 10.0  # [s] for connect + the whole handshake: a trickling peer cannot hold a slot
DEFAULT_TIMEOUT = 10.0  # [s] for any one read or write (walb-tools' -to default)
MAX_HANDSHAKES = 128  # connections a server lets handshake at once; more are refused ("busy")
MAX_HANDSHAKES_PER_SOURCE = 32  # of them from one address: one prober cannot take them all (a
# handshake takes milliseconds, so honest clients, all-in-one on 127.0.0.1 too, stay far below)
KEEPALIVE_INTERVAL = 2.0  # [s] between keepalives while the peer waits for us
LINGER_TIMEOUT = 1.0  # [s] to drain the peer's bytes after our error, so it reads the error, not a reset
READ_SIZE = 256 << 10  # [bytes] per read from the socket

logger = logging.getLogger("walbops.net")

Handler = Callable[["Channel"], Awaitable[None]]
PEER_ERRORS = (ProtocolError, FormatError, OSError)  # what a conversation can fail with, besides refusals


class Channel:
    """One authenticated connection; made by :func:`open_connection` and :func:`accept_channel`.

    Until the handshake has run, the channel accepts only handshake-sized frames.

    Args:
        reader, writer: the asyncio streams of the connection.
        timeout: the socket timeout [s] for every read and write.
        name: how logs and errors name the peer (``host:port`` by default).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 timeout: float = DEFAULT_TIMEOUT, name: str | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(MAX_HANDSHAKE_PAYLOAD)  # raised once the peer authenticates
        self._next_id = 1
        self._closed = False
        self.timeout = timeout
        self.name = name if name is not None else _peer_name(writer)
        self.peer_id: str | None = None  # the peer's id and role, known after the handshake
        self.peer_role: str | None = None
        self._stream_ended = True  # False from a request until its stream's end or abort is read
        self.certified_role: str | None = None  # TLS mode: the role the peer's certificate names
        self.bytes_sent = 0  # [bytes] of frames, for the agents' transfer metrics
        self.bytes_received = 0

    def wire_bytes(self) -> int:
        """Bytes of frames sent and received so far."""
        return self.bytes_sent + self.bytes_received

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Sending.

    async def send_json(self, message: dict[str, Any]) -> None:
        """Validate and send a control message.

        Raises:
            InvalidMessage: the message breaks its schema (our bug; nothing is sent).
            PeerTimeout, PeerClosed: the peer does not read, or is gone.
        """
        messages.validate(message)
        await self._write(encode_json(message))

    async def send_data(self, data: bytes | memoryview, compress: bool = True) -> None:
        """Send data as frames of at most ``DATA_FRAME_SIZE`` bytes, lz4 where it pays."""
        for piece in split_data(data):
            await self._write(encode_data(piece, compress))

    async def respond(self, request_id: int, result: Any = None) -> None:
        await self.send_json(messages.response(request_id, result))

    async def accept(self, request_id: int) -> None:
        """Answer an asynchronous command or a transfer with ``{"accepted": true}``."""
        await self.send_json(messages.response(request_id, messages.ACCEPTED))

    async def refuse(self, request_id: int, error: str, reason: str | None = None) -> None:
        """Answer a request with ``ok: false``; the connection stays open."""
        await self.send_json(messages.response(request_id, error=error, reason=reason))

    # Receiving.

    async def recv(self) -> Frame:
        """The next frame: a validated control message or data. Skips ``keepalive``.

        Raises:
            PeerClosed, PeerTimeout: the connection ended or went silent.
            FormatError, ProtocolError: the peer broke the protocol, or sent ``error``
                (the connection is closed then).
        """
        frame = await self._recv(eof_ok=False)
        if frame is None:  # unreachable with eof_ok=False; keeps the type exact
            raise PeerClosed(f"{self.name} closed the connection")
        return frame

    async def recv_json(self, expect: str | None = None) -> dict[str, Any]:
        """The next control message, of type ``expect`` if given.

        Raises:
            RemoteError: the peer sent ``abort`` instead.
            InvalidMessage: data or another type came (the connection is closed then).
        """
        return await self._expect(await self.recv(), expect)

    async def recv_request(self) -> dict[str, Any] | None:
        """The next ``request``, or None if the client closed the connection between requests."""
        frame = await self._recv(eof_ok=True)
        return None if frame is None else await self._expect(frame, "request")

    async def request(self, command: str, args: dict[str, Any] | None = None) -> Any:
        """Send a request and return the result of its response.

        Raises:
            RemoteError: the response is a refusal (``error``, ``reason``).
            InvalidMessage: the response answers another request.
        """
        request_id = self._next_id
        self._next_id = request_id % messages.U32_MAX + 1
        await self.send_json(messages.request(request_id, command, args, request_id_var.get()))
        response = await self.recv_json("response")
        if response["id"] != request_id:
            await self._refuse(InvalidMessage(f"response to request {response['id']}, expected {request_id}"))
        if not response["ok"]:
            raise RemoteError(response["error"], response.get("reason"))
        return response["result"]

    @contextlib.asynccontextmanager
    async def keepalive(self, interval: float = KEEPALIVE_INTERVAL) -> AsyncIterator[None]:
        """Send ``keepalive`` every ``interval`` seconds while the body runs (a slow step the peer waits for)."""
        async def beat() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.send_json(messages.keepalive())

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                # The body notices a dead connection on its next send or receive.
                logger.debug("%s: keepalive stopped: %s", self.name, task.exception())

    async def send_abort(self, reason: str) -> None:
        """A sender's abort (§7.2): the stream ends without ``end``; best effort, the connection stays."""
        with contextlib.suppress(WalbopsError, OSError):
            await self.send_json(messages.abort(reason))

    async def abort_receiving(self, reason: str) -> None:
        """A receiver's abort (§7.2): ``abort``, and unless the stream's ``end`` was read (the
        sender may still be sending frames) a lingering close of the connection. Nothing when the
        connection is closed already (a frame that broke off was answered by :meth:`fail`)."""
        if self._closed:
            return
        if self._stream_ended:
            await self.send_abort(reason)
            return
        with contextlib.suppress(OSError):
            self._writer.write(encode_json(messages.abort(reason)))
        await self._linger_close()

    @contextlib.asynccontextmanager
    async def receiving(self) -> AsyncIterator[None]:
        """A receiver's block: a failure in it, unless it is the peer's own protocol error (the
        connection is answered and gone already), is answered with :meth:`abort_receiving` so the
        sender learns why, then raised on."""
        try:
            yield
        except (WalbopsError, OSError) as exc:
            if not isinstance(exc, ProtocolError):
                await self.abort_receiving(str(exc))
            raise

    # Closing.

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER_TIMEOUT):
                await self._writer.wait_closed()

    async def fail(self, exc: Exception) -> None:
        """Tell the peer why we give up (``error``), let it read that, and close."""
        if self._closed:
            return
        with contextlib.suppress(OSError):
            self._writer.write(encode_json(error_message(exc)))
        await self._linger_close()

    async def _linger_close(self) -> None:
        """Half-close, read and drop the peer's bytes for up to LINGER_TIMEOUT, then close."""
        if self._closed:
            return
        with contextlib.suppress(OSError):
            if self._writer.can_write_eof():
                self._writer.write_eof()
        # Closing with unread input makes the kernel send a reset, which can destroy what we
        # sent last before the peer reads it: drain the peer's bytes for a moment first.
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER_TIMEOUT):
                while await self._reader.read(READ_SIZE):
                    pass
        await self.close()

    # The handshake.

    async def _client_handshake(self, handshake: ClientHandshake) -> None:
        await self._write(encode_json(handshake.hello()))
        while not handshake.done:
            reply = handshake.receive(await self._handshake_message())
            if reply is not None:
                await self._write(encode_json(reply))
        self._authenticated(handshake.server_id, handshake.host_type)

    async def _server_handshake(self, handshake: ServerHandshake) -> None:
        while not handshake.done:
            reply = handshake.receive(await self._handshake_message())
            if handshake.role is not None:
                self._check_certified(handshake.role)  # before the challenge: a liar learns nothing
            await self._write(encode_json(reply))
        self._authenticated(handshake.client_id, handshake.role)

    async def _handshake_message(self) -> dict[str, Any]:
        frame = await self._read_frame(eof_ok=False)
        if not isinstance(frame, JsonFrame):
            raise InvalidMessage("data frame during the handshake")
        return frame.message

    def _check_certified(self, role: str | None) -> None:
        """TLS mode: what a peer says it is must be what its certificate says (§4.6)."""
        if self.certified_role is not None and role != self.certified_role:
            raise AuthenticationError(f"{self.name}: its certificate is for role {self.certified_role}, "
                                      f"but it says it is {role}")

    def _authenticated(self, peer_id: str | None, peer_role: str | None) -> None:
        self._check_certified(peer_role)
        self.peer_id, self.peer_role = peer_id, peer_role
        self._decoder.max_payload = MAX_PAYLOAD_SIZE

    async def _start_tls(self, context: ssl.SSLContext, deadline: float, server_hostname: str | None = None) -> None:
        """TLS on this connection, before the handshake; learns the role the peer's certificate names.

        Raises:
            AuthenticationError: TLS failed (a certificate that does not verify, expired, from
                another CA, or naming no role); the connection is closed.
            PeerTimeout: TLS did not finish by ``deadline`` (loop time).
        """
        try:
            async with asyncio.timeout_at(deadline):
                await self._writer.start_tls(context, server_hostname=server_hostname)
            self.certified_role = certified_role(self._writer.get_extra_info("ssl_object"))
        except TimeoutError:
            await self.close()
            raise PeerTimeout(f"TLS with {self.name} did not finish in time") from None
        except (ssl.SSLError, OSError) as exc:
            await self.close()
            raise tls_failure(self.name, exc) from None
        except AuthenticationError as exc:
            await self.close()
            raise AuthenticationError(f"{self.name}: {exc}") from None

    # Internals.

    async def _recv(self, eof_ok: bool) -> Frame | None:
        while True:
            try:
                frame = await self._read_frame(eof_ok)
                if frame is None or isinstance(frame, DataFrame):
                    return frame
                kind = messages.validate(frame.message)
            except PeerClosed:
                await self.close()
                raise
            except (FormatError, ProtocolError) as exc:
                if isinstance(exc, FormatError):
                    exc.located(self.name)
                await self.fail(exc)
                raise
            if kind == "error":
                await self.close()  # never answer an error
                raise peer_error(frame.message, handshake=self.peer_role is None)
            if kind in ("end", "abort"):
                self._stream_ended = True
            elif kind == "request":
                self._stream_ended = False
            if kind != "keepalive":
                return frame

    async def _expect(self, frame: Frame, expect: str | None) -> dict[str, Any]:
        if isinstance(frame, DataFrame):
            await self._refuse(InvalidMessage(f"expected {expect or 'a control message'}, got data"))
        message = frame.message
        if expect is None or message["type"] == expect:
            return message
        if message["type"] == "abort":
            raise RemoteError(message["reason"], "aborted")
        await self._refuse(InvalidMessage(f"expected {expect}, got {message['type']}"))

    async def _refuse(self, exc: ProtocolError) -> NoReturn:
        await self.fail(exc)
        raise exc

    async def _read_frame(self, eof_ok: bool) -> Frame | None:
        while (frame := self._decoder.next_frame()) is None:
            data = await self._read()
            if not data:
                self._decoder.eof()  # TruncatedRecord if inside a frame
                if eof_ok:
                    await self.close()
                    return None
                raise PeerClosed(f"{self.name} closed the connection")
            self._decoder.feed(data)
        return frame

    async def _read(self) -> bytes:
        if self._closed:
            raise PeerClosed(f"connection to {self.name} is closed")
        try:
            async with asyncio.timeout(self.timeout):
                data = await self._reader.read(READ_SIZE)
            self.bytes_received += len(data)
            return data
        except TimeoutError:
            raise PeerTimeout(f"{self.name} sent nothing for {self.timeout:g} s") from None
        except ConnectionError as exc:
            raise PeerClosed(f"{self.name}: {exc}") from exc

    async def _write(self, frame: bytes) -> None:
        if self._closed:
            raise PeerClosed(f"connection to {self.name} is closed")
        try:
            self._writer.write(frame)
            self.bytes_sent += len(frame)
            async with asyncio.timeout(self.timeout):
                await self._writer.drain()
        except TimeoutError:
            await self.close()
            raise PeerTimeout(f"{self.name} read nothing for {self.timeout:g} s") from None
        except ConnectionError as exc:
            await self.close()
            raise PeerClosed(f"{self.name}: {exc}") from exc


def _log_refusal(limit: RateLimit, message: str, *args: Any) -> None:
    """A warning about a stranger's connection, at most ``limit`` allows; says how many were not logged."""
    suppressed = limit.allow()
    if suppressed is None:
        return
    if suppressed:
        message += f" ({suppressed} similar refusals not logged in the last {limit.period:.0f} s)"
    logger.warning(message, *args)


def _peer_host(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def _handshake(channel: Channel, run: Awaitable[None], handshake: ClientHandshake | ServerHandshake,
                     deadline: float, budget: float) -> None:
    """Run one side of the handshake until ``deadline`` (loop time; ``budget`` [s] from the
    connection's start, for the message); on failure tell the peer and close."""
    try:
        async with asyncio.timeout_at(deadline):
            await run
    except TimeoutError:
        exc = PeerTimeout(f"handshake with {channel.name} did not finish within {budget:g} s")
        await channel.fail(exc)
        raise exc from None
    except (FormatError, ProtocolError) as exc:
        if isinstance(exc, FormatError):
            exc.located(channel.name)
        if handshake.refusal(exc) is None or isinstance(exc, PeerClosed):
            await channel.close()
        else:
            await channel.fail(exc)
        raise
    except BaseException:
        # A reset connection or a cancelled caller: release the socket now, not at some later
        # garbage collection.
        await channel.close()
        raise


async def open_connection(host: str, port: int, key: Secret, client_id: str, role: str,
                          timeout: float = DEFAULT_TIMEOUT, *,
                          handshake_timeout: float = HANDSHAKE_TIMEOUT, sock: socket.socket | None = None) -> Channel:
    """Connect to a walbops server and authenticate both ways.

    Args:
        key: the cluster key, or :class:`~walbops.net.tls.Credentials` (TLS mode: TLS 1.3 with
            certificates on both sides, then the handshake inside it).
        client_id: this client's id; role: one of ``messages.ROLES``.
        timeout: the socket timeout of the channel [s].
        handshake_timeout: deadline for connecting, TLS and the whole handshake [s].
        sock: a socket already connected to the server (an SSH tunnel's); ``host:port`` then
            only names it.

    Raises:
        AuthenticationError: the server cannot prove the key or its certificate does not verify,
            or it refused ours.
        VersionMismatch, PeerTimeout, PeerClosed, InvalidMessage, FormatError: the handshake failed.
        OSError: the connection cannot be made (refused, unreachable).
    """
    secret = credentials(key)
    handshake = ClientHandshake(secret.key, client_id, role)
    deadline = asyncio.get_running_loop().time() + handshake_timeout
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await _open_streams(host, port, sock)
    except TimeoutError:
        raise PeerTimeout(f"connecting to {host}:{port} took longer than {handshake_timeout:g} s") from None
    channel = Channel(reader, writer, timeout=timeout, name=f"{host}:{port}")
    context = secret.client_context()
    if context is not None:
        await channel._start_tls(context, deadline, server_hostname=host)
    await _handshake(channel, channel._client_handshake(handshake), handshake, deadline, handshake_timeout)
    return channel


async def accept_channel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: Secret, server_id: str,
                         host_type: str, timeout: float = DEFAULT_TIMEOUT, *,
                         handshake_timeout: float = HANDSHAKE_TIMEOUT) -> Channel:
    """Run the server's side of TLS (in TLS mode) and of the handshake on a new connection.

    On failure the client is sent an ``error`` (after TLS, when TLS worked) and the connection
    is closed before the exception is raised; no request is read.

    Raises:
        AuthenticationError, VersionMismatch, PeerTimeout, PeerClosed, InvalidMessage,
        FrameTooLarge, FormatError: the client did not complete the handshake.
    """
    secret = credentials(key)
    deadline = asyncio.get_running_loop().time() + handshake_timeout
    channel = Channel(reader, writer, timeout=timeout)
    context = secret.server_context()
    if context is not None:
        await channel._start_tls(context, deadline)
    handshake = ServerHandshake(secret.key, server_id, host_type)
    await _handshake(channel, channel._server_handshake(handshake), handshake, deadline, handshake_timeout)
    return channel


async def serve(host: str, port: int, key: Secret, server_id: str, host_type: str, handler: Handler,
                timeout: float = DEFAULT_TIMEOUT, *, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                max_handshakes: int = MAX_HANDSHAKES,
                max_handshakes_per_source: int = MAX_HANDSHAKES_PER_SOURCE,
                on_refused: Callable[[str], None] | None = None) -> asyncio.Server:
    """Listen on ``host:port`` and run ``handler(channel)`` for every client that authenticates.

    A client that fails the handshake never reaches the handler. A handler's failure closes its
    connection and is logged; the server goes on serving. The channel is closed when the
    handler returns. At most ``max_handshakes`` connections handshake at once, at most
    ``max_handshakes_per_source`` of them from one address; one more is sent ``error {busy}``.
    Refusals are logged at most 10 a minute, and each is told to ``on_refused(reason)`` (the
    agents count them). Port 0 picks a free port (``server.sockets[0].getsockname()``). Closing
    the server stops new connections only: the caller tracks and cancels running handlers.
    """
    admission = Admission(max_handshakes, max_handshakes_per_source)
    refusals = RateLimit(burst=10, period=60.0)
    tls_mode = credentials(key).tls is not None

    def refused(reason: str) -> None:
        if on_refused is not None:
            on_refused(reason)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = _peer_host(writer)
        if not admission.enter(source):
            refused(ServerBusy.reason)
            _log_refusal(refusals, "%s: refused: %d connections are handshaking (%d from this address)",
                         _peer_name(writer), admission.total, admission.by_source.get(source, 0))
            busy = Channel(reader, writer, timeout=timeout)
            if tls_mode:  # before TLS nothing can be said to a TLS client; a TLS handshake costs too much here
                await busy.close()
            else:
                await busy.fail(ServerBusy(f"{admission.total} connections are in their handshake; try again later"))
            return
        handshaking = True

        def authenticated() -> None:
            nonlocal handshaking
            if handshaking:
                handshaking = False
                admission.leave(source)

        try:
            await _serve_one(reader, writer, key, server_id, host_type, handler, timeout, handshake_timeout,
                             authenticated, refusals, refused)
        except asyncio.CancelledError:
            # Only a shutdown cancels a connection, and nobody awaits this task: Python 3.11's
            # start_server would log a cancelled one as an error. The channel is closed already.
            pass
        finally:
            authenticated()  # a failed handshake leaves the count too

    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _ReaderProtocol(asyncio.StreamReader(), on_connect), host, port)


class _ReaderProtocol(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """asyncio's stream protocol, receiving into a buffer of its own (``asyncio.BufferedProtocol``).

    The socket, and in TLS mode the decryption, write straight into it, and the stream reader
    copies out of it. With asyncio's plain protocol every read allocates a bytes object of 256 KiB,
    in TLS mode one for every 16 KiB record, which are then joined: on a bulk transfer that was
    about half of what TLS cost (docs/security.md, benchmarks/backup.py (f)).
    """

    def __init__(self, reader: asyncio.StreamReader,
                 client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                 | None = None) -> None:
        super().__init__(reader, client_connected_cb)
        self._view = memoryview(bytearray(READ_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        # StreamReader.feed_data takes any buffer; it copies it out before the next read.
        self.data_received(cast(bytes, self._view[:nbytes]))


async def _open_streams(host: str, port: int, sock: socket.socket | None) -> tuple[asyncio.StreamReader,
                                                                                   asyncio.StreamWriter]:
    """``asyncio.open_connection`` with :class:`_ReaderProtocol`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = _ReaderProtocol(reader)
    if sock is None:
        transport, _ = await loop.create_connection(lambda: protocol, host, port)
    else:
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class Admission:
    """Counts the connections that have not finished their handshake, in all and per address."""

    def __init__(self, limit: int, per_source: int) -> None:
        self.limit = limit
        self.per_source = per_source
        self.total = 0
        self.by_source: dict[str, int] = {}

    def enter(self, source: str) -> bool:
        if self.total >= self.limit or self.by_source.get(source, 0) >= self.per_source:
            return False
        self.total += 1
        self.by_source[source] = self.by_source.get(source, 0) + 1
        return True

    def leave(self, source: str) -> None:
        count = self.by_source[source]
        self.total -= 1
        if count == 1:
            del self.by_source[source]
        else:
            self.by_source[source] = count - 1


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: Secret, server_id: str,
                     host_type: str, handler: Handler, timeout: float, handshake_timeout: float,
                     authenticated: Callable[[], None], refusals: RateLimit, refused: Callable[[str], None]) -> None:
    peer = _peer_name(writer)  # now: a closed TLS transport no longer knows it
    try:
        channel = await accept_channel(reader, writer, key, server_id, host_type, timeout,
                                       handshake_timeout=handshake_timeout)
    except PEER_ERRORS as exc:
        refused(exc.reason if isinstance(exc, ProtocolError) else
                "invalid frame" if isinstance(exc, FormatError) else "connection error")
        _log_refusal(refusals, "%s: handshake refused: %s", peer, exc)
        return
    authenticated()
    try:
        await handler(channel)
    except (WalbopsError, OSError) as exc:
        logger.warning("%s (%s): %s", channel.name, channel.peer_id, exc)
    except Exception:
        logger.exception("%s (%s): handler failed", channel.name, channel.peer_id)
    finally:
        await channel.close()
