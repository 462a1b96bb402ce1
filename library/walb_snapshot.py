#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_snapshot: an explicit snapshot of a volume."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_snapshot
short_description: Take a snapshot of a walbops volume
description:
  - Takes an explicit snapshot on the volume's storage and returns its gid; by default waits until the
    archive can restore it.
  - Always a change; in check mode nothing is taken and the gid is null.
  - With O(digest), the walb device is frozen while the snapshot is taken and the whole device is read, so
    the returned sha256 is the volume's content at exactly that gid. Writes wait meanwhile; freeze the
    filesystem first (fsfreeze) when it must be consistent for fsck.
options:
  vol:
    description: The volume id.
    type: str
    required: true
  storage:
    description: The storage agent, by its name in the layout.
    type: str
    required: true
  wait:
    description: Wait until the snapshot is restorable on O(archives).
    type: bool
    default: true
  archives:
    description: The archives to wait on (names in the layout); the primary archive by default.
    type: list
    elements: str
  digest:
    description: Return the sha256 of the device at the snapshot (read on the storage host).
    type: bool
    default: false
  bhash:
    description:
      - Return the bhash of the device at the snapshot (read on the storage host), the stream hash an archive
        computes at the gid from its base and diffs without restoring (C(walbops ctl bhash)).
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
attributes:
  check_mode:
    support: full
    description: Check mode tells whether a snapshot would be taken, taking none.
  diff_mode:
    support: none
    description: A snapshot is an event, not a state to diff.
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Snapshot vol0 and wait until the archive can restore it
  walbops.walbops.walb_snapshot:
    vol: vol0
    storage: "{{ inventory_hostname }}"
  register: snap

- ansible.builtin.debug:
    msg: "vol0 is restorable at gid {{ snap.gid }}"
"""

RETURN = r"""
gid:
  description: The snapshot's gid (null in check mode).
  returned: always
  type: int
timestamp:
  description: When it was taken (seconds since the epoch).
  returned: success, not in check mode
  type: int
restorable:
  description: Whether it was restorable on every archive waited on.
  returned: always
  type: bool
digest:
  description: sha256 of the device at the snapshot, when O(digest).
  returned: always
  type: str
bhash:
  description: bhash of the device at the snapshot (bulk 256 KiB), when O(bhash).
  returned: always
  type: str
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
            storage=dict(type="str", required=True),
            wait=dict(type="bool", default=True),
            archives=dict(type="list", elements="str"),
            digest=dict(type="bool", default=False),
            bhash=dict(type="bool", default=False),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "snapshot", params["vol"], *flag_args([
        ("layout", params["layout"]), ("server", params["storage"]), ("timeout", params["timeout"]),
        ("no_wait", not params["wait"]), ("archive", params["archives"]), ("digest", params["digest"]),
        ("bhash", params["bhash"])])])


if __name__ == "__main__":
    main()
