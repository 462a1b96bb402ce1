"""Desired-state operations behind ``walbops ensure``: the logic of the Ansible modules.

Each operation looks at what exists, decides what would change, and (unless asked only
to check) changes it, returning an :class:`Outcome`: whether anything changed, the state
before and after (Ansible's diff), and the values a caller needs (a device path, a gid).
Check mode answers the same question without touching anything, so its ``changed`` is a
true prediction. A refusal raises an error naming the object and the option that would
override it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AGENT_TIMEOUT = 30.0  # [s] for an agent to answer after its start, or to exit after SIGTERM


@dataclass(frozen=True)
class Outcome:
    """What an ensure operation did (or, in check mode, would do)."""

    changed: bool
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    values: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"changed": self.changed, **self.values}
        if self.before is not None or self.after is not None:
            result["diff"] = {"before": dict(self.before or {}), "after": dict(self.after or {})}
        return result
