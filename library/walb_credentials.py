#!/usr/bin/python
# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module walb_credentials: a host's certificates and keys, in one step."""

from __future__ import annotations

DOCUMENTATION = r"""
module: walb_credentials
short_description: Put a host's TLS certificates and keys, or its role key files, in place in one step
description:
  - Makes the directory O(dir) hold the given files, public ones with mode 0644 and secret ones with
    mode 0600, each replaced atomically and only when its content or mode differs. Other files in the
    directory are left alone.
  - One task per host instead of a copy per file, which on a fleet is two module runs per file, host
    and run.
  - A key given with its certificate (V(NAME.key) beside V(NAME.crt)) must be that certificate's key;
    a mix-up is refused before anything is written.
  - The contents reach C(walbops ensure credentials) on its standard input, never on a command line;
    secret contents appear in no result or diff.
options:
  dir:
    description: The directory; created with O(dir_mode) when missing.
    type: path
    required: true
  dir_mode:
    description: The directory's mode, in octal.
    type: str
    default: "0750"
  public:
    description: File name (no path) to content, for certificates and CA bundles (mode 0644).
    type: dict
    default: {}
  secret:
    description: File name (no path) to content, for private keys and key files (mode 0600).
    type: dict
    default: {}
extends_documentation_fragment:
  - walbops.walbops.walbops
  - walbops.walbops.walbops.check_and_diff
author: walbops developers (@walbops)
"""

EXAMPLES = r"""
- name: The storage role's certificate and key, and the CA's certificate
  walbops.walbops.walb_credentials:
    dir: /etc/walbops/tls
    public:
      ca.crt: "{{ lookup('ansible.builtin.file', 'files/ca/ca.crt') }}"
      storage.crt: "{{ lookup('ansible.builtin.file', 'files/ca/issued/storage/' ~ inventory_hostname ~ '.crt') }}"
    secret:
      storage.key: "{{ lookup('ansible.builtin.file', 'files/ca/issued/storage/' ~ inventory_hostname ~ '.key') }}"
"""

RETURN = r"""
dir:
  description: The directory.
  returned: always
  type: str
files:
  description: The names of the files given, in order.
  returned: always
  type: list
  elements: str
written:
  description: The files written (or, in check mode, that would be), because their content or mode differed.
  returned: always
  type: list
  elements: str
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.walbops.walbops.plugins.module_utils.walbops_cli import (
    WALBOPS_COMMON_OPTIONS,
    run_module,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dir=dict(type="path", required=True),
            dir_mode=dict(type="str", default="0750"),
            public=dict(type="dict", default={}),
            secret=dict(type="dict", default={}, no_log=True),
            **WALBOPS_COMMON_OPTIONS,
        ),
        supports_check_mode=True,
    )
    params = module.params
    bundle = json.dumps({"public": params["public"], "secret": params["secret"]})
    run_module(module, ["ensure", "credentials", params["dir"], "--dir-mode", params["dir_mode"]], stdin=bundle)


if __name__ == "__main__":
    main()
