"""Diffs on disk, found by their WalB names, and the chain the gid model picks from them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import FormatError
from ..gid import DIFF_FILE_SUFFIX, DiffChain, MetaDiff, MetaState, diff_file_name, parse_diff_file_name


@dataclass(frozen=True)
class DiffDirectory:
    """The wdiff files of one volume: the directory is the source of truth, as in WalB."""

    path: str
    chain: DiffChain
    files: dict[tuple[object, object], str]  # MetaDiff.key -> file path

    @classmethod
    def empty(cls, path: str) -> "DiffDirectory":
        return cls(path, DiffChain(), {})

    @classmethod
    def scan(cls, path: str) -> "DiffDirectory":
        """Read every ``*.wdiff`` name in ``path``; a name that is not WalB's is an error."""
        chain = DiffChain()
        files: dict[tuple[object, object], str] = {}
        for name in sorted(os.listdir(path)):
            if not name.endswith(DIFF_FILE_SUFFIX):
                continue
            full = os.path.join(path, name)
            try:
                diff = parse_diff_file_name(name, os.path.getsize(full))
            except FormatError as exc:
                raise exc.located(full)
            chain.add(diff)
            files[diff.key] = full
        return cls(path, chain, files)

    def path_of(self, diff: MetaDiff) -> str:
        return self.files[diff.key]

    def path_for(self, diff: MetaDiff) -> str:
        """Where a file holding ``diff`` goes: its WalB name in this directory."""
        return os.path.join(self.path, diff_file_name(diff))

    def add(self, diff: MetaDiff, path: str) -> None:
        """Register a diff whose file is in place at ``path``."""
        self.chain.add(diff)
        self.files[diff.key] = path

    def forget(self, diffs: Iterable[MetaDiff]) -> list[str]:
        """Unregister ``diffs``; returns their files, for the caller to delete."""
        paths = []
        for diff in diffs:
            self.chain.remove(diff)
            paths.append(self.files.pop(diff.key))
        return paths

    def renamed(self, old: MetaDiff, new: MetaDiff) -> None:
        """Register that the file of ``old`` now holds ``new`` under ``new``'s name."""
        self.chain.replace(old, new)
        self.files[new.key] = self.path_for(new)

    def restore_paths(self, base: MetaState, gid: int) -> list[str]:
        """Files to lay over the base, oldest first, for clean snapshot ``gid``.

        Raises:
            OperationError: ``gid`` is not restorable from ``base`` with these files.
        """
        return [self.path_of(diff) for diff in self.chain.diffs_to_restore(base, gid)]
