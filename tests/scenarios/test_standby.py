"""WalB's n12: the target of a volume switched between two storages and back, twice.

Each storage host has its own walb device holding the volume (different data, as after a
failover). The new target catches the archive up by a hash backup, and sha1 of its device
equals the restored image; the former target is Standby and ships nothing; the snapshots of
the archive's history stay restorable throughout.
"""

from __future__ import annotations

import random

from cluster import fill_random, sha1_of_device, write_random

VOL = "vol0"


def test_n12_switch_target_and_standby_twice(cluster):
    _, device1 = cluster.add_storage("wdev1")
    device0 = cluster.backed_up(VOL)
    fill_random(device1, random.Random(120), cluster.device_size)
    cluster.ctl.init_storage("s1", VOL, "wdev1")
    assert cluster.ctl.get_state("s1", VOL) == "Standby"
    history = [cluster.snapshot_restorable(VOL)]
    devices = {"s0": device0, "s1": device1}
    for round_, (new, old) in enumerate([("s1", "s0"), ("s0", "s1"), ("s1", "s0"), ("s0", "s1")]):
        write_random(devices[new], random.Random(round_), count=24)
        expected = sha1_of_device(devices[new])
        gid = cluster.ctl.switch_target(VOL, new, timeout=120)
        assert (cluster.ctl.get_state(new, VOL), cluster.ctl.get_state(old, VOL)) == ("Target", "Standby")
        assert cluster.restored_sha1(VOL, gid) == expected
        write_random(devices[old], random.Random(100 + round_), count=8)  # standby: not shipped
        write_random(devices[new], random.Random(200 + round_), count=8)
        expected = sha1_of_device(devices[new])
        gid = int(cluster.ctl.run(new, "snapshot", vol=VOL)["gid"])
        cluster.ctl.wait_for_restorable("a0", VOL, gid, timeout=120)
        assert cluster.restored_sha1(VOL, gid) == expected
        history.append((gid, expected))
    restorable = cluster.ctl.get_restorable("a0", VOL, include_implicit=True)
    for gid, sha in history:
        assert gid in restorable and cluster.restored_sha1(VOL, gid) == sha
