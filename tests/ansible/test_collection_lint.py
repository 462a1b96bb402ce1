"""The Ansible content passes ansible-lint's production profile, and the built collection passes
ansible-test sanity (validate-modules, pylint, pep8, yamllint, ansible-doc, import, ...)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import collection
from helpers import ROOT

BIN = Path(sys.executable).parent
# ansible-test bootstraps pip into each sanity virtualenv with a script it downloads from
# ci-files.testing.ansible.com, which these machines cannot reach; the stand-in beside this file
# does the same with ensurepip and the package index (see its docstring).
GET_PIP_STAND_IN = ROOT / "tests" / "sanity" / "get_pip.py"
GET_PIP_CACHE = Path.home() / ".ansible" / "test" / "cache"


def test_ansible_lint_production_profile() -> None:
    # The profile and the paths that are not Ansible content are in .ansible-lint.
    result = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--nocolor"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


def test_ansible_test_sanity_on_the_built_collection(built_collection: collection.Built, tmp_path: Path) -> None:
    pip_version = ansible_test_pip_version()
    cached = GET_PIP_CACHE / f"get_pip_{pip_version.replace('.', '_')}.py"
    if not cached.exists():
        GET_PIP_CACHE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GET_PIP_STAND_IN, cached)
    tree = collection.unpack(built_collection, tmp_path)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    result = subprocess.run([str(BIN / "ansible-test"), "sanity", "--local", "--python", python], cwd=tree,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-20000:]
    assert 'Running sanity test "validate-modules"' in result.stdout + result.stderr


def ansible_test_pip_version() -> str:
    """The pip version ansible-test bootstraps (its get-pip script is cached under that name)."""
    from ansible_test._internal.python_requirements import get_venv_packages
    from ansible_test._internal.util import version_to_str

    # get_venv_packages takes a PythonConfig; only .version is read.
    class Python:
        version = version_to_str(sys.version_info[:2])

    return get_venv_packages(Python())["pip"]  # type: ignore[arg-type]
