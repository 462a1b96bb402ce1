"""Reaching agents through SSH (paramiko): a ``direct-tcpip`` channel per connection.

An operator's controller reaches agents that listen only on a host's 127.0.0.1 by logging in to
that host with SSH and asking its sshd to open a TCP connection to the agent (what ``ssh -W``
does). The channel is handed to asyncio as one end of a socket pair, so the walbops protocol
(key mode or TLS) runs over it unchanged. Host keys are checked against known_hosts: a host that
is not there is refused with the command that trusts it, never trusted silently.

One SSH connection per destination is kept for the life of the process and shared by its
channels (opening one costs a key exchange and a login: tens of milliseconds).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import getpass
import hashlib
import os
import re
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import AuthenticationError, OperationError, UsageError

if TYPE_CHECKING:  # imported when first used: paramiko takes a while to load, and most commands never need it
    import paramiko

DEFAULT_PORT = 22
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
CONNECT_TIMEOUT = 15.0  # [s] TCP connect, banner, key exchange and login, each
KEEPALIVE_INTERVAL = 30  # [s] an idle shared connection sends a keepalive this often
CHUNK = 1 << 16  # [bytes] read at once on either side of a channel

_DESTINATION = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:@\s\[\]]+))"
                          r"(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class SshRoute:
    """How to reach an agent's host: ``[USER@]HOST[:PORT]``, the known_hosts file that must hold
    its host key, and the private key to log in with (None: the ssh agent and the default keys)."""

    host: str
    port: int = DEFAULT_PORT
    user: str = ""
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    key_file: str | None = None

    @classmethod
    def parse(cls, destination: str, known_hosts: str | None = None, key_file: str | None = None) -> SshRoute:
        """Raises: UsageError: not ``[USER@]HOST[:PORT]``."""
        match = _DESTINATION.match(destination.strip())
        port = int(match["port"]) if match and match["port"] else DEFAULT_PORT
        if match is None or not 0 < port < 65536:
            raise UsageError(f"ssh destination {destination!r}: expected [USER@]HOST[:PORT]")
        return cls(match["ipv6"] or match["host"], port, match["user"] or getpass.getuser(),
                   known_hosts or DEFAULT_KNOWN_HOSTS, key_file)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host as known_hosts names it (``[host]:port`` unless the port is 22)."""
        return self.host if self.port == DEFAULT_PORT else f"[{self.host}]:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def open_tunnel(route: SshRoute, address: str, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A socket connected, through ``route``'s sshd, to ``address:port`` as that host sees it.

    Raises:
        AuthenticationError: the host key is unknown or changed, or the login was refused.
        OperationError: the sshd refused the channel (nothing listens there, or forwarding is off).
        OSError: the host cannot be reached.
    """
    import paramiko

    transport = _POOL.transport(route, timeout)
    try:
        channel = transport.open_channel("direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=timeout)
    except paramiko.ChannelException as exc:
        raise OperationError(f"{route}: its sshd could not connect to {address}:{port} ({exc.text}); is the "
                             "agent running there, and does sshd allow TCP forwarding?") from None
    except paramiko.SSHException as exc:
        _POOL.forget(route)
        raise OperationError(f"{route}: {exc}") from None
    ours, theirs = socket.socketpair()
    _Bridge(channel, theirs).start()
    return ours


class _Pool:
    """One logged-in paramiko client per route, reconnected when its transport has died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[SshRoute, paramiko.SSHClient] = {}

    def transport(self, route: SshRoute, timeout: float) -> paramiko.Transport:
        with self._lock:
            client = self._clients.get(route)
            transport = client.get_transport() if client is not None else None
            if transport is None or not transport.is_active():
                client = _login(route, timeout)
                self._clients[route] = client
                transport = client.get_transport()
                if transport is None:
                    raise OperationError(f"{route}: the SSH connection closed right after login")
                transport.set_keepalive(KEEPALIVE_INTERVAL)
            return transport

    def forget(self, route: SshRoute) -> None:
        with self._lock:
            client = self._clients.pop(route, None)
        if client is not None:
            client.close()

    def close_all(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


_POOL = _Pool()
atexit.register(_POOL.close_all)


def _login(route: SshRoute, timeout: float) -> paramiko.SSHClient:
    import paramiko

    class RefuseUnknown(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            raise AuthenticationError(
                f"{route}: the host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not in "
                f"{route.known_hosts}; check that fingerprint with the host's administrator, then trust it "
                f"with: ssh-keyscan -p {route.port} -t {key.get_name()} {route.host} >> {route.known_hosts}")

    known_hosts = os.path.expanduser(route.known_hosts)
    client = paramiko.SSHClient()
    if os.path.exists(known_hosts):
        try:
            client.load_host_keys(known_hosts)
        except (OSError, paramiko.SSHException) as exc:
            raise UsageError(f"{route.known_hosts}: cannot read it ({exc})") from None
    client.set_missing_host_key_policy(RefuseUnknown())
    key_file = os.path.expanduser(route.key_file) if route.key_file else None
    try:
        client.connect(route.host, route.port, username=route.user, key_filename=key_file, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, allow_agent=True,
                       look_for_keys=key_file is None)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise AuthenticationError(
            f"{route}: the host key CHANGED: {route.known_hosts} has {fingerprint(exc.expected_key)}, the host "
            f"offers {fingerprint(exc.key)}. Someone may be intercepting the connection; if the host was "
            f"reinstalled, remove the old entry (ssh-keygen -R '{route.known_hosts_name}') and trust the new "
            "one") from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise AuthenticationError(f"{route}: login refused ({exc}); give a key with --ssh-key or load it into "
                                  "the ssh agent") from None
    except AuthenticationError:
        client.close()
        raise
    except (paramiko.SSHException, EOFError) as exc:
        client.close()
        raise OperationError(f"{route}: SSH failed: {exc}") from None
    except OSError as exc:
        client.close()
        raise OSError(exc.errno, f"{route}: {exc.strerror or exc}") from None
    return client


class _Bridge:
    """Copies bytes both ways between a paramiko channel and one end of a socket pair; each side's
    end of input is passed on as a half-close; both are closed once both directions are done."""

    def __init__(self, channel: paramiko.Channel, sock: socket.socket) -> None:
        self.channel, self.sock = channel, sock
        self._lock = threading.Lock()
        self._running = 2

    def start(self) -> None:
        threading.Thread(target=self._to_socket, name="ssh->socket", daemon=True).start()
        threading.Thread(target=self._to_channel, name="socket->ssh", daemon=True).start()

    def _to_socket(self) -> None:
        try:
            while data := self.channel.recv(CHUNK):
                self.sock.sendall(data)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._abort()
        finally:
            self._done()

    def _to_channel(self) -> None:
        try:
            while data := self.sock.recv(CHUNK):
                self.channel.sendall(data)
            self.channel.shutdown_write()
        except OSError:
            self._abort()
        finally:
            self._done()

    def _abort(self) -> None:
        """One side failed: make the other direction end too."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.channel.close()

    def _done(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running:
                return
        self.channel.close()
        self.sock.close()
