#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_agent: a walbops agent process on a host without systemd."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_agent
short_description: Run a walbops storage, proxy or archive agent, or an archive's worker, kept by a pidfile
description:
  - For hosts without systemd (containers, test machines); where systemd runs, the walbops roles install a unit
    instead.
  - C(started) - leaves a running agent alone, else starts C(walbops agent ROLE --config CONFIG) detached (its own
    session, stdin C(/dev/null), stdout and stderr appended to the config's C(log_file), else to a C(.log) file
    beside the pidfile), writes the pidfile atomically and waits until the agent answers a C(status) request on
    its configured address and port with the cluster key of its config (C(0.0.0.0) is reached on C(127.0.0.1)).
    An agent that dies first fails the task with the tail of its log.
  - C(role=worker) runs C(walbops worker --config CONFIG) (docs/worker.md) the same way; it listens nowhere, so it
    counts as started once it has run for a second.
  - The agent counts as running only while the pidfile names a live process whose command line is this
    C(walbops agent ROLE) with this config; a stale pidfile (a dead pid, or one reused by another program) is
    replaced, and that other program is never signalled.
  - The config is validated first (and its cluster key read), so a bad config fails the task before anything
    starts or stops.
  - C(stopped) - SIGTERM (a graceful shutdown), SIGKILL after O(timeout) seconds (then C(killed=true)); the pidfile
    is removed.
  - C(restarted) - stopped, then started; always a change.
options:
  role:
    description: The agent's role, or C(worker) for an archive's worker.
    type: str
    required: true
    choices: [storage, proxy, archive, worker]
  config:
    description: The agent's YAML configuration (C(docs/agents.md)).
    type: path
    required: true
  pidfile:
    description: The file that names the agent's pid (its directory is created).
    type: path
    required: true
  state:
    description: Whether the agent runs.
    type: str
    choices: [started, stopped, restarted]
    default: started
  timeout:
    description: How long to wait for a started agent to answer, or for a stopped one to exit before SIGKILL [s].
    type: float
    default: 30
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: The archive agent
  walbops.walbops.walb_agent:
    role: archive
    config: /etc/walbops/archive.yml
    pidfile: /run/walbops/archive.pid

- name: Restart the storage agent after a config change
  walbops.walbops.walb_agent:
    role: storage
    config: /etc/walbops/storage.yml
    pidfile: /run/walbops/storage.pid
    state: restarted
"""

RETURN = r"""
pid:
  description: The agent's pid (null once stopped, and in check mode before it starts).
  returned: always
  type: int
role:
  description: The agent's role.
  returned: always
  type: str
config:
  description: The configuration, as an absolute path.
  returned: always
  type: str
pidfile:
  description: The pidfile, as an absolute path.
  returned: always
  type: str
port:
  description: The port it listens on (null once stopped, and for the worker).
  returned: always
  type: int
state:
  description: C(started) or C(stopped).
  returned: always
  type: str
killed:
  description: It did not exit within O(timeout) after SIGTERM and was killed.
  returned: when state=stopped or state=restarted stopped a running agent (not in check mode)
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.walbops.walbops.plugins.module_utils.walbops_cli import (
    WALBOPS_COMMON_OPTIONS,
    flag_args,
    run_module,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            role=dict(type="str", required=True, choices=["storage", "proxy", "archive", "worker"]),
            config=dict(type="path", required=True),
            pidfile=dict(type="path", required=True),
            state=dict(type="str", choices=["started", "stopped", "restarted"], default="started"),
            timeout=dict(type="float", default=30.0),
            **WALBOPS_COMMON_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "agent", params["role"],
                        *flag_args([(key, params[key]) for key in ("config", "pidfile", "state", "timeout")])])


if __name__ == "__main__":
    main()
