#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_ldev: a log device formatted for a walbops (WalB) device, once."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_ldev
short_description: Format a walbops log device, once
description:
  - Writes a fresh super sector on a log device (ldev) for a data device (ddev), as C(walbops wdev format-ldev)
    (WalB's C(wdevc format-ldev)) does, unless the ldev already holds a valid walbops/WalB super sector.
  - A formatted ldev is left as it is, whatever O(name) says; formatting it again gives it a new uuid, which
    loses its logs and makes the archives refuse the volume's next diffs. O(force) formats it anyway.
  - A formatted ldev whose physical block size differs from O(pbs) is refused unless O(force).
  - Never formats an ldev (or a ddev) that a running walb device uses, even with O(force); remove the device
    with M(walbops.walbops.walb_device) C(state=absent) first.
options:
  ldev:
    description: The log device (a block device, or a file).
    type: path
    required: true
  ddev:
    description: The data device it logs for; its size is recorded in the super sector.
    type: path
    required: true
  name:
    description: The device name stored in the super sector (at most 31 bytes), when formatting.
    type: str
  pbs:
    description:
      - Physical block size when formatting; by default the ldev's (512 for a file).
      - A formatted ldev with another block size is refused unless O(force).
    type: int
    choices: [512, 4096]
  force:
    description: Format the ldev even if it is formatted (every run then formats it again, and reports a change).
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: Log device of the volume
  walbops.walbops.walb_ldev:
    ldev: /dev/vg0/wlog
    ddev: /dev/vg0/wdata
    name: vol0
  register: ldev

- name: Start over, losing the logs
  walbops.walbops.walb_ldev:
    ldev: /dev/vg0/wlog
    ddev: /dev/vg0/wdata
    pbs: 4096
    force: true
"""

RETURN = r"""
ldev:
  description: The log device.
  returned: always
  type: str
ddev:
  description: The data device.
  returned: always
  type: str
formatted:
  description: Whether the ldev holds a super sector (always true once the task succeeded).
  returned: always
  type: bool
uuid:
  description: The log's uuid, in hex (null in check mode before formatting).
  returned: always
  type: str
  sample: 7a697046b05049759d97c992ca7ba3d9
name:
  description: The device name in the super sector.
  returned: always
  type: str
pbs:
  description: The physical block size [bytes].
  returned: always
  type: int
ring_buffer_size:
  description: The log ring's size [physical blocks] (null in check mode before formatting).
  returned: always
  type: int
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
            ldev=dict(type="path", required=True),
            ddev=dict(type="path", required=True),
            name=dict(type="str"),
            pbs=dict(type="int", choices=[512, 4096]),
            force=dict(type="bool", default=False),
            **WALBOPS_COMMON_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["ensure", "ldev", params["ldev"], params["ddev"],
                        *flag_args([("name", params["name"]), ("pbs", params["pbs"]), ("force", params["force"])])])


if __name__ == "__main__":
    main()
