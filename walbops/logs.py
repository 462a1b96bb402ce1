"""Log set-up for the long-running processes, and the escaping of text that came from elsewhere.

A peer's error text, a file name or a volume's metadata can hold newlines and terminal escape
codes. Logged as they are, a newline forges a log line and an escape code repaints the
operator's terminal; so every log message is made one printable line here, in the formatter,
rather than at each call site that might pass a peer's words. Tracebacks keep their lines.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

# C0 controls, DEL and the C1 controls (8-bit CSI is 0x9b); tab stays readable as it is.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with every control character written as an escape: one line, no terminal codes."""
    return _CONTROL.sub(lambda match: _NAMED.get(match[0], f"\\x{ord(match[0]):02x}"), text)


class OneLineFormatter(logging.Formatter):
    """Formats the message escaped by :func:`printable`; the traceback, our own text, is kept."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message)
        return super().formatMessage(record)


def configure(destination: str | None, debug: bool = False) -> None:
    """Log to the file ``destination`` (stderr when None or ``-``) through :class:`OneLineFormatter`."""
    handler: logging.Handler
    if destination in (None, "-"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        # A log file in a base dir that does not exist yet (the agent makes it when it starts).
        os.makedirs(os.path.dirname(os.path.abspath(str(destination))), exist_ok=True)
        handler = logging.FileHandler(str(destination))
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


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
