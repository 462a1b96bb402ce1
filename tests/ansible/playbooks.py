"""Run ansible-playbook from the repository root (so ansible.cfg applies) and read its recap."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers import ROOT

ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)", re.MULTILINE)


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    output: str
    recap: dict[str, dict[str, int]]

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}

    def describe(self) -> str:
        return f"rc={self.returncode}\n{self.output[-20000:]}"


def run_playbook(playbook: str, inventory: Path | str, *args: str, extra_vars: dict | None = None,
                 timeout: float = 1200) -> PlaybookRun:
    """``ansible-playbook ansible/playbooks/PLAYBOOK -i INVENTORY ARGS``; the output and the recap."""
    command = [ANSIBLE_PLAYBOOK, "-i", str(inventory), f"ansible/playbooks/{playbook}", *args]
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1",
           "ANSIBLE_LOCAL_TEMP": str(Path(str(inventory)).parent / ".ansible-tmp")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    recap = {match["host"]: {key: int(match[key]) for key in ("ok", "changed", "unreachable", "failed")}
             for match in RECAP.finditer(result.stdout)}
    return PlaybookRun(result.returncode, output, recap)


def changed_tasks(output: str) -> list[str]:
    """The task headers under which a host reported ``changed`` (to explain a failed idempotence check)."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            found.append(f"{task} {line}")
    return found
