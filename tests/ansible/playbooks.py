"""Run ansible-playbook and read its recap: from the repository root (its ansible.cfg finds the
checkout's view of the collection), or as a user does, from a directory of one's own with the
collection installed by ansible-galaxy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import collection
from helpers import ROOT

ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Project:
    """Where ansible-playbook runs, and how it finds the collection walbops.walbops."""

    directory: Path
    collections_path: Path | None = None  # None: the checkout, through its ansible.cfg

    def playbook(self, name: str) -> str:
        """A playbook by its absolute path or by its file name in the directory, else the
        collection's: by path in the checkout, by FQCN (walbops.walbops.site) where installed."""
        if Path(name).is_absolute() or ((self.directory / name).is_file() and self.collections_path is not None):
            return name
        if self.collections_path is None:
            return f"ansible/playbooks/{name}"
        return f"walbops.walbops.{name.removesuffix('.yml')}"

    def env(self) -> dict[str, str]:
        return dict(os.environ) if self.collections_path is None else collection.user_env(self.collections_path)


CHECKOUT = Project(ROOT)


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
                 timeout: float = 1200, project: Project = CHECKOUT) -> PlaybookRun:
    """``ansible-playbook -i INVENTORY PLAYBOOK ARGS`` in ``project``; the output and the recap."""
    command = [ANSIBLE_PLAYBOOK, "-i", str(inventory), project.playbook(playbook), *args]
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    env = {**project.env(), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1",
           "ANSIBLE_LOCAL_TEMP": str(Path(str(inventory)).parent / ".ansible-tmp")}
    result = subprocess.run(command, cwd=project.directory, env=env, capture_output=True, text=True,
                            timeout=timeout)
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
