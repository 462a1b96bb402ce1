#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_lvm_lv: an LVM logical volume, thin pool or thin volume, as community.general.lvol."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_lvm_lv
short_description: Create, resize or remove an LVM logical volume, thin pool or thin volume
description:
  - Makes an LV exist with a size (C(state=present)) or not exist (C(state=absent)), with the options and
    behaviour of community.general.lvol that walbops uses.
  - O(lv) alone is a thick LV; O(thinpool) alone is that thin pool, O(size) its data size; both are a thin
    volume O(lv) in pool O(thinpool), O(size) its virtual size.
  - A missing LV is created. An existing one is left as it is when O(size) asks for the extents it has (a size
    rounds up to whole extents), grown (C(lvextend)) when larger, and shrunk (C(lvreduce)) only with O(force),
    never with O(shrink=false). Removing needs O(force), as with lvol.
  - Refused, in check mode too, before anything changes - shrinking without O(force) or to nothing; shrinking a
    thin pool; growing beyond the VG's free space; an LV of the name that is another kind than asked (a thick
    LV where a thin volume is asked, a thin volume in another pool); a missing thin pool for a thin volume;
    thin pool and thin volume operations that need device-mapper on a kernel without it.
options:
  vg:
    description: The volume group.
    type: str
    required: true
  lv:
    description: The logical volume. Omit it, with O(thinpool), to manage the thin pool itself.
    type: str
  size:
    description:
      - Size in MiB, or with a unit - B, S (512-byte sectors), K, M, G, T (powers of 1024); decimals allowed
        (C(1.5G)).
      - Or a percentage of the VG (C(50%VG)), of its PVs (C(100%PVS)) or of its free space (C(100%FREE)),
        rounded down to whole extents. Not for a thin volume.
      - C(+N) grows by N, C(-N) shrinks by N (which needs O(force)). A create needs a size.
      - With C(+), C(-) or C(%FREE) the module is not idempotent, as with lvol. A second C(100%FREE) asks for
        the now empty free space; with O(shrink=false) it leaves the LV as it is.
    type: str
  state:
    description: Whether the LV exists.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Shrink (data beyond the new end is lost) and remove (the LV is lost; a thin pool with its thin volumes).
    type: bool
    default: false
  shrink:
    description: Shrink an LV larger than O(size). With V(false) a larger LV is left as it is.
    type: bool
    default: true
  thinpool:
    description:
      - With O(lv), the thin pool the thin volume is in; without, the thin pool to manage.
    type: str
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.check_and_diff
notes:
  - Thin pools, and creating or removing thin volumes, need an active pool, so a kernel with device-mapper.
  - lvm2 runs with the LVM configuration of the managed host; C(LVM_SYSTEM_DIR) in the environment selects
    another lvm.conf.
seealso:
  - module: walbops.walbops.walb_lvm_vg
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Thin pool for the archive's base images, half the VG
  walbops.walbops.walb_lvm_lv:
    vg: archive
    thinpool: pool
    size: 50%VG

- name: A thin volume of 100 GiB (virtual) in it
  walbops.walbops.walb_lvm_lv:
    vg: archive
    lv: scratch
    thinpool: pool
    size: 100G

- name: A thick LV; grown when the size grows, never shrunk
  walbops.walbops.walb_lvm_lv:
    vg: archive
    lv: spool
    size: 20G
    shrink: false

- name: Remove it
  walbops.walbops.walb_lvm_lv:
    vg: archive
    lv: spool
    state: absent
    force: true
"""

RETURN = r"""
vg:
  description: The volume group.
  returned: always
  type: str
lv:
  description: The LV (the thin pool's name when O(lv) is omitted).
  returned: always
  type: str
size:
  description: Its size in bytes (virtual for a thin volume); in check mode the size it would have; null once absent.
  returned: always
  type: int
  sample: 67108864
device:
  description:
    - Its device node, which exists only while the LV is active; null once absent.
    - It is not called C(path) because Ansible adds a file's attributes to a result with C(path), and the C(size)
      of the node's symlink would replace the LV's.
  returned: always
  type: str
  sample: /dev/archive/spool
thinpool:
  description: The thin pool a thin volume is in, or the pool itself; null for a thick LV and once absent.
  returned: always
  type: str
removed:
  description: The LVs removed (a thin pool takes its thin volumes with it).
  returned: when state=absent removed the LV
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
            lv=dict(type="str"),
            size=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            force=dict(type="bool", default=False),
            shrink=dict(type="bool", default=True),
            thinpool=dict(type="str"),
            **WALBOPS_COMMON_OPTIONS,
        ),
        required_one_of=[["lv", "thinpool"]],
        supports_check_mode=True,
    )
    params = module.params
    # --size=VALUE, not two words: argparse would read a "-16M" as an option.
    size = [f"--size={params['size']}"] if params["size"] is not None else []
    run_module(module, ["ensure", "lv", params["vg"], *([params["lv"]] if params["lv"] else []), *size,
                        *flag_args([("state", params["state"]), ("force", params["force"]),
                                    ("no_shrink", not params["shrink"]), ("thinpool", params["thinpool"])])])


if __name__ == "__main__":
    main()
