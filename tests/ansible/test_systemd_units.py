"""The systemd units the roles install, rendered by Ansible from the roles' templates and checked
with ``systemd-analyze verify`` (no systemd runs here: verify reads the files offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml
from helpers import ROOT
from playbooks import ANSIBLE_PLAYBOOK

TEMPLATES = ROOT / "ansible" / "roles" / "walbops" / "templates"


def render(out: Path) -> list[str]:
    """Every unit a storage + proxy + archive host with one volume gets; their file names."""
    playbook = out / "render.yml"
    agents = ["storage", "proxy", "archive", "worker"]
    playbook.write_text(yaml.safe_dump([{
        "name": "Render the walbops units", "hosts": "localhost", "gather_facts": False, "connection": "local",

        "vars": {"ansible_python_interpreter": sys.executable, "walbops_venv": str(ROOT / ".venv"),
                 "walbops_config_dir": "/etc/walbops",
                 "walbops_data_dir": "/var/lib/walbops", "walbops_device_run_dir": "/run/walbops",
                 "walbops_device_link_dir": "/dev/walbops", "walbops_environment": {},
                 "walbops_device_disk_dir": "/var/lib/walbops/disks", "walbops_device_log_dir": "/var/log/walbops",
                 "walbops_log_rotate": 8,
                 "walbops_device_volume": {"name": "vol0", "mount": "/srv/vol0", "fs": "ext4",
                                           "mount_options": "noatime"}},
        "tasks": [
            {"name": "Agents", "ansible.builtin.template": {"src": str(TEMPLATES / "walbops-agent.service.j2"),
                                                            "dest": f"{out}/walbops-{{{{ item }}}}.service"},
             "loop": agents, "vars": {"walbops_agent_role": "{{ item }}", "walbops_agent_devices": ["vol0"]}},
            {"name": "Devices", "ansible.builtin.template": {"src": str(TEMPLATES / "walbops-device@.service.j2"),
                                                             "dest": f"{out}/walbops-device@.service"}},
            {"name": "Mount", "ansible.builtin.template": {"src": str(TEMPLATES / "walbops-volume.mount.j2"),
                                                           "dest": f"{out}/srv-vol0.mount"}},
            {"name": "Logrotate", "ansible.builtin.template": {"src": str(TEMPLATES / "walbops.logrotate.j2"),
                                                               "dest": f"{out}/walbops.logrotate"}},
        ]}]))
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(out / ".ansible-tmp"), "ANSIBLE_NOCOLOR": "1"}
    rendered = subprocess.run([ANSIBLE_PLAYBOOK, "-i", "localhost,", str(playbook)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    return [f"walbops-{agent}.service" for agent in agents] + ["walbops-device@vol0.service", "srv-vol0.mount"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze (package systemd) not installed")
def test_every_unit_the_roles_install_verifies(tmp_path):
    units = render(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
    storage = (tmp_path / "walbops-storage.service").read_text()
    # The storage agent starts after its walb devices; the devices stop after their mounts.
    assert "After=network-online.target walbops-device@vol0.service\n" in storage
    assert "NoNewPrivileges=yes" in storage and "ProtectSystem=full" in storage
    assert "SyslogIdentifier=walbops-storage" in storage  # its stderr, the log, in the journal under that tag
    device = (tmp_path / "walbops-device@.service").read_text()
    assert "ExecStart=" + str(ROOT / ".venv" / "bin" / "walbops") + " wdev up %i --config /etc/walbops/devices/%i.yml" \
        in device
    mount = (tmp_path / "srv-vol0.mount").read_text()
    assert "Requires=walbops-device@vol0.service" in mount and "What=/dev/walbops/vol0" in mount


def test_verify_catches_a_broken_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze (package systemd) not installed")
    render(tmp_path)
    broken = (tmp_path / "walbops-proxy.service").read_text().replace("Type=simple", "Type=simplest")
    (tmp_path / "walbops-broken.service").write_text(broken)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", "walbops-broken.service"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert "Failed to parse service type" in result.stderr


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
def test_the_logrotate_file_parses(tmp_path):
    render(tmp_path)
    conf = tmp_path / "walbops.logrotate"
    conf.chmod(0o644)
    result = subprocess.run(["logrotate", "--debug", "--state", str(tmp_path / "state"), str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
    assert "rotating pattern: /var/lib/walbops/*/*.log /var/log/walbops/*.log" in result.stderr


@pytest.mark.parametrize("role", ["storage", "proxy", "archive"])
def test_agents_log_to_the_journal_under_systemd_and_to_files_otherwise(role):
    """Each role's agent config (and the archive's worker's) says log_file - under systemd: the unit
    hands stderr to the journal."""
    tasks = (ROOT / "ansible" / "roles" / f"walbops_{role}" / "tasks" / "main.yml").read_text()
    expressions = [line.split("log_file", 1)[1].lstrip("'\":").split("  #")[0].strip()
                   for line in tasks.splitlines() if "log_file" in line]
    assert expressions, f"no log_file in walbops_{role}"
    environment = jinja2.Environment()
    for expression in expressions:
        template = expression.strip('"') if expression.startswith('"') else "{{ " + expression.rstrip("}") + " }}"
        values = {"walbops_data_dir": "/var/lib/walbops"}
        under_systemd = environment.from_string(template).render(walbops_service_mode="systemd", **values)
        as_processes = environment.from_string(template).render(walbops_service_mode="process", **values)
        assert under_systemd == "-" and as_processes.endswith(".log"), (expression, under_systemd, as_processes)
