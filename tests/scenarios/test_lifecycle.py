"""WalB's lifecycle scenarios (stest/scenario0.py n5, n6, n13) and bhash, with a real storage.

Each ends as WalB's do: the sha1 of the device taken just before a snapshot equals the sha1 of
that snapshot restored on the archive, before and after the archive changed its diffs.
"""

from __future__ import annotations

import json
import random

import pytest
from cluster import fill_random_at, write_random

# A canary: these scenarios' agents run asyncio in debug mode (wrong-thread calls raise, slow
# callbacks are logged), as every agent did before it cost the suite minutes (tests/helpers.py).
pytestmark = pytest.mark.agents_asyncio_debug

VOL = "vol0"


def snapshots(cluster, device: str, count: int, seed: int) -> list[tuple[int, str]]:
    """``count`` rounds of random writes, each followed by a snapshot restorable on a0."""
    rng = random.Random(seed)
    taken = []
    for _ in range(count):
        write_random(device, rng, count=16)
        taken.append(cluster.snapshot_restorable(VOL))
    return taken


def test_n5_apply_then_restore(cluster):
    """n5: apply at a snapshot; it and the later ones restore as before, the earlier ones are gone."""
    device = cluster.backed_up(VOL)
    taken = snapshots(cluster, device, 3, seed=5)
    (g1, _), (g2, sha2), (g3, sha3) = taken
    base = cluster.ctl.apply("a0", VOL, g2, timeout=120)
    assert base.to_str(False) == f"<|{g2}|>"
    restorable = cluster.ctl.get_restorable("a0", VOL, include_implicit=True)
    assert restorable[0] == g2 and g3 in restorable and g1 not in restorable
    assert cluster.restored_sha1(VOL, g2) == sha2
    assert cluster.restored_sha1(VOL, g3) == sha3
    # Shipping goes on onto the applied base.
    write_random(device, random.Random(55), count=16)
    cluster.snapshot_and_verify(VOL)


def test_n6_merge_then_restore_at_both_ends(cluster):
    """n6: several diffs merged into one; the range's ends restore as before, the inner snapshots
    are gone, and the snapshot after the range is untouched."""
    device = cluster.backed_up(VOL)
    (g1, sha1), (g2, _), (g3, _), (g4, sha4), (g5, sha5) = snapshots(cluster, device, 5, seed=6)
    cluster.ctl.disable_snapshot("a0", VOL, [g2, g3])
    assert cluster.ctl.get_num_diff("a0", VOL, g1, g4) >= 3
    merged = cluster.ctl.merge("a0", VOL, g1, g4, timeout=120)
    assert merged == f"|{g1}|-->|{g4}|"
    assert cluster.ctl.get_num_diff("a0", VOL, g1, g4) == 1
    restorable = cluster.ctl.get_restorable("a0", VOL, include_implicit=True)
    assert {g1, g4, g5} <= set(restorable) and not {g2, g3} & set(restorable)
    assert cluster.restored_sha1(VOL, g1) == sha1
    assert cluster.restored_sha1(VOL, g4) == sha4
    assert cluster.restored_sha1(VOL, g5) == sha5


def test_n13_disable_and_enable_snapshots(cluster):
    """n13: five snapshots; four disabled leave the last one explicit; enabled, all five are back."""
    device = cluster.backed_up(VOL)
    taken = snapshots(cluster, device, 5, seed=13)
    gids = [gid for gid, _ in taken]

    def explicit() -> set[int]:
        return set(cluster.ctl.get_restorable("a0", VOL)) & set(gids)

    assert explicit() == set(gids)
    cluster.ctl.disable_snapshot("a0", VOL, gids[:4])
    assert explicit() == {gids[4]}
    cluster.ctl.enable_snapshot("a0", VOL, gids[:4])
    assert explicit() == set(gids)
    for gid, sha in (taken[0], taken[4]):
        assert cluster.restored_sha1(VOL, gid) == sha


def test_bhash_at_a_snapshot_equals_the_devices(cluster):
    """The archive's bhash of a gid, read from base + diffs, equals the storage's bhash of its
    device at that snapshot; one changed block changes it."""
    device = cluster.backed_up(VOL)
    write_random(device, random.Random(21), count=32)
    gid, _ = cluster.snapshot_restorable(VOL)

    def device_hash() -> str:
        return json.loads(cluster.cli("wdev", "bhash", cluster.device_name, "--json"))["hash"]

    at_gid = device_hash()
    assert cluster.ctl.get_block_hash("a0", VOL, gid) == at_gid
    fill_random_at(device, random.Random(22), 8192, 4096)  # one 4 KiB block
    changed = device_hash()
    assert changed != at_gid
    assert cluster.ctl.get_block_hash("a0", VOL, gid) == at_gid
    later, _ = cluster.snapshot_restorable(VOL)
    assert cluster.ctl.get_block_hash("a0", VOL, later) == changed
