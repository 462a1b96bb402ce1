"""Diffs on disk, found by their WalB names, and the chain the gid model picks from them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import FormatError
from ..gid import DIFF_FILE_SUFFIX, DiffChain, MetaDiff, MetaState, parse_diff_file_name


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

    def restore_paths(self, base: MetaState, gid: int) -> list[str]:
        """Files to lay over the base, oldest first, for clean snapshot ``gid``.

        Raises:
            OperationError: ``gid`` is not restorable from ``base`` with these files.
        """
        return [self.path_of(diff) for diff in self.chain.diffs_to_restore(base, gid)]
