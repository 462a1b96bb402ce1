#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_retention: keep the snapshots a policy names on an archive, remove the rest."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_retention
short_description: Keep the restorable snapshots a retention policy names on a walbops archive
description:
  - Decides, with the rules of borg and restic C(prune), which restorable snapshots of each volume stay, then
    applies, disables and merges on the archive so that exactly those stay restorable and the disk use drops
    (C(walbops retention), docs/retention.md).
  - Every restorable snapshot takes part, explicit and implicit. The newest one is always kept, and so is every
    gid a restore is using.
  - Changed when a snapshot was removed; a second run with the same policy changes nothing. In check mode it
    reports what would be kept and removed and changes nothing.
options:
  archive:
    description: The archive agent, by its name in the layout.
    type: str
    required: true
  volumes:
    description: The volumes to prune; all of the archive's when empty.
    type: list
    elements: str
    default: []
  keep_last:
    description: Keep the N newest snapshots.
    type: int
  keep_within:
    description:
      - Keep every snapshot within this span of the newest one (C(7d), C(36h), C(2w), C(1y6m)).
      - C(m) is a month.
    type: str
  keep_hourly:
    description: Keep the newest snapshot of each of the N newest hours that hold one (UTC).
    type: int
  keep_daily:
    description: The same with days.
    type: int
  keep_weekly:
    description: The same with ISO weeks.
    type: int
  keep_monthly:
    description: The same with months.
    type: int
  keep_yearly:
    description: The same with years.
    type: int
  keep_gids:
    description: Keep these gids.
    type: list
    elements: int
    default: []
notes:
  - At least one keep option must be given; without one the module fails and names them.
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.cluster
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: A day of every snapshot, two weeks of dailies, six months of monthlies
  walbops.walbops.walb_retention:
    archive: a0
    keep_within: 1d
    keep_daily: 14
    keep_monthly: 6
  register: pruned

- name: What would go, without changing anything
  walbops.walbops.walb_retention:
    archive: a0
    volumes: [vol0]
    keep_last: 10
  check_mode: true
"""

RETURN = r"""
volumes:
  description: Per volume, what was kept (with the rules that kept it), removed and done.
  returned: always
  type: list
  elements: dict
  contains:
    vol:
      description: The volume id.
      type: str
    kept:
      description: The kept snapshots, C({gid, time, reasons}).
      type: list
      elements: dict
    removed:
      description: The gids no longer restorable (in check mode, that would be).
      type: list
      elements: int
    bytes_freed:
      description: Bytes the volume's diffs and base take less on the archive's disk (null in check mode).
      type: int
    plan:
      description: The archive operations, C({apply, disable, merge, unmergeable}).
      type: dict
bytes_freed:
  description: The sum over the volumes (null in check mode).
  returned: always
  type: int
policy:
  description: The policy as it was understood.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.walbops.walbops.plugins.module_utils.walbops_cli import (
    WALBOPS_CLUSTER_OPTIONS,
    flag_args,
    run_module,
)

RULES = ("keep_last", "keep_within", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            archive=dict(type="str", required=True),
            volumes=dict(type="list", elements="str", default=[]),
            keep_last=dict(type="int"),
            keep_within=dict(type="str"),
            keep_hourly=dict(type="int"),
            keep_daily=dict(type="int"),
            keep_weekly=dict(type="int"),
            keep_monthly=dict(type="int"),
            keep_yearly=dict(type="int"),
            keep_gids=dict(type="list", elements="int", default=[]),
            **WALBOPS_CLUSTER_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    run_module(module, ["retention", *flag_args([
        ("layout", params["layout"]), ("server", params["archive"]), ("wait_timeout", params["timeout"]),
        *((rule, params[rule]) for rule in RULES), ("keep_gid", params["keep_gids"]),
        ("dry_run", module.check_mode)]), *params["volumes"]], check_aware=False)


if __name__ == "__main__":
    main()
