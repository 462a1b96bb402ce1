"""Fixtures for the Ansible tests: the modules in-process, and the repository's ansible.cfg."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import collection  # noqa: E402  (found through the sys.path entry above)
import netns  # noqa: E402
from helpers import ROOT  # noqa: E402


@pytest.fixture(scope="module")
def netns_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Sequence[str]], netns.TestHosts]]:
    """Factory of test hosts in network namespaces, each with its own sshd (see netns.py).

    ``hosts = netns_hosts(["storage0", "storage1", "proxy0", "archive0"])`` starts them; every
    set started in a module is torn down at the module's end, also when a test failed.
    """
    with contextlib.ExitStack() as running:

        def start(names: Sequence[str]) -> netns.TestHosts:
            workdir = tmp_path_factory.mktemp("netns_hosts")
            return running.enter_context(netns.test_hosts(names, workdir))

        yield start


@pytest.fixture(scope="session")
def built_collection(tmp_path_factory: pytest.TempPathFactory) -> collection.Built:
    """The collection tarball and the walbops wheel, built once by scripts/build-collection."""
    return collection.build(tmp_path_factory.mktemp("collection-build"))


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """walbops and its dependencies as wheels: a package index for hosts that cannot reach PyPI."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    # Under scripts/build-collection's lock: setuptools builds walbops in the checkout.
    subprocess.run(["flock", str(ROOT / "pyproject.toml"), sys.executable, "-m", "pip", "wheel", "--quiet",
                    "--wheel-dir", str(directory), f"{ROOT}[snappy,zstd]"], check=True, capture_output=True,
                   timeout=600)
    return directory
