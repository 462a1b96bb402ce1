"""A TCP relay between a client and a server on loopback, to cut or tamper with the network
between them (WalB's packet-repeater). Importable as ``relay``."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

HOST = "127.0.0.1"
CHUNK = 1 << 16  # [bytes] read at once

# A tamper gets the client's bytes as read and the stream offset of their first byte, and returns
# what is sent on.
Tamper = Callable[[bytes, int], bytes]


class Relay:
    """Relays connections to ``target_port``; ``port`` is where clients connect.

    ``cut()`` drops every relayed connection at once and refuses new ones (the peers see the
    connection closed); ``cut(silent=True)`` stops forwarding but keeps the connections open, as a
    network that loses every packet does (the peers see nothing until their socket timeout).
    ``restore()`` relays again. ``tamper`` may change what each client sends; ``cut_after``
    cuts (as ``cut()``) once a client has sent more than that many bytes.

    Every socket is closed by the relay itself: when both directions of a connection are done,
    when it is dropped, or at ``close()``.
    """

    def __init__(self, target_port: int, tamper: Tamper | None = None, cut_after: int | None = None) -> None:
        self.target_port = target_port
        self.tamper = tamper
        self.cut_after = cut_after
        self.listener = socket.create_server((HOST, 0))
        self.port = int(self.listener.getsockname()[1])
        self.down = threading.Event()
        self.silent = False
        self.closed = False
        self._lock = threading.Lock()
        self._idle: set[socket.socket] = set()  # accepted during a silent cut, never relayed
        self._pumped: dict[socket.socket, list] = {}  # client: [client, upstream, directions running]
        threading.Thread(target=self._accept, name=f"relay {self.port}", daemon=True).start()

    def cut(self, silent: bool = False) -> None:
        self.silent = silent
        self.down.set()
        if not silent:
            self._drop_all()

    def restore(self) -> None:
        """Relay again; connections that lived through a silent cut are dropped then."""
        self._drop_all()
        self.down.clear()
        self.silent = False

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self.listener.close()
        self._drop_all()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down.is_set() and not self.silent:
                client.close()
                continue
            if self.down.is_set():
                with self._lock:
                    self._idle.add(client)  # accepted, never answered
                continue
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                relayed = not self.closed
                if relayed:
                    self._pumped[client] = [client, upstream, 2]
            if not relayed:  # closed meanwhile
                client.close()
                upstream.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, client, self.tamper), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, client: socket.socket,
              tamper: Tamper | None) -> None:
        offset = 0
        try:
            while True:
                while self.down.is_set() and self.silent and not self.closed:
                    time.sleep(0.05)  # nothing goes through: the sender's buffers fill up
                data = source.recv(CHUNK)
                if not data or self.down.is_set():
                    break
                sent = tamper(data, offset) if tamper is not None else data
                offset += len(data)
                if source is client and self.cut_after is not None and offset > self.cut_after:
                    self.cut()
                    break
                target.sendall(sent)
        except OSError:
            pass
        finally:
            if not (self.down.is_set() and self.silent):
                for sock in (source, target):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self._direction_done(client)

    def _direction_done(self, client: socket.socket) -> None:
        """The second direction of a connection to end closes both its sockets: never earlier, as
        a closed descriptor can be reused by another thread while the other direction uses it."""
        with self._lock:
            entry = self._pumped[client]
            entry[2] -= 1
            if entry[2] > 0:
                return
            del self._pumped[client]
        for sock in entry[:2]:
            sock.close()

    def _drop_all(self) -> None:
        """Close the idle connections; shut the relayed ones down (their pumps end and close them)."""
        with self._lock:
            idle, self._idle = self._idle, set()
            relayed = [sock for entry in self._pumped.values() for sock in entry[:2]]
        for sock in idle:
            sock.close()
        for sock in relayed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
