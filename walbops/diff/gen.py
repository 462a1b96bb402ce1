"""Random but valid wlogs for tests and benchmarks (walb-tools' wlog-gen)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import UsageError
from ..formats.ldev import (
    LOGICAL_BLOCK_SIZE,
    MAX_DISCARD_IO_LB,
    MAX_NORMAL_IO_LB,
    MAX_TOTAL_IO_SIZE_PB,
    LogpackBuilder,
    capacity_pb,
    check_pbs,
)
from ..formats.wlog import WlogHeader
from .io import Stats
from .logs import WlogWriter


@dataclass(frozen=True)
class GenConfig:
    """What kind of log to generate.

    ``ring_buffer_size`` makes the generator pad at the ring end as the driver does,
    so logs wrap around; ``begin_lsid`` near a multiple of it wraps early.
    """

    device_lb: int
    log_pb: int  # stop once this many PBs of log are written
    pbs: int = 512
    seed: int = 0
    min_io_lb: int = 1
    max_io_lb: int = 128  # [LB] 64 KiB
    max_pack_pb: int = 2048  # [PB] packs close once they hold this much data
    discard_pct: int = 10
    max_discard_lb: int = 256
    allzero_pct: int = 5
    compressible: bool = False  # half of each IO zeros, the rest random
    ring_buffer_size: int | None = None
    begin_lsid: int = 0
    uuid: bytes | None = None  # the device's uuid in the header (default: drawn from the seed)

    def check(self) -> None:
        check_pbs(self.pbs)
        step = self.pbs // LOGICAL_BLOCK_SIZE
        if self.device_lb < step:
            raise UsageError(f"device size {self.device_lb} LB is smaller than one physical block")
        if not 1 <= self.min_io_lb <= self.max_io_lb <= min(MAX_NORMAL_IO_LB, self.device_lb):
            raise UsageError(f"IO sizes must satisfy 1 <= min {self.min_io_lb} <= max {self.max_io_lb} <= "
                             f"min({MAX_NORMAL_IO_LB}, device {self.device_lb}) LB")
        if not 0 <= self.discard_pct <= 100 or not 0 <= self.allzero_pct <= 100:
            raise UsageError("percentages must be within 0..100")
        if not 1 <= self.max_discard_lb <= MAX_DISCARD_IO_LB:
            raise UsageError(f"max discard size must be 1..{MAX_DISCARD_IO_LB} LB")
        # An IO plus the padding it may need in front of it must fit one pack.
        if 2 * capacity_pb(self.pbs, self.max_io_lb) > MAX_TOTAL_IO_SIZE_PB:
            raise UsageError(f"max IO size {self.max_io_lb} LB is too large for one log pack at pbs {self.pbs}")
        if self.ring_buffer_size is not None and self.ring_buffer_size < 2 * capacity_pb(self.pbs, self.max_io_lb):
            raise UsageError("ring buffer is too small for the largest IO")


def generate_wlog(stream: BinaryIO, config: GenConfig) -> Stats:
    """Write a random valid wlog; returns what it holds."""
    config.check()
    rng = np.random.default_rng(config.seed)
    step = config.pbs // LOGICAL_BLOCK_SIZE  # IOs stay aligned to the physical block, as a block layer does
    salt = int(rng.integers(0, 1 << 32))
    uuid = rng.bytes(16)
    header = WlogHeader(config.pbs, salt, config.uuid or uuid, config.begin_lsid)
    writer = WlogWriter(stream, header)
    builder = LogpackBuilder(config.pbs, salt, config.begin_lsid, config.ring_buffer_size)
    stats = Stats()
    written_pb = 0
    pack_pb = 0

    def close_pack() -> None:
        nonlocal written_pb, pack_pb
        pack, data = builder.finish()
        writer.write_built(pack, data)
        stats.packs += 1
        stats.padding_pb += sum(rec.data_pb(config.pbs) for rec in pack.records if rec.is_padding)
        written_pb += 1 + pack.total_io_size
        pack_pb = 0

    while written_pb < config.log_pb:
        if rng.integers(0, 100) < config.discard_pct:
            size = min(int(rng.integers(1, max(1, config.max_discard_lb // step) + 1)) * step,
                       config.device_lb // step * step)
            address = int(rng.integers(0, (config.device_lb - size) // step + 1)) * step
            if not builder.fits(size, discard=True) and not builder.empty:
                close_pack()
            builder.add_discard(address, size)
            stats.discard_ios += 1
            stats.discard_lb += size
            continue
        size = int(rng.integers(max(1, config.min_io_lb // step), config.max_io_lb // step + 1)) * step
        address = int(rng.integers(0, (config.device_lb - size) // step + 1)) * step
        if rng.integers(0, 100) < config.allzero_pct:
            data = bytes(size * LOGICAL_BLOCK_SIZE)
        elif config.compressible:
            half = size * LOGICAL_BLOCK_SIZE // 2
            data = rng.bytes(half) + bytes(size * LOGICAL_BLOCK_SIZE - half)
        else:
            data = rng.bytes(size * LOGICAL_BLOCK_SIZE)
        if not builder.empty and (not builder.fits(size) or pack_pb >= config.max_pack_pb):
            close_pack()
        builder.add_normal(address, data)
        pack_pb += -(-size * LOGICAL_BLOCK_SIZE // config.pbs)
        stats.normal_ios += 1
        stats.normal_lb += size
    if not builder.empty:
        close_pack()
    writer.close()
    stats.extra["end_lsid"] = builder.lsid
    stats.extra["salt"] = salt
    return stats
