"""Volume state machines with WalB's transactions, and action counters.

A transition always goes steady → transient → steady, and only along the pairs a
machine declares. ``transaction(from, via)`` moves to the transient state; leaving the
``with`` block without ``commit(to)`` rolls back to where it started, so any failure
restores the previous steady state (WalB's StateMachineTransaction).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ..errors import BadField, OperationError

Transition = tuple[str, str, str]  # (from, via, to)


class Refused(OperationError):
    """A request an agent turns down with one of WalB's reason strings (``stopped``, ``too-old-diff`` …)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateMachine:
    """The state of one volume on one agent.

    Args:
        transitions: every allowed (from, via, to).
        state: the starting state.
        on_steady: called with each steady state committed (to persist it).
    """

    def __init__(self, transitions: Iterable[Transition], state: str,
                 on_steady: Callable[[str], None] | None = None) -> None:
        self.transitions = tuple(transitions)
        self._edges = {(source, via) for source, via, _ in self.transitions}
        self._ends = {(via, target) for _, via, target in self.transitions}
        self.steady_states = {source for source, _, _ in self.transitions} | {t for _, _, t in self.transitions}
        self.transient_states = {via for _, via, _ in self.transitions}
        known = self.steady_states | self.transient_states
        if state not in known:
            raise BadField(f"state {state!r} is none of {', '.join(sorted(known))}")
        self.state = state
        self.on_steady = on_steady

    @property
    def is_steady(self) -> bool:
        return self.state in self.steady_states and self.state not in self.transient_states

    def transaction(self, sources: str | Iterable[str], via: str) -> "StateTransaction":
        """Enter transient state ``via`` from one of ``sources``.

        Raises:
            OperationError: the volume is in another state (the message says which).
        """
        allowed = {sources} if isinstance(sources, str) else set(sources)
        if self.state not in allowed or (self.state, via) not in self._edges:
            wanted = " or ".join(sorted(allowed))
            raise OperationError(f"bad state {self.state} (needs {wanted})")
        return StateTransaction(self, self.state, via)

    def _finish(self, via: str, target: str) -> None:
        if (via, target) not in self._ends:
            raise OperationError(f"no transition from {via} to {target}")
        self.state = target
        if self.on_steady is not None:
            self.on_steady(target)

    def force(self, state: str) -> None:
        """Set a state without a transition (loading persisted state, debugging)."""
        self.state = state


class StateTransaction:
    """A move through a transient state; rolls back unless committed."""

    def __init__(self, machine: StateMachine, source: str, via: str) -> None:
        self.machine = machine
        self.source = source
        self.via = via
        self.committed = False
        machine.state = via

    def commit(self, target: str) -> None:
        self.machine._finish(self.via, target)
        self.committed = True

    def __enter__(self) -> "StateTransaction":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if not self.committed and self.machine.state == self.via:
            self.machine.state = self.source  # roll back: nothing is persisted for transient states


@dataclass(frozen=True)
class ActionOutcome:
    """How the last run of an action on a volume ended (for ``--wait`` and ``get all-actions``)."""

    name: str
    started: float  # [s] unix time
    finished: float  # [s] unix time
    error: str | None = None  # None: it succeeded
    detail: dict[str, Any] = field(default_factory=dict)  # what it did (gids, bytes)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        # ``started`` is exact: a waiter compares it with the one the accepting answer gave.
        return {"action": self.name, "ok": self.ok, "error": self.error, "started": self.started,
                "finished": self.finished, **self.detail}


class ActionCounter:
    """Running background actions per name, when each last started, and how each last ended.

    Args:
        owner: what the actions belong to (a volume id), for refusals.
    """

    def __init__(self, owner: str = "") -> None:
        self.owner = owner
        self._running: Counter[str] = Counter()
        self.last_started: dict[str, float] = {}
        self.outcomes: dict[str, ActionOutcome] = {}

    def count(self, name: str) -> int:
        return self._running[name]

    def any_running(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if self._running[name]]

    def refuse_if_running(self, names: Iterable[str], what: str = "") -> None:
        """Refuse (reason ``busy``) when one of ``names`` runs; the message names it."""
        running = self.any_running(names)
        if running:
            doing = f"{what} refused: " if what else ""
            raise Refused("busy", f"{self.owner + ': ' if self.owner else ''}{doing}busy: "
                          f"{', '.join(running)} running")

    def begin(self, name: str) -> "_Action":
        """Count ``name`` as running now; the returned context ends it and records how it ended."""
        self._running[name] += 1
        self.last_started[name] = time.time()
        return _Action(self, name, self.last_started[name])

    def idle(self) -> bool:
        return not any(self._running.values())


class _Action:
    def __init__(self, counter: ActionCounter, name: str, started: float) -> None:
        self.counter = counter
        self.name = name
        self.started = started
        self.detail: dict[str, Any] = {}  # filled by the action: recorded with its outcome
        self._ended = False

    def __enter__(self) -> "_Action":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._ended:
            return
        self._ended = True
        self.counter._running[self.name] -= 1
        if isinstance(value, asyncio.CancelledError):
            error: str | None = "cancelled (the agent stopped)"
        else:
            error = None if value is None else (str(value) or type(value).__name__)
        self.counter.outcomes[self.name] = ActionOutcome(self.name, self.started, time.time(), error, self.detail)


# WalB's machines (walb.md §3): (from, via, to).
STORAGE_TRANSITIONS: tuple[Transition, ...] = (
    ("Clear", "InitVol", "SyncReady"),
    ("SyncReady", "ClearVol", "Clear"),
    ("SyncReady", "StartStandby", "Standby"),
    ("Standby", "StopStandby", "SyncReady"),
    ("SyncReady", "FullSync", "Stopped"),
    ("SyncReady", "HashSync", "Stopped"),
    ("Stopped", "Reset", "SyncReady"),
    ("Stopped", "StartTarget", "Target"),
    ("Target", "StopTarget", "Stopped"),
)

PROXY_TRANSITIONS: tuple[Transition, ...] = (
    ("Clear", "AddArchiveInfo", "Stopped"),
    ("Stopped", "AddArchiveInfo", "Stopped"),
    ("Stopped", "DeleteArchiveInfo", "Stopped"),
    ("Stopped", "DeleteArchiveInfo", "Clear"),
    ("Stopped", "ClearVol", "Clear"),
    ("Stopped", "Start", "Started"),
    ("Started", "Stop", "Stopped"),
    ("Started", "WaitForEmpty", "Stopped"),
    ("Started", "WlogRecv", "Started"),
)

ARCHIVE_TRANSITIONS: tuple[Transition, ...] = (
    ("Clear", "InitVol", "SyncReady"),
    ("SyncReady", "ClearVol", "Clear"),
    ("Stopped", "ClearVol", "Clear"),
    ("SyncReady", "FullSync", "Archived"),
    ("SyncReady", "Resync", "Archived"),
    ("Archived", "HashSync", "Archived"),
    ("Archived", "WdiffRecv", "Archived"),
    ("Archived", "ReplSyncAsServer", "Archived"),
    ("Archived", "Stop", "Stopped"),
    ("Stopped", "Start", "Archived"),
    ("Stopped", "ResetVol", "SyncReady"),
    ("SyncReady", "ResetVol", "SyncReady"),
)

# Archive states in which the volume serves restores and accepts diffs (WalB's aActive).
ARCHIVE_ACTIVE = frozenset({"Archived", "HashSync", "WdiffRecv", "ReplSyncAsServer"})
