#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_lvm_vg: an LVM volume group, as community.general.lvg makes it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_lvm_vg
short_description: Create, extend, reduce or remove an LVM volume group
description:
  - Makes volume group O(vg) exist on exactly the devices in O(pvs) (C(state=present)), or not exist
    (C(state=absent)), with the options and behaviour of community.general.lvg that walbops uses.
  - A missing VG is created (C(pvcreate), C(vgcreate)). An existing one gains the listed devices it lacks
    (C(vgextend)) and loses the PVs that are not listed (C(vgreduce)); without O(pvs) it is left as it is.
  - Refused, in check mode too, before anything changes - a listed device that is a PV of another VG; a PV to
    drop that holds LV data (list it, or move the data off it first); a device with a signature (a filesystem,
    a partition table) to make a PV of, unless O(force); removing a VG that holds LVs, unless O(force).
options:
  vg:
    description: The volume group.
    type: str
    required: true
  pvs:
    description:
      - The devices the VG is on, exactly. Devices that are not PVs yet are made PVs.
      - Needed to create the VG; omit it to leave the PVs of an existing one as they are.
    type: list
    elements: str
  pesize:
    description:
      - Extent size of a new VG, in MiB unless suffixed with K, M or G (powers of 1024), e.g. C(4), C(128K).
      - A power of 2 of at least 512 bytes, or a multiple of 128 KiB. Ignored for an existing VG, as lvg does.
      - By default lvm2's (4 MiB unless the LVM configuration says otherwise).
    type: str
  state:
    description: Whether the VG exists. C(absent) removes the VG; its PVs keep their PV labels, as with lvg.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Remove a VG that holds LVs (they are lost), and make a PV of a device that has a signature (it is
        overwritten).
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.check_and_diff
notes:
  - lvm2 runs with the LVM configuration of the managed host; C(LVM_SYSTEM_DIR) in the environment selects
    another lvm.conf.
seealso:
  - module: walbops.walbops.walb_lvm_lv
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Volume group of the archive's base images, on two disks
  walbops.walbops.walb_lvm_vg:
    vg: archive
    pvs: [/dev/sdb, /dev/sdc]
    pesize: 32M

- name: Remove it, with its LVs
  walbops.walbops.walb_lvm_vg:
    vg: archive
    state: absent
    force: true
"""

RETURN = r"""
vg:
  description: The volume group.
  returned: always
  type: str
pvs:
  description: Its PVs (real device paths); after a change in check mode, the PVs it would have.
  returned: always
  type: list
  elements: str
  sample: [/dev/loop3, /dev/loop4]
size:
  description: Its size in bytes (null once absent, and in check mode when its PVs would change).
  returned: always
  type: int
free:
  description: Its unallocated bytes (null when size is).
  returned: always
  type: int
extent_size:
  description: Its extent size in bytes (null once absent, and in check mode for a new VG without O(pesize)).
  returned: always
  type: int
  sample: 4194304
removed_lvs:
  description: The LVs removed with it.
  returned: when state=absent removed the VG
  type: list
  elements: str
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
            vg=dict(type="str", required=True),
            pvs=dict(type="list", elements="str"),
            pesize=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            force=dict(type="bool", default=False),
            **WALBOPS_COMMON_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "vg", params["vg"],
                        *flag_args([("pvs", params["pvs"]), ("pesize", params["pesize"]),
                                    ("state", params["state"]), ("force", params["force"])])])


if __name__ == "__main__":
    main()
