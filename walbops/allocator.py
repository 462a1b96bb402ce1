"""Tuning of glibc's allocator for a process that streams large buffers.

glibc serves allocations above its mmap threshold (128 KiB, raised dynamically) with a
fresh mmap and returns them with munmap, so every 64-256 KiB IO buffer costs page
faults: measured here, a 1 GiB wlog → wdiff conversion spent 3.3 s of 4.5 s in the
kernel. Keeping such buffers on the heap lets freed ones be reused.

Each thread that allocates (asyncio's to_thread pool, lz4's workers) gets a heap arena of its own
by default, up to eight per core, and each arena keeps up to TRIM_THRESHOLD of freed memory: in a
60-minute soak an archive agent's resident memory climbed in steps to 240 MB as one thread after
another reached a new peak, still rising at the end. With two arenas the same agents held
100-120 MB after 20 minutes (scripts/chaos --soak, docs/operations.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 64 << 20  # [bytes] only buffers above this get their own mapping
TRIM_THRESHOLD = 64 << 20  # [bytes] free heap kept for reuse before returning it to the kernel
ARENA_MAX = 2  # heap arenas the threads share


def tune_for_streaming() -> bool:
    """Apply the thresholds and the arena limit (before any thread starts); False where the C
    library has no mallopt (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all([mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                mallopt(M_ARENA_MAX, ARENA_MAX)])
