"""The collection walbops.walbops as a user gets it: built by scripts/build-collection, installed
with ansible-galaxy into an empty collections path, used from a directory of one's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from helpers import ROOT

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Built:
    tarball: Path  # walbops-walbops-VERSION.tar.gz
    wheel: Path  # walbops-VERSION-py3-none-any.whl, what walbops_install_from: wheel installs


def build(directory: Path) -> Built:
    result = subprocess.run([str(ROOT / "scripts" / "build-collection"), str(directory)], capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-collection failed:\n{result.stdout}{result.stderr}")
    tarball, wheel = (Path(line) for line in result.stdout.split())
    return Built(tarball, wheel)


def install(built: Built, collections_path: Path) -> Path:
    """``ansible-galaxy collection install TARBALL -p PATH``; the installed collection's directory."""
    # Outside the checkout and with only that path configured: from the checkout, its ansible.cfg
    # lists ansible/collections, where walbops.walbops of this version "is already installed".
    collections_path.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", str(built.tarball), "-p",
                    str(collections_path)], check=True, capture_output=True, text=True, timeout=300,
                   cwd=collections_path, env=user_env(collections_path))
    installed = collections_path / "ansible_collections" / "walbops" / "walbops"
    if not (installed / "MANIFEST.json").is_file():
        raise RuntimeError(f"ansible-galaxy installed nothing in {installed}")
    return installed


def unpack(built: Built, directory: Path) -> Path:
    """The tarball unpacked where ansible-test wants a collection: .../ansible_collections/NS/NAME."""
    target = directory / "ansible_collections" / "walbops" / "walbops"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tarfile.open(built.tarball) as packed:
        packed.extractall(target, filter="data")
    return target



def user_env(collections_path: Path) -> dict[str, str]:
    """A user's shell: no ANSIBLE_* of ours, only the collections installed in ``collections_path``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    return {**env, "ANSIBLE_COLLECTIONS_PATH": str(collections_path)}
