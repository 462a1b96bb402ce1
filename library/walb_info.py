#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_info: states, restorable snapshots and their ages, log usage."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_info
short_description: Facts about walbops agents and volumes
description:
  - Asks every agent of the layout (or those in O(servers)) for its volumes; an agent that does not answer
    is reported with C(reachable=false), not failed, so a report covers the whole fleet.
  - Per volume, its state; on a storage, log usage and overflow; on a proxy, diffs waiting per archive; on
    an archive, the explicit restorable snapshots with their ages, the number of implicit ones, the age of
    the newest restorable point of either kind (the recovery point, C(rpo_seconds)), what is restored, and
    C(replicas) - the archives it replicated the volume to, each with its latest snapshot and how far behind
    it is (C(gid_delta), C(time_delta) in seconds; a synchronizing secondary's lag is instead the diffs its
    proxies hold for it, C(pending)).
  - Judges the health as C(walbops check) does (docs/operations.md) and returns it in C(health); with
    O(fail_on) the task fails when it is at least that bad.
  - Changes nothing.
options:
  servers:
    description: Only these agents (names in the layout).
    type: list
    elements: str
  vol:
    description: Only this volume.
    type: str
  timeout:
    description: How long each agent may take to answer, in seconds.
    type: float
    default: 10
  fail_on:
    description:
      - Fail the task when the health is at least C(warning) or C(critical), or when an agent does not answer
        (C(unreachable)); C(none) reports only.
    type: str
    choices: [none, unreachable, warning, critical]
    default: none
  rpo_warning:
    description: Warn when writes no proxy has acknowledged are this old, in seconds.
    type: float
    default: 3600
  rpo_critical:
    description: Critical when they are this old, in seconds.
    type: float
    default: 86400
  log_warning:
    description: Warn when a log ring is this full, in percent.
    type: float
    default: 80
  log_critical:
    description: Critical when a log ring is this full, in percent.
    type: float
    default: 95
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
attributes:
  check_mode:
    support: full
    description: Gathering facts changes nothing; check mode runs the same.
  diff_mode:
    support: none
    description: Facts have no before and after.
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: What every archive can restore
  walbops.walbops.walb_info:
  register: walbops

- name: Fail the play when a log overflowed, an agent is down, or writes are unprotected for a day
  walbops.walbops.walb_info:
    fail_on: critical

- name: Fail when a volume's newest restorable snapshot is older than an hour
  ansible.builtin.assert:
    that: item.value.rpo_seconds is not none and item.value.rpo_seconds < 3600
  loop: "{{ walbops.servers.a0.volumes | dict2items }}"
"""

RETURN = r"""
time:
  description: When the facts were gathered (seconds since the epoch).
  returned: always
  type: int
health:
  description: The health (status OK, WARNING or CRITICAL, code 0-2) and each problem with its level.
  returned: always
  type: dict
  sample: {status: WARNING, code: 1, problems: [{level: WARNING, problem: "vol0 on s0: log 85.2% full"}]}
servers:
  description: Per agent name, its role, address, port, reachable, and its volumes with their facts.
  returned: always
  type: dict
  sample:
    a0:
      role: archive
      reachable: true
      volumes:
        vol0:
          state: Archived
          latest_restorable: 1037
          latest_restorable_any: 1041
          implicit_restorable_count: 12
          rpo_seconds: 3.5
          restorable: [{gid: 1037, timestamp: 1795000000, age_seconds: 42.5, explicit: true}]
          replicas: [{destination: "10.30.2.10:10200", latest: "|1037|", gid_delta: 4, time_delta: 20}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.walbops.walbops.plugins.module_utils.walbops_cli import (
    WALBOPS_CLUSTER_OPTIONS,
    flag_args,
    run_module,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            servers=dict(type="list", elements="str"),
            vol=dict(type="str"),
            fail_on=dict(type="str", choices=["none", "unreachable", "warning", "critical"], default="none"),
            rpo_warning=dict(type="float", default=3600.0),
            rpo_critical=dict(type="float", default=86400.0),
            log_warning=dict(type="float", default=80.0),
            log_critical=dict(type="float", default=95.0),
            **dict(WALBOPS_CLUSTER_OPTIONS, timeout=dict(type="float", default=10.0)),
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["info", *flag_args([
        ("layout", params["layout"]), ("server", params["servers"]), ("vol", params["vol"]),
        ("timeout", params["timeout"]), ("fail-on", params["fail_on"]), ("rpo-warning", params["rpo_warning"]),
        ("rpo-critical", params["rpo_critical"]), ("log-warning", params["log_warning"]),
        ("log-critical", params["log_critical"])])], check_aware=False)


if __name__ == "__main__":
    main()
