"""The walb device daemon's Prometheus metrics (docs/operations.md): its IO counters, its log ring
and its lsids, read at every scrape from the device, labelled with the device's name.

The daemon serves them itself (``--metrics-listen``, or ``set_metrics_listen`` on the control
socket), so a host's IO and log pressure are visible even while its storage agent is down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest

from ..agents.metrics import Families, MetricsThread, ScrapeCollector, build_registry, observed
from .core import LB, WalbDevice

# (metric name without _total, IoCounters field, help)
IO_COUNTERS = (
    ("walbops_device_reads", "reads", "Reads served"),
    ("walbops_device_read_bytes", "read_bytes", "Bytes read"),
    ("walbops_device_writes", "writes", "Writes logged and acknowledged"),
    ("walbops_device_write_bytes", "write_bytes", "Bytes written"),
    ("walbops_device_discards", "discards", "Discards logged"),
    ("walbops_device_discard_bytes", "discard_bytes", "Bytes discarded"),
    ("walbops_device_logpacks", "logpacks", "Log packs written to the ring (one holds the writes of a group "
     "commit)"),
    ("walbops_device_log_syncs", "log_syncs", "Syncs of the log device that made logs permanent"),
    ("walbops_device_refused_writes", "refused_writes", "Writes refused because the ring was full "
     "(overflow policy error)"),
)


class DeviceMetrics:
    """The metrics endpoint of one device daemon."""

    def __init__(self, device: WalbDevice, status: Callable[[], dict[str, Any]]) -> None:
        self.device = device
        self.status = status
        self.registry = build_registry("device", device.config.name)
        self.registry.register(ScrapeCollector(self.collect))
        self.server = MetricsThread(lambda: generate_latest(self.registry), name=f"walb-{device.config.name}-metrics")

    def collect(self, families: Families) -> None:
        status = self.status()
        labels = {"device": str(status["name"])}
        pbs = int(status["pbs"])
        families.gauge("walbops_device_size_bytes", "Size of the device", labels, status["size_lb"] * LB)
        families.gauge("walbops_device_log_usage_bytes", "Logs in the ring not yet released (oldest to latest "
                       "lsid)", labels, status["log_usage_pb"] * pbs)
        families.gauge("walbops_device_log_capacity_bytes", "Size of the log ring", labels,
                       status["log_capacity_pb"] * pbs)
        families.gauge("walbops_device_overflow", "1 if the ring overflowed (logs lost until reset-wal)", labels,
                       observed(status["overflow"]))
        families.gauge("walbops_device_frozen", "1 while writes are held (freeze)", labels, observed(status["frozen"]))
        for name, lsid in status["lsids"].items():
            families.gauge("walbops_device_lsid", "The device's lsids [physical blocks]", {**labels, "lsid": name},
                           lsid)
        counters = self.device.counters()
        for metric, field, help_text in IO_COUNTERS:
            families.counter(metric, help_text, labels, getattr(counters, field))

    def listen(self, address: str) -> None:
        """Serve on HOST:PORT from now on (empty: nowhere). Raises OperationError if it cannot bind."""
        self.server.start(address)

    def close(self) -> None:
        self.server.stop()
