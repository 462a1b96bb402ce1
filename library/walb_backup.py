#!/usr/bin/python
"""Ansible module walb_backup: a full backup of a volume on the primary archive."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_backup
short_description: Full backup of a walbops volume to its primary archive
description:
  - Takes WalB's full backup (full-bkp) of a volume, from its storage to the layout's primary archive, and
    waits until it is done (the storage ends in Target, shipping its logs, and the archive restorable).
  - Present once the archive holds the volume and the storage feeds it; then nothing changes.
  - An archive that already holds a backup the storage does not feed, or a walb device that overflowed,
    is refused unless O(force), which clears the archive's copy and takes a new full backup.
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
  force:
    description: Replace an existing backup with a new full backup.
    type: bool
    default: false
extends_documentation_fragment: [walbops, walbops.cluster, walbops.check_and_diff]
author: walbops developers
"""

EXAMPLES = r"""
- name: First full backup of every volume, two at a time across the fleet
  walb_backup:
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
  description: Bytes of the volume backed up (0 when nothing changed).
  returned: always
  type: int
duration:
  description: Seconds the full backup took.
  returned: always
  type: float
archive:
  description: The archive that holds the backup.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.walbops_cli import WALBOPS_CLUSTER_OPTIONS, flag_args, run_module


def main():
    module = AnsibleModule(
        argument_spec=dict(
            vol=dict(type="str", required=True),
            storage=dict(type="str", required=True),
            archive=dict(type="str"),
            bulk_size=dict(type="str"),
            force=dict(type="bool", default=False),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "backup", params["vol"], *flag_args([
        ("layout", params["layout"]), ("server", params["storage"]), ("timeout", params["timeout"]),
        ("archive", params["archive"]), ("bulk_size", params["bulk_size"]), ("force", params["force"])])])


if __name__ == "__main__":
    main()
