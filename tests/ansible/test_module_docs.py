"""Every module's DOCUMENTATION, EXAMPLES and RETURN render with ansible-doc and agree with its code."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT
from modules import LIBRARY

MODULES = sorted(path.stem for path in LIBRARY.glob("walb_*.py"))
ANSIBLE_DOC = str(Path(sys.executable).parent / "ansible-doc")


class SpecCaptured(Exception):
    def __init__(self, spec: dict, supports_check_mode: bool) -> None:
        super().__init__("captured")
        self.spec = spec
        self.supports_check_mode = supports_check_mode


def argument_spec(name: str) -> SpecCaptured:
    """The module's argument_spec, taken from its AnsibleModule(...) call."""
    spec = importlib.util.spec_from_file_location(f"walbops_doc_{name}", LIBRARY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def capture(argument_spec: dict, supports_check_mode: bool = False, **_: object) -> None:
        raise SpecCaptured(argument_spec, supports_check_mode)

    module.AnsibleModule = capture
    with pytest.raises(SpecCaptured) as captured:
        module.main()
    return captured.value


@pytest.fixture(scope="module")
def docs() -> dict:
    result = subprocess.run([ANSIBLE_DOC, "--json", *(f"walbops.walbops.{name}" for name in MODULES)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return {fqcn.removeprefix("walbops.walbops."): doc for fqcn, doc in json.loads(result.stdout).items()}


def test_there_are_the_modules_the_roles_use() -> None:
    assert set(MODULES) >= {"walb_loopdev", "walb_lvm_vg", "walb_lvm_lv", "walb_ldev", "walb_device", "walb_agent",
                            "walb_volume", "walb_backup", "walb_snapshot", "walb_restore", "walb_info"}


@pytest.mark.parametrize("name", MODULES)
def test_documentation_matches_the_argument_spec(name: str, docs: dict) -> None:
    doc = docs[name]["doc"]
    assert doc["short_description"] and doc["description"]
    captured = argument_spec(name)
    assert captured.supports_check_mode, f"{name} must support check mode"
    assert set(doc["options"]) == set(captured.spec), f"{name}: documented options differ from the code"
    for option, documented in doc["options"].items():
        code = captured.spec[option]
        assert documented.get("type", "str") == code.get("type", "str"), f"{name}.{option}: type"
        assert bool(documented.get("required")) == bool(code.get("required")), f"{name}.{option}: required"
        if "choices" in code:
            assert list(documented.get("choices", [])) == list(code["choices"]), f"{name}.{option}: choices"
        if "default" in code and code["default"] is not None:
            assert documented.get("default") == code["default"], f"{name}.{option}: default"


@pytest.mark.parametrize("name", MODULES)
def test_examples_and_return_parse(name: str, docs: dict) -> None:
    examples = yaml.safe_load(docs[name]["examples"])
    assert isinstance(examples, list) and examples
    assert any(f"walbops.walbops.{name}" in task for task in examples), f"{name}: no example uses the module by FQCN"
    assert docs[name]["return"], f"{name}: RETURN is empty"
