#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_restore: a restored snapshot on an archive."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_restore
short_description: Restore a snapshot of a walbops volume on its archive, or remove a restore
description:
  - Restores the volume as it was at a snapshot (the base image with the diff chain applied, a reflink clone
    where the filesystem allows) and attaches it as a loop device, so it can be checked and mounted.
  - Present when that gid is restored already; then nothing changes.
  - C(state=absent) removes the restored image (C(gid=all) - every restore of the volume).
  - Run it on the archive host when the device path or O(digest) are wanted there.
options:
  vol:
    description: The volume id.
    type: str
    required: true
  archive:
    description: The archive agent, by its name in the layout.
    type: str
    required: true
  gid:
    description: The snapshot's gid, C(latest) (the newest restorable), or with C(state=absent) C(all).
    type: str
    default: latest
  state:
    description: Whether the restore exists.
    type: str
    choices: [present, absent]
    default: present
  include_implicit:
    description: Let C(latest) be an implicit snapshot (taken every few seconds by the storage).
    type: bool
    default: false
  digest:
    description: Return the sha256 of the restored image.
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Restore the newest snapshot of vol0
  walbops.walbops.walb_restore:
    vol: vol0
    archive: "{{ inventory_hostname }}"
    gid: latest
    digest: true
  register: restored

- name: Remove every restore of vol0
  walbops.walbops.walb_restore:
    vol: vol0
    archive: a0
    gid: all
    state: absent
"""

RETURN = r"""
gid:
  description: The restored gid.
  returned: state=present
  type: int
device:
  description: The loop device of the restored image (null in check mode before it exists).
  returned: state=present
  type: str
  sample: /dev/loop7
digest:
  description: sha256 of the restored image, when O(digest).
  returned: state=present
  type: str
duration:
  description: Seconds the restore took (0 when it existed).
  returned: state=present
  type: float
removed:
  description: The gids whose restores were removed.
  returned: state=absent
  type: list
  elements: int
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
            archive=dict(type="str", required=True),
            gid=dict(type="str", default="latest"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            include_implicit=dict(type="bool", default=False),
            digest=dict(type="bool", default=False),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "restored", params["vol"], params["gid"], *flag_args([
        ("layout", params["layout"]), ("server", params["archive"]), ("timeout", params["timeout"]),
        ("state", params["state"]), ("include_implicit", params["include_implicit"]),
        ("digest", params["digest"])])])


if __name__ == "__main__":
    main()
