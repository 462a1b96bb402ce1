"""Fixtures for the Ansible tests: the modules in-process, and the repository's ansible.cfg."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netns  # noqa: E402  (found through the sys.path entry above)


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
