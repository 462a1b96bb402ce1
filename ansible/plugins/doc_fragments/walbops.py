# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options every walbops module takes (``extends_documentation_fragment: walbops``)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  walbops_bin:
    description:
      - Path of the C(walbops) command.
      - By default C(walbops) is looked up on C(PATH), then in C(/opt/walbops/venv/bin), where the
        C(walbops.walbops.walbops) role installs it.
    type: path
requirements:
  - walbops installed on the managed host (the C(walbops.walbops.walbops) role does it)
notes:
  - The module runs C(walbops ... --json) on the managed host; the logic and its error messages live there,
    so the command line and the module behave alike.
"""

    # The modules that act through the agents (walbops.cluster).
    CLUSTER = r"""
options:
  layout:
    description:
      - The layout file naming every agent (name, address, port, role) and the cluster key file.
      - The C(walbops.walbops.walbops) role writes it from the inventory.
    type: path
    default: /etc/walbops/layout.yml
  timeout:
    description: Longest wait for the operation, in seconds.
    type: float
    default: 3600
"""

    # Modules with full check mode and diff mode (walbops.check_and_diff).
    CHECK_AND_DIFF = r"""
attributes:
  check_mode:
    support: full
    description: Check mode tells what would change, touching nothing.
  diff_mode:
    support: full
    description: The state before and after is returned as the diff.
"""
