"""Where the walbops.walbops.walbops role installs walbops from (walbops_install_from), and its check
that a host runs the collection's version. On localhost, into virtualenvs of the test's own; the
wheel source is exercised by the netns fleet (test_playbooks_netns.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from playbooks import run_playbook

VERSION = yaml.safe_load((Path(__file__).resolve().parents[2] / "ansible" / "roles" / "walbops" / "vars" /
                          "main.yml").read_text())["walbops_collection_version"]


def install_playbook(directory: Path, tasks: tuple[str, ...] = ("install", "version"), **role_vars: object) -> Path:
    """A playbook that runs the role's install and version tasks on localhost."""
    play = [{
        "name": "Install walbops as the role does",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": role_vars,
        "tasks": [{"name": f"The role's {name} tasks",
                   "ansible.builtin.include_role": {"name": "walbops.walbops.walbops", "tasks_from": name}}
                  for name in tasks],
    }]
    path = directory / "install.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def inventory(directory: Path) -> Path:
    path = directory / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}}}}))
    return path


def test_index_installs_the_collections_version_once(tmp_path: Path, wheelhouse: Path) -> None:
    # The package index is a directory of wheels (as on a fleet without PyPI), walbops pinned to
    # the collection's version.
    venv = tmp_path / "venv"
    playbook = install_playbook(tmp_path, walbops_install_from="index", walbops_venv=str(venv),
                                walbops_data_dir=str(tmp_path / "data"),
                                walbops_pip_extra_args=f"--no-index --find-links {wheelhouse}")
    first = run_playbook(str(playbook), inventory(tmp_path))
    assert first.returncode == 0, first.describe()
    assert first.changed()["localhost"] >= 1
    installed = subprocess.run([str(venv / "bin" / "walbops"), "--version"], capture_output=True, text=True,
                               check=True)
    assert installed.stdout.split()[-1] == VERSION
    again = run_playbook(str(playbook), inventory(tmp_path))
    assert again.returncode == 0 and again.changed() == {"localhost": 0}, again.describe()


def test_another_version_is_named_and_refused(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "walbops"
    fake.write_text("#!/bin/sh\necho walbops 0.0.9\n")
    fake.chmod(0o755)
    playbook = install_playbook(tmp_path, ("version",), walbops_venv=str(venv))
    run = run_playbook(str(playbook), inventory(tmp_path))
    assert run.returncode != 0
    assert f"is version 0.0.9, but the collection walbops.walbops {VERSION} drives walbops {VERSION}" in run.output


def test_an_unknown_source_is_refused_by_name(tmp_path: Path) -> None:
    playbook = install_playbook(tmp_path, walbops_install_from="wheel", walbops_venv=str(tmp_path / "venv"))
    run = run_playbook(str(playbook), inventory(tmp_path))
    assert run.returncode != 0
    assert "walbops_install_from must be auto, path" in run.output and "walbops_wheel=" in run.output
