"""The gid model: snapshots, diffs, the archive's base state, and how diffs chain.

Vocabulary (WalB ``src/meta.hpp``; walb.md §5.5-5.7):

gid
    generation id, a u64 that numbers the points in time at which the storage cut a
    snapshot. Gids grow but need not be consecutive (§5.7 leaves gaps).
MetaSnap ``|B|`` or ``|B,E|``
    an image whose blocks are all at least as new as gid B and none newer than gid E.
    Clean iff B == E (a consistent image); dirty otherwise (a full or hash backup still
    being caught up).
MetaDiff ``snapB-->snapE``
    a wdiff turning an image at snapB into one at snapE. ``is_mergeable`` says that the
    snapshot at its *start* is implicit and may vanish when the diff is merged with the
    one before it; ``is_comp_diff`` marks a "compared" diff from hash replication, which
    applies only to an image with exactly snapB.gid_b and never merges.
MetaState ``<snapB>`` or ``<snapB-->snapE>``
    the content of the archive's ``base`` file; the second form is "applying": diffs
    were being written onto the base image and must be finished with the same diffs.
MetaLsidGid
    the storage's record of which lsid a gid was cut at.

The modules, one concern each:

* :mod:`.timestamps` — unix time to and from WalB's two text forms;
* :mod:`.records` — the four records, validated and printed;
* :mod:`.rules` — relation, apply, merge (WalB's exact rules);
* :mod:`.names` — wdiff file names;
* :mod:`.chain` — :class:`DiffChain` (WalB's MetaDiffManager): chains, restorable
  snapshots, what to apply, restore and merge;
* :mod:`.storage` — gid assignment on the storage.

Everything here is pure: timestamps are unix seconds passed in by the caller, and names
and strings are parsed from and formatted to ``str`` without touching files.
"""

from __future__ import annotations

from .chain import DiffChain, Restorable
from .names import DIFF_FILE_SUFFIX, diff_file_name, parse_diff_file_name
from .records import UINT64_MAX, MetaDiff, MetaLsidGid, MetaSnap, MetaState
from .rules import (
    Relation,
    apply,
    begin_applying,
    can_apply,
    can_merge,
    contains,
    end_applying,
    get_max_progress_diff,
    get_relation,
    merge,
)
from .storage import (
    done_after_transfer,
    is_sent,
    needs_implicit_snapshot,
    next_explicit_gid,
    transfer_diff,
    transfer_end,
)
from .timestamps import (
    MAX_PRINTABLE_TIMESTAMP,
    NO_TIMESTAMP_TEXT,
    format_compact_time,
    format_pretty_time,
    parse_compact_time,
    parse_pretty_time,
)

__all__ = [
    "DIFF_FILE_SUFFIX", "MAX_PRINTABLE_TIMESTAMP", "NO_TIMESTAMP_TEXT", "UINT64_MAX", "DiffChain", "MetaDiff",
    "MetaLsidGid", "MetaSnap", "MetaState", "Relation", "Restorable", "apply", "begin_applying", "can_apply",
    "can_merge", "contains", "diff_file_name", "done_after_transfer", "end_applying", "format_compact_time",
    "format_pretty_time", "get_max_progress_diff", "get_relation", "is_sent", "merge", "needs_implicit_snapshot",
    "next_explicit_gid", "parse_compact_time", "parse_diff_file_name", "parse_pretty_time", "transfer_diff",
    "transfer_end",
]
