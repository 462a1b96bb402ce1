"""Crash points: places where a fault-injection test may make this process die as a power cut would.

A process started with ``WALBOPS_CRASH_AT=NAME#N`` SIGKILLs itself the N-th time it reaches
crash point ``NAME`` (``#N`` left out: the first time). Nothing is flushed, no handler runs:
what is on disk then is what a crash at that moment leaves, and the tests check that a
restart finishes or undoes the work. Unset, a crash point costs one comparison.

The points (docs/agents.md lists them with what each interrupts):

* ``apply:verified`` (diffs verified, nothing recorded), ``apply:state-saved`` (the base is
  recorded as applying), ``apply:io`` (before each IO written into the base), ``apply:written``
  (base written and synced), ``apply:base-saved`` (the new base state recorded);
* ``merge:written`` (output synced, not yet named), ``merge:renamed`` (output named, inputs kept);
* ``diff:removed`` (after each diff file deleted by an apply, a merge or gc-diff);
* ``snapshot-flag:renamed`` (after each file renamed by disable-snapshot / enable-snapshot).
"""

from __future__ import annotations

import os
import signal

from .errors import UsageError

CRASH_ENV = "WALBOPS_CRASH_AT"


def _armed(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    name, _, count = text.partition("#")
    if not name or (count and not count.isdigit()) or count == "0":
        raise UsageError(f"{CRASH_ENV}={text!r}: expected NAME or NAME#N with N >= 1")
    return name, int(count or 1)


_ARMED = _armed(os.environ.get(CRASH_ENV))
_passed = 0


def crash_point(name: str) -> None:
    """Die here (SIGKILL) if this is the armed point and its count is reached."""
    global _passed
    if _ARMED is None or _ARMED[0] != name:
        return
    _passed += 1
    if _passed >= _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
