"""Key mode with role key files (docs/protocol.md 4.7): every agent and the controller hold only
their own role's keys, backups flow as with the cluster key, and a proxy's key file cannot act
as the controller (the issue's "a proxy's key can clear-vol an archive")."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, write_random

from walbops.controller import call
from walbops.errors import AuthenticationError, RemoteError
from walbops.net.auth import Keys, load_key

VOL = "vol0"


@pytest.fixture
def role_cluster(tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(tmp_path, role_keys=True, tls=False)
    try:
        yield group
    finally:
        group.close()


def test_role_key_files_back_up_and_keep_each_role_in_its_lane(role_cluster):
    cluster = role_cluster
    device = cluster.make_device("wdev0")
    cluster.start_all()
    cluster.setup_volume(VOL)
    write_random(device, random.Random(7))
    cluster.full_backup(VOL)
    write_random(device, random.Random(8))
    cluster.snapshot_and_verify(VOL)  # logs storage -> proxy -> archive, each with its own key file

    # The agents' files hold no cluster key, and the controller's holds the controller role only.
    proxy_keys = Keys.issue(load_key(cluster.key), ("proxy",))
    for path in cluster.keys_dir.iterdir():
        assert load_key(cluster.key).hex() not in path.read_text()
    archive = cluster.ctl.layout.resolve("a0")
    # A proxy's key file reaches the archive as a proxy, and the archive refuses it clear-vol ...
    with pytest.raises(RemoteError, match="clear-vol on the archive agent needs role controller; "
                                          "this connection is proxy p9") as refused:
        asyncio.run(call(archive, proxy_keys, "clear-vol", {"vol": VOL}, client_id="p9", role="proxy"))
    assert refused.value.reason == "forbidden"
    # ... and cannot even say it is the controller: it holds no controller key.
    with pytest.raises(AuthenticationError, match="holds no controller key"):
        asyncio.run(call(archive, proxy_keys, "clear-vol", {"vol": VOL}, client_id="p9"))
    # A proxy's key file reaches a storage agent not at all: only the controller calls storages.
    storage = cluster.ctl.layout.resolve("s0")
    with pytest.raises(AuthenticationError, match="takes no proxy clients"):
        asyncio.run(call(storage, proxy_keys, "status", {}, client_id="p9", role="proxy"))
    assert cluster.ctl.get_state("a0", VOL) in ("Archived", "WdiffRecv")
    assert cluster.ctl.get_state("s0", VOL) == "Target"


def test_an_agent_refuses_a_role_key_file_made_for_another(role_cluster, tmp_path):
    cluster = role_cluster
    cluster.start("archive")
    # The proxy's file is the archive's: the proxy agent says so and how to make the right one.
    wrong = cluster.keys_dir / "a0.key"
    cluster.agent_args["proxy"] = ["--cluster-key-file", str(wrong)]
    with pytest.raises(AssertionError, match=r"not for the proxy agent p0; make one with walbops keygen "
                                             r"--from CLUSTER_KEY --role proxy --id p0"):
        cluster.start("proxy")
