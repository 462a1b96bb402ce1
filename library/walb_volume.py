#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_volume: a volume's state on a storage, proxy or archive agent."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_volume
short_description: A walbops volume's state on one storage, proxy or archive agent
description:
  - Brings a volume to a wanted state on one agent by WalB's commands (init-vol, start, stop,
    reset-vol, clear-vol, archive-info), only those the current state needs.
  - C(initialized) - the agent holds the volume (a storage bound to its walb device; a proxy with its
    archives; an archive waiting for a full backup).
  - C(started) - a storage ships logs (as target after a full backup, else standby); a proxy forwards
    diffs; an archive takes them (only after a full backup; use M(walbops.walbops.walb_backup)).
  - C(stopped) and C(cleared) - stopped, or forgotten. Clearing what holds a backup, or diffs not yet sent,
    needs O(force).
options:
  vol:
    description: The volume id.
    type: str
    required: true
  server:
    description: The agent, by its name in the layout.
    type: str
    required: true
  state:
    description: The wanted state.
    type: str
    choices: [initialized, started, stopped, cleared]
    default: started
  start_as:
    description:
      - Storage only. How to start; by default as it was (target after a full backup, else standby).
    type: str
    choices: [target, standby]
  wdev:
    description: Storage only. The walb device's name, to initialise the volume.
    type: str
  archives:
    description:
      - Proxy only. Exactly the archives the volume's diffs go to (archive-info); others are deleted.
      - Omit to leave the proxy's archives as they are.
    type: list
    elements: dict
    suboptions:
      name:
        description: The archive's name (its id).
        type: str
        required: true
      host:
        description: The archive's address.
        type: str
        required: true
      port:
        description: The archive's port.
        type: int
        required: true
      compression:
        description: C(TYPE:LEVEL:CPUS) of the diffs sent, e.g. C(lz4:0:1), C(zstd:3:1), C(none:0:1).
        type: str
        default: "lz4:0:1"
  stop_mode:
    description: How to stop (C(empty) - a proxy first sends everything it holds).
    type: str
    choices: [graceful, force, empty]
    default: graceful
  force:
    description: Clear a volume that holds a backup or unsent diffs.
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Bind vol0 to its walb device and let it run standby until the first full backup
  walbops.walbops.walb_volume:
    vol: vol0
    server: "{{ inventory_hostname }}"
    wdev: vol0
    state: started

- name: Send vol0's diffs to the archive a0
  walbops.walbops.walb_volume:
    vol: vol0
    server: p0
    archives:
      - {name: a0, host: 10.0.0.20, port: 10200}

- name: Forget vol0 on the archive, deleting its backup
  walbops.walbops.walb_volume:
    vol: vol0
    server: a0
    state: cleared
    force: true
"""

RETURN = r"""
state:
  description: The volume's state on the agent afterwards (predicted in check mode).
  returned: always
  type: str
  sample: Standby
commands:
  description: The agent commands run (or that would run).
  returned: always
  type: list
  elements: str
  sample: ["init-vol wdev=vol0", "start role=standby"]
role:
  description: The agent's role.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.walbops.walbops.plugins.module_utils.walbops_cli import (
    WALBOPS_CLUSTER_OPTIONS,
    flag_args,
    run_module,
)


def archive_flag(archive):
    compression = (archive.get("compression") or "lz4:0:1").replace(":", "/")
    return f"{archive['name']}={archive['host']}:{archive['port']}:{compression}"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vol=dict(type="str", required=True),
            server=dict(type="str", required=True),
            state=dict(type="str", choices=["initialized", "started", "stopped", "cleared"], default="started"),
            start_as=dict(type="str", choices=["target", "standby"]),
            wdev=dict(type="str"),
            archives=dict(type="list", elements="dict", options=dict(
                name=dict(type="str", required=True),
                host=dict(type="str", required=True),
                port=dict(type="int", required=True),
                compression=dict(type="str", default="lz4:0:1"),
            )),
            stop_mode=dict(type="str", choices=["graceful", "force", "empty"], default="graceful"),
            force=dict(type="bool", default=False),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    archives = params["archives"]
    run_module(module, ["ensure", "volume", params["vol"], *flag_args([
        ("layout", params["layout"]), ("server", params["server"]), ("timeout", params["timeout"]),
        ("state", params["state"]), ("start_as", params["start_as"]), ("wdev", params["wdev"]),
        ("archive", [archive_flag(a) for a in archives] if archives else None),
        ("no_archives", archives is not None and not archives),
        ("stop_mode", params["stop_mode"]), ("force", params["force"])])])


if __name__ == "__main__":
    main()
