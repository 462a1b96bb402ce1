"""Run the modules in library/ in-process, as Ansible's own module unit tests do.

The module reads its arguments as ansible-core's ``patch_module_args`` hands them over (the way
Ansible's own module tests do) and leaves by ``exit_json`` or
``fail_json`` (SystemExit with the result on stdout). Everything under it is real: the
module runs the installed ``walbops`` command, which touches real loop devices, LVM and
agents.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any

from ansible.module_utils.testing import patch_module_args
from helpers import ROOT

LIBRARY = ROOT / "library"
WALBOPS_BIN = str(Path(sys.executable).parent / "walbops")
# The checkout's view of the collection: the modules import their shared code as
# ansible_collections.walbops.walbops.plugins.module_utils.NAME, as Ansible packs it.
COLLECTIONS = ROOT / "ansible" / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.append(str(COLLECTIONS))


class ModuleFailed(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg"))
        self.result = result


def run_module(name: str, args: dict[str, Any], check: bool = False, diff: bool = True) -> dict[str, Any]:
    """Run library/NAME.py with ``args``; return its result, raise ModuleFailed on fail_json."""
    spec = importlib.util.spec_from_file_location(f"walbops_test_{name}", LIBRARY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    full_args = {"walbops_bin": WALBOPS_BIN, **args, "_ansible_check_mode": check, "_ansible_diff": diff,
                 "_ansible_remote_tmp": "/tmp", "_ansible_keep_remote_files": False}
    out = io.StringIO()
    try:
        with patch_module_args(full_args), contextlib.redirect_stdout(out):
            module.main()
    except SystemExit as leave:
        result = json.loads(out.getvalue())
        if leave.code not in (0, None) or result.get("failed"):
            raise ModuleFailed(result) from None
        return result
    raise AssertionError(f"{name} returned without exit_json or fail_json")
