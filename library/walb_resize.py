#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_resize: a volume grown on an archive or a storage, and its filesystem."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_resize
short_description: Grow a walbops volume on its archive or its storage, and the filesystem on it
description:
  - On an archive, grows the volume's base (WalB's archive resize); on a storage, grows the walb device online
    over its data device, which must be large enough already (M(walbops.walbops.walb_loopdev) and
    M(walbops.walbops.walb_lvm_lv) grow it).
  - With O(grow_fs), the filesystem mounted on the walb device grows to fill it - C(online) (resize2fs,
    xfs_growfs; an ext online resize needs CAP_SYS_RESOURCE, which containers often drop) or C(offline) (ext
    only - unmounted, checked, grown and mounted again with its options).
  - Unchanged when the volume is that large already and, with O(grow_fs), its filesystem fills it. Volumes
    never shrink; a smaller O(size) fails.
  - Grow the archives first, as C(resize.yml) does - a storage grown first sends diffs the archive refuses until
    it is grown too (sending then resumes by itself).
options:
  vol:
    description: The volume id.
    type: str
    required: true
  server:
    description: The archive or storage agent, by its name in the layout.
    type: str
    required: true
  size:
    description: The size the volume must have at least (K, M, G, T suffixes, powers of 1024).
    type: str
    required: true
  zeroclear:
    description: Archive - zero the new range of a thick LV base.
    type: bool
    default: false
  grow_fs:
    description: Storage - grow the filesystem mounted on the walb device too, C(online) or C(offline).
    type: str
    choices: ['no', online, offline]
    default: 'no'
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Grow vol0 on its archive first
  walbops.walbops.walb_resize:
    vol: vol0
    server: a0
    size: 96M

- name: Then on its storage, with its filesystem
  walbops.walbops.walb_resize:
    vol: vol0
    server: s0
    size: 96M
    grow_fs: online
"""

RETURN = r"""
size:
  description: The volume's size on the server afterwards [bytes].
  returned: always
  type: int
fs_grown:
  description: Whether the filesystem grew (in check mode, would grow).
  returned: always
  type: bool
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
            server=dict(type="str", required=True),
            size=dict(type="str", required=True),
            zeroclear=dict(type="bool", default=False),
            grow_fs=dict(type="str", choices=["no", "online", "offline"], default="no"),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "resized", params["vol"], *flag_args([
        (key, params[key]) for key in ("layout", "server", "timeout", "size", "zeroclear", "grow_fs")])])


if __name__ == "__main__":
    main()
