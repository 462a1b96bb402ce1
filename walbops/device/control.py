"""The device's control socket: wdevc's operations as JSON lines over a Unix socket.

Request: one JSON object per line, ``{"op": NAME, ...arguments}``. Reply: one line,
``{"ok": true, ...result}`` or ``{"ok": false, "error": MESSAGE}``. A connection may
carry many requests. ``wait_permanent`` blocks until new permanent logs exist (or its
timeout), so the storage agent never polls in a tight loop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import OperationError, UsageError, WalbopsError
from ..net import LISTEN_PATTERN
from .registry import DevicePaths, check_name

if TYPE_CHECKING:
    from .core import WalbDevice

log = logging.getLogger("walbops.device.control")

MAX_REQUEST = 64 << 10  # [bytes] a request line longer than this is refused
MAX_WAIT = 3600.0  # [s] the longest wait_permanent a client may ask for
METRICS_LISTEN = re.compile(LISTEN_PATTERN)


def _int(request: dict[str, Any], key: str, minimum: int = 0) -> int:
    value = request.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UsageError(f"{key!r} must be an integer >= {minimum}")
    return value


def _number(request: dict[str, Any], key: str, default: float | None = None) -> float | None:
    value = request.get(key, default)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise UsageError(f"{key!r} must be a number >= 0")
    return float(value)


class Controller:
    """Maps control requests onto a WalbDevice (the sans-socket part)."""

    def __init__(self, device: WalbDevice, status: Callable[[], dict[str, Any]], stop: Callable[[bool], None],
                 set_metrics_listen: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.status = status
        self.stop = stop
        self.set_metrics_listen = set_metrics_listen

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) and op.isidentifier() else None
        if handler is None:
            raise UsageError(f"unknown operation {op!r}")
        result: dict[str, Any] = handler(request)
        return result

    def op_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def op_lsids(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.device.lsids().as_dict()

    def op_set_oldest_lsid(self, request: dict[str, Any]) -> dict[str, Any]:
        self.device.set_oldest_lsid(_int(request, "lsid"))
        return self.device.lsids().as_dict()

    def op_log_usage(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"usage_pb": self.device.log_usage(), "capacity_pb": self.device.log_capacity(),
                "pbs": self.device.pbs}

    def op_is_overflow(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"overflow": self.device.overflow}

    def op_reset_wal(self, request: dict[str, Any]) -> dict[str, Any]:
        self.device.reset_wal()
        return {"uuid": self.device.super.uuid.hex(), **self.device.lsids().as_dict()}

    def op_freeze(self, request: dict[str, Any]) -> dict[str, Any]:
        self.device.freeze(_number(request, "timeout"))
        return {"frozen": True}

    def op_melt(self, request: dict[str, Any]) -> dict[str, Any]:
        self.device.melt()
        return {"frozen": False}

    def op_is_frozen(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"frozen": self.device.frozen}

    def op_resize(self, request: dict[str, Any]) -> dict[str, Any]:
        self.device.resize(_int(request, "size_lb"))
        return {"size_lb": self.device.size_lb}

    def op_get_checkpoint_interval(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"interval_ms": self.device.checkpoint_interval_ms}

    def op_set_checkpoint_interval(self, request: dict[str, Any]) -> dict[str, Any]:
        self.device.set_checkpoint_interval(_int(request, "interval_ms"))
        return {"interval_ms": self.device.checkpoint_interval_ms}

    def op_force_checkpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        self.device.force_checkpoint()
        return self.device.lsids().as_dict()

    def op_flush(self, request: dict[str, Any]) -> dict[str, Any]:
        self.device.flush()
        return self.device.lsids().as_dict()

    def op_wait_permanent(self, request: dict[str, Any]) -> dict[str, Any]:
        timeout = min(_number(request, "timeout", 10.0) or 0.0, MAX_WAIT)
        return self.device.wait_permanent(_int(request, "after"), timeout).as_dict()

    def op_set_metrics_listen(self, request: dict[str, Any]) -> dict[str, Any]:
        listen = request.get("listen", "")
        if not isinstance(listen, str) or (listen and not METRICS_LISTEN.fullmatch(listen)):
            raise UsageError("'listen' must be HOST:PORT, or empty for no metrics")
        if self.set_metrics_listen is None:
            raise OperationError("this device serves no metrics")
        self.set_metrics_listen(listen)
        return {"metrics_listen": listen}

    def op_stop(self, request: dict[str, Any]) -> dict[str, Any]:
        self.stop(bool(request.get("force", False)))
        return {"stopping": True}


class _Handler(socketserver.StreamRequestHandler):
    server: "ControlServer"

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(MAX_REQUEST + 1)
            if not line:
                return
            reply = self._answer(line)
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()

    def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST:
            return {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise UsageError("a request is a JSON object")
            return {"ok": True, **self.server.controller.handle(request)}
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
        except WalbopsError as exc:
            return {"ok": False, "error": str(exc)}
        except OSError as exc:
            log.error("control request failed: %s", exc)
            return {"ok": False, "error": f"{exc.strerror or exc}"}


class ControlServer(socketserver.ThreadingUnixStreamServer):
    """Serves a Controller on the device's control socket, in background threads."""

    daemon_threads = True

    def __init__(self, path: str, controller: Controller) -> None:
        if os.path.exists(path):
            os.unlink(path)
        self.controller = controller
        super().__init__(path, _Handler)
        os.chmod(path, 0o600)
        self.thread = threading.Thread(target=self.serve_forever, name="walb-control", daemon=True)

    def start(self) -> None:
        self.thread.start()


class DeviceClient:
    """A blocking client of one device's control socket (the storage agent uses it)."""

    def __init__(self, name: str, timeout: float = 30.0) -> None:
        self.name = check_name(name)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader: Any = None

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(DevicePaths(self.name).control)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise OperationError(f"walb device {self.name!r} is not running") from None
        self._sock = sock
        self._reader = sock.makefile("rb")
        return sock

    def call(self, op: str, io_timeout: float | None = None, **arguments: Any) -> dict[str, Any]:
        """Send one request; returns the result or raises OperationError with the device's message.

        Args:
            op: the operation.
            io_timeout: how long to wait for the reply [s] (default: the client's timeout).
            arguments: the operation's arguments.
        """
        sock = self._sock
        if sock is None:
            sock = self._connect()
        sock.settimeout(io_timeout if io_timeout is not None else self.timeout)
        try:
            sock.sendall(json.dumps({"op": op, **arguments}).encode() + b"\n")
            line = self._reader.readline()
        except OSError as exc:
            self.close()
            raise OperationError(f"walb device {self.name!r}: control connection failed: {exc}") from None
        if not line:
            self.close()
            raise OperationError(f"walb device {self.name!r} closed the control connection")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok", False):
            raise OperationError(f"{self.name}: {reply.get('error', 'failed')}")
        return reply

    def wait_permanent(self, after: int, timeout: float) -> dict[str, Any]:
        """Block until logs at or past ``after`` are permanent, or ``timeout`` seconds pass."""
        return self.call("wait_permanent", io_timeout=timeout + self.timeout, after=after, timeout=timeout)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "DeviceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
