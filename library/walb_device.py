#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_device: a running walbops (userspace WalB) device."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_device
short_description: Run a walbops device over a log device and a data device
description:
  - Makes the walbops device O(name) run (C(state=present)), exposed as C(/dev/walbops/NAME), or not run
    (C(state=absent)); see C(docs/device.md).
  - C(present) starts it, as C(walbops wdev create) does, unless it already runs over the same O(ldev) and
    O(ddev), compared by inode (by device number for block devices), so another path to the same device is the
    same. A device of that name over other devices is refused; remove it with C(state=absent) first.
  - The ldev must be formatted (M(walbops.walbops.walb_ldev)); an ldev or ddev that another running device uses
    is refused.
  - C(absent) stops it gracefully (final flush and checkpoint); a mounted device is refused, naming the mount
    point, unless O(force).
  - A device whose daemon died without cleaning up counts as not running; C(absent) removes what it left (its
    loop device, FUSE mount and runtime files), C(present) starts it again (redoing its logs).
options:
  name:
    description: The device name (1-31 of C([0-9A-Za-z_.-]), not starting with C(.) or C(-)).
    type: str
    required: true
  state:
    description: Whether the device runs.
    type: str
    choices: [present, absent]
    default: present
  ldev:
    description: The formatted log device. Required for C(state=present).
    type: path
  ddev:
    description: The data device. Required for C(state=present).
    type: path
  overflow:
    description:
      - When the log ring is full - C(overwrite) (go on, raise the overflow flag) or C(error) (fail the writes).
      - Set when the device is created (default C(overwrite)); a running device with another policy is refused.
    type: str
    choices: [overwrite, error]
  checkpoint_interval_ms:
    description: Checkpoint interval [ms] (default 10000 at creation); a running device's is changed to it.
    type: int
  flush_interval_ms:
    description: Longest time a write waits to become permanent [ms]; used when the device is created
      (default 100).
    type: int
  metrics_listen:
    description:
      - Have the device daemon serve Prometheus metrics at C(http://HOST:PORT/metrics) (its IO counters, log
        usage and lsids; docs/operations.md). An empty string serves none.
      - A running device starts, moves or stops its endpoint at once; unset leaves it as it is.
    type: str
  force:
    description: C(state=absent) - stop the device even if it is mounted or open (its users then get IO errors).
    type: bool
    default: false
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: The volume's walb device
  walbops.walbops.walb_device:
    name: vol0
    ldev: /dev/vg0/wlog
    ddev: /dev/vg0/wdata
  register: wdev

- name: Stop it
  walbops.walbops.walb_device:
    name: vol0
    state: absent
"""

RETURN = r"""
path:
  description: The device, C(/dev/walbops/NAME) (a link to its loop device); null once absent.
  returned: always
  type: str
  sample: /dev/walbops/vol0
name:
  description: The device name.
  returned: always
  type: str
ldev:
  description: The log device it runs over (null when nothing ran).
  returned: always
  type: str
ddev:
  description: The data device it runs over (null when nothing ran).
  returned: always
  type: str
lsids:
  description: Its lsids (latest, completed, permanent, written, prev_written, oldest, ...).
  returned: when state=present, except in check mode before it runs
  type: dict
log_usage_pb:
  description: Log in the ring not yet released [physical blocks].
  returned: when state=present, except in check mode before it runs
  type: int
log_capacity_pb:
  description: The ring's size [physical blocks].
  returned: when state=present, except in check mode before it runs
  type: int
overflow:
  description: Whether the ring overflowed (its logs are incomplete until reset-wal).
  returned: when state=present, except in check mode before it runs
  type: bool
loop:
  description: The loop device under C(path).
  returned: when state=present, except in check mode before it runs
  type: str
pid:
  description: The device daemon's pid. C(uuid), C(pbs), C(size_lb), C(overflow_policy), C(frozen) and
    C(checkpoint_interval_ms) come with it, as C(walbops wdev status) gives them.
  returned: when state=present, except in check mode before it runs
  type: int
cleared_stale:
  description: What a dead daemon left behind was removed.
  returned: when state=absent found a dead daemon's leftovers
  type: bool
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
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            ldev=dict(type="path"),
            ddev=dict(type="path"),
            overflow=dict(type="str", choices=["overwrite", "error"]),
            checkpoint_interval_ms=dict(type="int"),
            flush_interval_ms=dict(type="int"),
            metrics_listen=dict(type="str"),
            force=dict(type="bool", default=False),
            **WALBOPS_COMMON_OPTIONS,
        ),
        required_if=[("state", "present", ("ldev", "ddev"))],
        supports_check_mode=True,
    )
    params = module.params
    options = ("state", "ldev", "ddev", "overflow", "checkpoint_interval_ms", "flush_interval_ms", "metrics_listen",
               "force")
    run_module(module, ["ensure", "device", params["name"], *flag_args([(key, params[key]) for key in options])])


if __name__ == "__main__":
    main()
