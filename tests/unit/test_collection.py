"""The checkout's view of the collection walbops.walbops agrees with the repository: one version
everywhere, every module and role in it, and the ansible-core it says it needs is the one installed."""

from __future__ import annotations

import re
import tomllib

import ansible.release
import yaml
from ansible.module_utils.compat.version import LooseVersion
from helpers import ROOT

COLLECTION = ROOT / "ansible" / "collections" / "ansible_collections" / "walbops" / "walbops"


def package_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as pyproject:
        return tomllib.load(pyproject)["project"]["version"]


def test_one_version_everywhere() -> None:
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    role_vars = yaml.safe_load((ROOT / "ansible" / "roles" / "walbops" / "vars" / "main.yml").read_text())
    assert galaxy["namespace"] == galaxy["name"] == "walbops"
    assert galaxy["version"] == role_vars["walbops_collection_version"] == package_version()


def test_the_collection_holds_every_module_role_and_playbook() -> None:
    modules = {path.name for path in (ROOT / "library").glob("walb_*.py")}
    assert modules and modules <= {path.name for path in (COLLECTION / "plugins" / "modules").iterdir()}
    assert (COLLECTION / "plugins" / "module_utils" / "walbops_cli.py").is_file()
    assert (COLLECTION / "plugins" / "doc_fragments" / "walbops.py").is_file()
    assert (COLLECTION / "plugins" / "filter" / "walbops.py").is_file()
    roles = {path.name for path in (ROOT / "ansible" / "roles").iterdir()}
    assert roles == {"walbops", "walbops_storage", "walbops_proxy", "walbops_archive", "walbops_device"}
    assert roles == {path.name for path in (COLLECTION / "roles").iterdir()}
    assert (COLLECTION / "playbooks" / "site.yml").is_file() and (COLLECTION / "playbooks" / "dr_drill.yml").is_file()


def test_requires_ansible_admits_the_installed_ansible_core() -> None:
    runtime = yaml.safe_load((COLLECTION / "meta" / "runtime.yml").read_text())
    bounds = dict(re.fullmatch(r"\s*(>=|<)\s*([0-9.]+)\s*", part).groups()  # type: ignore[union-attr]
                  for part in runtime["requires_ansible"].split(","))
    installed = LooseVersion(ansible.release.__version__)
    assert set(bounds) == {">=", "<"}, runtime["requires_ansible"]
    assert LooseVersion(bounds[">="]) <= installed < LooseVersion(bounds["<"])
