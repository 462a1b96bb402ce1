#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_replication: a volume's copy on a second archive, replicated once or synchronizing."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_replication
short_description: Replicate a walbops volume to a second archive, once or continuously
description:
  - Keeps a copy of a volume on a second (secondary, off-site) archive, from the archive that holds its
    backup (WalB's replicate, walb.md 6.7).
  - With O(mode=once), present when the destination can restore the source's newest snapshot (or O(gid));
    otherwise one replication brings it there, of the kind the destination decides - C(full) when it holds
    nothing, C(diff) when it is behind by diffs the source still has, C(hash) when the source applied them
    already, C(resync) when it is of another lineage and O(resync) allows it. A destination the proxies feed
    already is waited for, not replicated to.
  - With O(mode=synchronizing), present when every proxy of the volume sends each diff to the destination as
    well; otherwise the proxies are emptied and stopped, learn the destination, the source replicates all it
    has, and the proxies start again.
  - With O(mode=stopped), present when no proxy sends to the destination; what it holds stays.
  - The result reports the destination's lag behind the source, in gids and seconds of snapshot time.
options:
  vol:
    description: The volume id.
    type: str
    required: true
  source:
    description: The archive that holds the volume's backup (its name in the layout); the layout's first
      archive when omitted.
    type: str
  destination:
    description: The archive to replicate to (its name in the layout).
    type: str
    required: true
  mode:
    description: C(once), C(synchronizing) or C(stopped), as above.
    type: str
    choices: [once, synchronizing, stopped]
    default: once
  gid:
    description: The snapshot the destination must be able to restore (O(mode=once) and
      O(mode=synchronizing)); the source's newest restorable one when omitted.
    type: int
  resync:
    description: Resync a destination of another lineage (after a new full backup on the source) instead of
      failing; its own snapshots are lost.
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Keep every volume's copy on the off-site archive up to date
  walbops.walbops.walb_replication:
    vol: "{{ item.name }}"
    source: archive1
    destination: archive2
    mode: synchronizing
  loop: "{{ walbops_volumes }}"

- name: Bring the secondary to the drill's snapshot
  walbops.walbops.walb_replication:
    vol: db1-pgdata
    destination: archive2
    gid: "{{ drill.gid }}"
  register: replicated
"""

RETURN = r"""
kind:
  description: What was done - C(full), C(resync), C(hash), C(diff), C(synchronize) - or null.
  returned: always
  type: str
gid:
  description: The destination's newest restorable gid afterwards (null while it holds nothing).
  returned: always
  type: int
source_gid:
  description: The source's newest restorable gid.
  returned: always
  type: int
synchronizing:
  description: Whether the proxies send every diff to the destination.
  returned: always
  type: bool
lag_gids:
  description: How many gids the destination's newest snapshot is behind the source's.
  returned: always
  type: int
lag_seconds:
  description: How many seconds of snapshot time the destination's newest snapshot is behind the source's.
  returned: always
  type: int
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
            vol=dict(type="str", required=True),
            source=dict(type="str"),
            destination=dict(type="str", required=True),
            mode=dict(type="str", choices=["once", "synchronizing", "stopped"], default="once"),
            gid=dict(type="int"),
            resync=dict(type="bool", default=False),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "replicated", params["vol"], *flag_args([
        ("layout", params["layout"]), ("server", params["source"]), ("timeout", params["timeout"]),
        ("to", params["destination"]), ("mode", params["mode"]), ("gid", params["gid"]),
        ("resync", params["resync"])])])


if __name__ == "__main__":
    main()
