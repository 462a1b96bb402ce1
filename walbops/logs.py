"""Log set-up for the long-running processes, and the escaping of text that came from elsewhere.

A peer's error text, a file name or a volume's metadata can hold newlines and terminal escape
codes. Logged as they are, a newline forges a log line and an escape code repaints the
operator's terminal; so every log message is made one printable line here, in the formatter,
rather than at each call site that might pass a peer's words. Tracebacks keep their lines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s%(rid)s"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

# The request id of the operator's command being served (a ``walbops`` invocation sets a new
# one; an agent takes it from the request it serves). Requests carry it to the agents they
# reach, log lines name it: one id follows a command through every process it touches.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("walbops_request_id", default=None)


def new_request_id() -> str:
    """A fresh request id: 16 hex digits."""
    return secrets.token_hex(8)

# C0 controls, DEL and the C1 controls (8-bit CSI is 0x9b); tab stays readable as it is.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with every control character written as an escape: one line, no terminal codes."""
    return _CONTROL.sub(lambda match: _NAMED.get(match[0], f"\\x{ord(match[0]):02x}"), text)


class OneLineFormatter(logging.Formatter):
    """Formats the message escaped by :func:`printable`, then `` rid=ID`` when a request is being
    served; the traceback, our own text, is kept."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message)
        rid = request_id_var.get()
        record.rid = f" rid={rid}" if rid else ""
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, rid when a request
    is being served, exception when there is one (json escapes every control character)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        rid = request_id_var.get()
        if rid:
            entry["rid"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def configure(destination: str | None, debug: bool = False, level: str = "info", log_format: str = "text") -> None:
    """Log to the file ``destination`` (stderr when None or ``-``: the journal under systemd) at
    ``level`` (``debug`` forces debug), as text lines (:class:`OneLineFormatter`) or JSON lines."""
    if level not in LEVELS or log_format not in FORMATS:
        raise ValueError(f"log level one of {LEVELS}, format one of {FORMATS}")
    handler: logging.Handler
    if destination in (None, "-"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        # A log file in a base dir that does not exist yet (the agent makes it when it starts).
        os.makedirs(os.path.dirname(os.path.abspath(str(destination))), exist_ok=True)
        handler = logging.FileHandler(str(destination))
    handler.setFormatter(JsonFormatter() if log_format == "json" else OneLineFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else getattr(logging, level.upper()))


class RateLimit:
    """At most ``burst`` events per ``period`` seconds pass; the rest are counted, not logged.

    For messages a stranger can cause at will (refused handshakes): the log stays readable and
    the disk does not fill. :meth:`allow` returns how many were suppressed before this one (to be
    said in the line that passes), or None when this one is suppressed too.
    """

    def __init__(self, burst: int = 10, period: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.period = period  # [s]
        self._monotonic = monotonic
        self._window_start = -period
        self._passed = 0
        self.suppressed = 0

    def allow(self) -> int | None:
        now = self._monotonic()
        if now - self._window_start >= self.period:
            self._window_start, self._passed = now, 0
        if self._passed >= self.burst:
            self.suppressed += 1
            return None
        self._passed += 1
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed
