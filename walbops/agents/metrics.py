"""Prometheus metrics of an agent and of a walb device daemon (docs/operations.md lists every
one), and the HTTP endpoint that serves them.

Counters of events (transfers, refusals, handshake failures, errors) are kept as they happen;
everything about volumes is read when Prometheus scrapes, from the state the agent keeps
anyway, so an agent pays nothing between scrapes. The endpoint is a small asyncio HTTP/1.1
server on the agent's own event loop (``metrics_listen``): a scrape reads the same objects the
agent's commands do, never from another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__
from ..errors import OperationError

logger = logging.getLogger("walbops.metrics")

MAX_REQUEST_HEAD = 8192  # [bytes] a scrape's request line and headers are a few hundred bytes
REQUEST_TIMEOUT = 10.0  # [s] to read a request head and write the answer


class AgentMetrics:
    """The counters and gauges of one agent process, in a registry of its own."""

    def __init__(self, host_type: str, agent_id: str) -> None:
        self.registry = build_registry(host_type, agent_id)
        Gauge("walbops_agent_start_time_seconds", "When the agent started (Unix time)",
              registry=self.registry).set(time.time())
        self.connections = Counter("walbops_connections", "Connections that completed the handshake",
                                   registry=self.registry)
        self.handshake_failures = Counter("walbops_handshake_failures", "Connections refused before or during "
                                          "the handshake, by reason", ["reason"], registry=self.registry)
        self.refusals = Counter("walbops_refusals", "Requests refused, by command and reason",
                                ["command", "reason"], registry=self.registry)
        self.errors = Counter("walbops_errors", "Background work and requests that failed unexpectedly, by kind",
                              ["kind"], registry=self.registry)
        self.transfer_bytes = Counter("walbops_transfer_bytes", "Bytes of transfers on the wire (frames), by "
                                      "kind and direction", ["kind", "direction"], registry=self.registry)
        self.transfer_seconds = Summary("walbops_transfer_duration_seconds", "Duration of transfers, by kind "
                                        "and direction", ["kind", "direction"], registry=self.registry)
        self.transfer_failures = Counter("walbops_transfer_failures", "Transfers that failed, by kind and "
                                         "direction", ["kind", "direction"], registry=self.registry)

    def add_collector(self, collect: Callable[[Families], None]) -> None:
        """Have ``collect(families)`` add gauges at every scrape (the volumes' state)."""
        self.registry.register(ScrapeCollector(collect))

    @contextlib.contextmanager
    def transfer(self, kind: str, direction: str, wire_bytes: Callable[[], int]) -> Iterator[None]:
        """Count one transfer: its bytes (``wire_bytes()`` after minus before), its duration, and
        whether it failed."""
        started, before = time.monotonic(), wire_bytes()
        try:
            yield
        except BaseException:
            self.transfer_failures.labels(kind, direction).inc()
            raise
        finally:
            self.transfer_bytes.labels(kind, direction).inc(max(0, wire_bytes() - before))
            self.transfer_seconds.labels(kind, direction).observe(time.monotonic() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def build_registry(host_type: str, process_id: str) -> CollectorRegistry:
    """A registry of one process, with its ``walbops_build_info``."""
    registry = CollectorRegistry(auto_describe=True)
    build = Gauge("walbops_build_info", "1, labelled with the walbops version, the process's kind (storage, "
                  "proxy, archive, device) and id", ["version", "host_type", "id"], registry=registry)
    build.labels(__version__, host_type, process_id).set(1)
    return registry


class Families:
    """The gauges and counters of one scrape, by name: every sample of a name shares its help and
    label names."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def gauge(self, name: str, help_text: str, labels: dict[str, str], value: float) -> None:
        self._family(GaugeMetricFamily, name, help_text, labels).add_metric(list(labels.values()), value)

    def counter(self, name: str, help_text: str, labels: dict[str, str], value: float) -> None:
        """A counter kept elsewhere (``name`` without ``_total``, which the exposition adds)."""
        self._family(CounterMetricFamily, name, help_text, labels).add_metric(list(labels.values()), value)

    def _family(self, kind: type[GaugeMetricFamily | CounterMetricFamily], name: str, help_text: str,
                labels: dict[str, str]) -> GaugeMetricFamily | CounterMetricFamily:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = kind(name, help_text, labels=list(labels))
        return family

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class ScrapeCollector:
    """Calls ``collect(families)`` at every scrape."""

    def __init__(self, collect: Callable[[Families], None]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        families = Families()
        try:
            self._collect(families)
        except Exception:
            # A scrape must answer: what failed shows as a missing series, and in the log.
            logger.exception("collecting volume metrics failed")
        return iter(families)

    def describe(self) -> list[Metric]:
        return []  # the names depend on the volumes present: nothing to check at registration


async def serve_metrics(host: str, port: int, render: Callable[[], Awaitable[bytes]]) -> asyncio.Server:
    """Serve ``GET /metrics`` (``render()``'s text exposition) on ``host:port``; 404 for other paths.

    One request per connection (``Connection: close``), a bounded request head, and a deadline
    for the whole exchange, so a slow or hostile client holds nothing for long.
    """
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                status, body, content_type = await _answer(head, render)
                writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                             % (status, content_type, len(body)) + body)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that went away or sent junk gets nothing more
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    return await asyncio.start_server(on_connect, host, port, limit=MAX_REQUEST_HEAD)


async def _answer(head: bytes, render: Callable[[], Awaitable[bytes]]) -> tuple[bytes, bytes, bytes]:
    """(status, body, content type) for a request head."""
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) != 3 or not words[2].startswith(b"HTTP/"):
        return b"400 Bad Request", b"bad request\n", b"text/plain"
    method, target = words[0], words[1].split(b"?", 1)[0]
    if method != b"GET":
        return b"405 Method Not Allowed", b"only GET\n", b"text/plain"
    if target != b"/metrics":
        return b"404 Not Found", b"metrics are at /metrics\n", b"text/plain"
    return b"200 OK", await render(), CONTENT_TYPE_LATEST.encode()


class MetricsThread:
    """``serve_metrics`` for a threaded process (the walb device daemon): an event loop in a thread
    of its own; ``render()`` runs on it, so it reads the process's state from that thread."""

    def __init__(self, render: Callable[[], bytes], name: str = "metrics") -> None:
        self._render = render
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self.listen = ""

    def start(self, listen: str) -> None:
        """Serve on ``listen`` (HOST:PORT), or nowhere when it is empty; a running server is closed first.

        Raises:
            OperationError: the address cannot be bound (in use, not local).
        """
        self.stop()
        if not listen:
            return
        host, _, port = listen.rpartition(":")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
        thread.start()

        async def render() -> bytes:
            return self._render()
        self._loop, self._thread = loop, thread
        try:
            self._server = asyncio.run_coroutine_threadsafe(serve_metrics(host, int(port), render),
                                                            loop).result(REQUEST_TIMEOUT)
        except (OSError, ValueError) as exc:
            self.stop()
            raise OperationError(f"metrics at {listen}: {exc}") from None
        self.listen = listen

    def stop(self) -> None:
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None:
            return
        if server is not None:
            async def close() -> None:
                server.close()
                await server.wait_closed()
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), loop).result(REQUEST_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(REQUEST_TIMEOUT)
        loop.close()
        self._loop = self._thread = self._server = None
        self.listen = ""


def observed(state: Any) -> float:
    """1.0 or 0.0 for a flag, as Prometheus wants booleans."""
    return 1.0 if state else 0.0
