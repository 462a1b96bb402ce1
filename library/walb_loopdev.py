#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_loopdev: a file attached as a loop device."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_loopdev
short_description: Attach a file as a loop device, once
description:
  - Makes a file attached as a loop device (C(state=present)) or not attached (C(state=absent)).
  - An existing attachment is found by the backing file's inode, so running again never adds a second
    loop device.
  - With O(size), a missing file is created sparse and a smaller one grown (the loop device's capacity is
    refreshed); a larger one is refused, never shrunk.
options:
  file:
    description: The backing file.
    type: path
    required: true
  state:
    description: Whether the file is attached.
    type: str
    choices: [present, absent]
    default: present
  size:
    description:
      - Size of the file, with an optional K, M, G or T suffix (powers of 1024).
      - Creates the file when it is missing; grows it when it is smaller.
    type: str
  read_only:
    description: Attach read-only. Changing it needs C(state=absent) first.
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Log device of the tutorial, on a sparse file
  walbops.walbops.walb_loopdev:
    file: /var/lib/walbops/disks/wlog.img
    size: 100M
  register: wlog

- name: Detach it
  walbops.walbops.walb_loopdev:
    file: /var/lib/walbops/disks/wlog.img
    state: absent
"""

RETURN = r"""
device:
  description: The loop device over the file (null once absent, and in check mode before it exists).
  returned: always
  type: str
  sample: /dev/loop3
file:
  description: The backing file.
  returned: always
  type: str
detached:
  description: The loop devices detached.
  returned: when state=absent changed something
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
            file=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            size=dict(type="str"),
            read_only=dict(type="bool", default=False),
            **WALBOPS_COMMON_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "loop", params["file"],
                        *flag_args([("state", params["state"]), ("size", params["size"]),
                                    ("read_only", params["read_only"])])])


if __name__ == "__main__":
    main()
