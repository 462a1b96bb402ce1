#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_backup: a backup of a volume on its archive (full, or hash to catch up)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_backup
short_description: Backup of a walbops volume to its archive, full or by hash
description:
  - Makes the archive hold a backup of the volume that its storage feeds, and waits until it is done (the
    storage ends in Target, shipping its logs, and a new snapshot is restorable).
  - Present once the archive holds the volume, the storage feeds it and its log did not overflow; then
    nothing changes.
  - Otherwise, with O(method=auto) (the default), a hash backup (hash-bkp) when the archive holds the
    volume - after a log overflow, a lost proxy, a storage that was standby or replaced - which sends only
    what the archive lacks and keeps every snapshot it had; and WalB's full backup (full-bkp) when it holds
    nothing.
  - A full backup over an archive that holds the volume deletes its history and needs O(force).
  - Prepares the proxies (archive-info) and the archive (init-vol) as WalB's controller does.
options:
  vol:
    description: The volume id.
    type: str
    required: true
  storage:
    description: The storage agent, by its name in the layout.
    type: str
    required: true
  archive:
    description:
      - The archive, by its name in the layout; it must be the one the storage's agent sends to.
      - The layout's first archive when omitted.
    type: str
  bulk_size:
    description: Bytes per bulk read and sent (K, M, G suffixes); the storage's own default when omitted.
    type: str
  method:
    description: C(auto) - hash when the archive holds the volume, else full; C(full); C(hash).
    type: str
    choices: [auto, full, hash]
    default: auto
  force:
    description: Replace an existing backup with a new full backup (the archive's history is deleted).
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: First full backup of every volume, two at a time across the fleet
  walbops.walbops.walb_backup:
    vol: "{{ item.name }}"
    storage: "{{ inventory_hostname }}"
  loop: "{{ walbops_volumes }}"
  throttle: 2
  register: backups
"""

RETURN = r"""
gid:
  description: The first restorable gid after the backup (the newest restorable one when nothing changed).
  returned: always
  type: int
bytes:
  description: Bytes of the volume copied by a full backup (0 when nothing changed, null after a hash backup).
  returned: always
  type: int
method:
  description: C(full) or C(hash), what was taken (null when nothing changed).
  returned: always
  type: str
overflowed:
  description: Whether the storage's log had overflowed (a backup was needed for it).
  returned: always
  type: bool
duration:
  description: Seconds the backup took.
  returned: always
  type: float
archive:
  description: The archive that holds the backup.
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
            archive=dict(type="str"),
            bulk_size=dict(type="str"),
            method=dict(type="str", choices=["auto", "full", "hash"], default="auto"),
            force=dict(type="bool", default=False),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "backup", params["vol"], *flag_args([
        ("layout", params["layout"]), ("server", params["storage"]), ("timeout", params["timeout"]),
        ("archive", params["archive"]), ("bulk_size", params["bulk_size"]), ("method", params["method"]),
        ("force", params["force"])])])


if __name__ == "__main__":
    main()
