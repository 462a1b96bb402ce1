#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_replace: a host of a backup group replaced by another for a volume (WalB's r1-r4)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_replace
short_description: Replace a storage, proxy or archive host of a walbops volume
description:
  - Moves a volume from one agent to another of the same role, keeping every restorable snapshot (WalB's
    replacement scenarios r1-r4; docs/replication.md gives each procedure step by step).
  - C(storage) (r1) - the new storage, whose walb device O(wdev) holds the volume's data, becomes its target by
    a hash backup (the old one goes standby first) and the old one is cleared.
  - C(proxy) (r2) - the new proxy sends the volume to the archives the old one does, the old one is emptied
    (everything it holds sent) and cleared. The storages must list the new proxy among theirs.
  - C(archive) (r3, r4) - the new archive takes over the old one's copy, synchronized from it (or, for a
    secondary, from the primary O(source)), then the proxies stop sending to the old one, which is cleared. For
    the primary, point the storages' backups at the new one afterwards (walbops_storage_archive).
  - Present when the old agent no longer holds the volume and the new one is Target, Started or holds its copy.
options:
  kind:
    description: The role of the two agents.
    type: str
    choices: [storage, proxy, archive]
    required: true
  vol:
    description: The volume id.
    type: str
    required: true
  old:
    description: The agent giving the volume up (its name in the layout).
    type: str
    required: true
  new:
    description: The agent taking it over.
    type: str
    required: true
  wdev:
    description: C(storage) - the new host's walb device that holds the volume's data (to initialise it there).
    type: str
  source:
    description: C(archive) - the primary archive, when O(old) is a secondary (r4).
    type: str
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Move the off-site copy of every volume to the new DR archive
  walbops.walbops.walb_replace:
    kind: archive
    vol: "{{ item }}"
    old: archive-dr-old
    new: archive-dr
    source: archive1
  loop: [db1-pgdata, db2-pgdata]
"""

RETURN = r"""
gid:
  description: The newest gid restorable where the volume now lives (storage, archive; null for a proxy or when
    nothing changed).
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
            kind=dict(type="str", choices=["storage", "proxy", "archive"], required=True),
            vol=dict(type="str", required=True),
            old=dict(type="str", required=True),
            new=dict(type="str", required=True),
            wdev=dict(type="str"),
            source=dict(type="str"),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "replaced", params["kind"], params["vol"], *flag_args([
        ("layout", params["layout"]), ("timeout", params["timeout"]), ("old", params["old"]),
        ("new", params["new"]), ("wdev", params["wdev"]), ("source", params["source"])])])


if __name__ == "__main__":
    main()
