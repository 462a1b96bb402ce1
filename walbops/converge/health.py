"""How healthy a layout's agents and volumes are, judged from ``walbops info``'s facts
(``walbops check``, ``walbops info --fail-on``, ``walb_info fail_on``).

The levels are Nagios's: OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3 (docs/operations.md):

- CRITICAL: an agent that does not answer; a broken volume; a walb device that does not answer;
  a log that overflowed or is fuller than the critical threshold; writes no proxy has
  acknowledged for longer than the critical RPO.
- WARNING: a log fuller than the warning threshold; unacknowledged writes older than the warning
  RPO; a proxy failing to send to an archive; a volume outside its working states (a storage not
  Target or Standby, a proxy not Started, an archive not Archived or receiving).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Level(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Thresholds:
    rpo_warning: float = 3600.0  # [s] age of the oldest write no proxy has acknowledged
    rpo_critical: float = 86400.0  # [s]
    log_warning: float = 80.0  # [%] of the log ring in use
    log_critical: float = 95.0  # [%]


# The states a volume works in; another one is a warning (an operator's step, or one running).
WORKING_STATES = {
    "storage": {"Target", "Standby"},
    "proxy": {"Started"},
    "archive": {"Archived", "WdiffRecv", "HashSync", "ReplSyncAsServer"},
}


@dataclass
class Health:
    level: Level = Level.OK
    problems: list[tuple[Level, str]] = field(default_factory=list)
    perfdata: list[str] = field(default_factory=list)

    def add(self, level: Level, problem: str) -> None:
        self.problems.append((level, problem))
        self.level = max(self.level, level)

    def summary(self) -> str:
        """One line: the level and the worst problems first, or what was checked."""
        worst = sorted(self.problems, key=lambda item: -item[0])
        return "; ".join(problem for _, problem in worst)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.level.name, "code": int(self.level),
                "problems": [{"level": level.name, "problem": problem} for level, problem in self.problems]}


def assess(info: dict[str, Any], limits: Thresholds = Thresholds()) -> Health:
    """The health of what ``cluster_info`` reported."""
    health = Health()
    down = 0
    for name, server in sorted(info["servers"].items()):
        if not server.get("reachable"):
            down += 1
            health.add(Level.CRITICAL, f"{server['role']} {name} does not answer: {server.get('error')}")
            continue
        for vol, volume in sorted(server["volumes"].items()):
            _assess_volume(health, limits, server["role"], name, vol, volume)
    health.perfdata.insert(0, f"agents_down={down};;1;0;{len(info['servers'])}")
    return health


def _assess_volume(health: Health, limits: Thresholds, role: str, server: str, vol: str,
                   volume: dict[str, Any]) -> None:
    where = f"{vol} on {server}"
    if "error" in volume:
        health.add(Level.CRITICAL, f"{where} is broken: {volume['error']}")
        return
    if volume["state"] not in WORKING_STATES[role]:
        health.add(Level.WARNING, f"{where} is {volume['state']}")
    if role == "storage":
        if "device_error" in volume:
            health.add(Level.CRITICAL, f"{where}: the walb device does not answer: {volume['device_error']}")
            return
        if volume.get("overflow"):
            health.add(Level.CRITICAL, f"{where}: the log overflowed (recover with a hash backup)")
        usage = volume.get("log_usage_percent")
        if usage is not None:
            health.perfdata.append(f"log_usage_{server}_{vol}={usage}%;{limits.log_warning:g};{limits.log_critical:g};0;100")
            _judge(health, usage, limits.log_warning, limits.log_critical, f"{where}: log {usage}% full")
        rpo = volume.get("rpo_seconds")
        if rpo is not None:
            health.perfdata.append(f"rpo_{server}_{vol}={rpo:g}s;{limits.rpo_warning:g};{limits.rpo_critical:g};0")
            _judge(health, rpo, limits.rpo_warning, limits.rpo_critical,
                   f"{where}: writes unacknowledged for {rpo:.0f} s")
    elif role == "proxy":
        for archive, error in sorted((volume.get("send_error") or {}).items()):
            if error:
                health.add(Level.WARNING, f"{where}: cannot send to {archive}: {error}")
    elif volume.get("rpo_seconds") is not None:
        # The archive's view: the newest restorable point's age (it also grows on an idle
        # volume, so it is reported, not judged).
        health.perfdata.append(f"archive_rpo_{server}_{vol}={volume['rpo_seconds']:g}s;;;0")


def _judge(health: Health, value: float, warning: float, critical: float, problem: str) -> None:
    if value >= critical:
        health.add(Level.CRITICAL, problem)
    elif value >= warning:
        health.add(Level.WARNING, problem)
