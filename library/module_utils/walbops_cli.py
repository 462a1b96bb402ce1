# Copyright: (c) 2026, walbops developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every walbops module shares: find the ``walbops`` command, run it with ``--json``, exit.

The modules are thin on purpose: the logic (what exists, what would change, how to change
it) lives in ``walbops ensure ...`` and ``walbops info``, which print one JSON object:
``changed``, ``diff`` (``before``/``after``) and the values to return. A module maps its
options to that command line, runs it once and builds its result here.
"""

from __future__ import annotations

import json
import os

# Where walbops.walbops.walbops installs walbops; searched after PATH.
DEFAULT_VENV_BIN = "/opt/walbops/venv/bin"

WALBOPS_COMMON_OPTIONS = dict(
    walbops_bin=dict(type="path"),
)

# Options of the modules that act through the agents of a layout (doc fragment walbops.cluster).
WALBOPS_CLUSTER_OPTIONS = dict(
    WALBOPS_COMMON_OPTIONS,
    layout=dict(type="path", default="/etc/walbops/layout.yml"),
    timeout=dict(type="float", default=3600.0),
)


def find_walbops(module):
    """The walbops command: ``walbops_bin``, else PATH, else the walbops.walbops.walbops virtualenv."""
    explicit = module.params.get("walbops_bin")
    if explicit:
        if not os.access(explicit, os.X_OK):
            module.fail_json(msg=f"walbops_bin={explicit} is not an executable file")
        return explicit
    return module.get_bin_path("walbops", required=True, opt_dirs=[DEFAULT_VENV_BIN])


def flag_args(pairs):
    """``--name value`` for every pair whose value is set; True adds a bare flag; lists repeat."""
    args = []
    for name, value in pairs:
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                args.extend([flag, str(item)])
        else:
            args.extend([flag, str(value)])
    return args


def run_walbops(module, args, check_aware=True, stdin=None):
    """Run ``walbops ARGS --json`` (and ``--check`` in check mode); return its JSON object.

    ``stdin``: text for the command's standard input (secrets go there, never into ARGS).
    A non-zero exit fails the task with walbops's own message, which names the object
    and the option that would override a refusal.
    """
    command = [find_walbops(module), *args, "--json"]
    if check_aware and module.check_mode:
        command.append("--check")
    rc, out, err = module.run_command(command, data=stdin, binary_data=stdin is not None)
    if rc != 0:
        message = err.strip().removeprefix("walbops: ") or out.strip() or f"walbops exited with {rc}"
        module.fail_json(msg=message, rc=rc, cmd=command, stderr=err)
    try:
        result = json.loads(out)
    except ValueError:
        module.fail_json(msg=f"walbops printed no JSON object: {out[:200]!r}", cmd=command, stderr=err)
    if not isinstance(result, dict):
        module.fail_json(msg=f"walbops printed {type(result).__name__}, not a JSON object", cmd=command)
    return result


def exit_with(module, result):
    """The one place a module's result is built: changed, a diff when asked for, the values."""
    values = dict(result)
    changed = bool(values.pop("changed", False))
    diff = values.pop("diff", None)
    if diff is not None and module._diff:
        values["diff"] = diff
    module.exit_json(changed=changed, **values)


def run_module(module, args, check_aware=True, stdin=None):
    exit_with(module, run_walbops(module, args, check_aware, stdin))
