"""The worker's configuration and decisions (WalB's walb-worker order), without an archive."""

from __future__ import annotations

import pytest

from walbops.controller import Layout, Server, replicated_up_to
from walbops.errors import UsageError
from walbops.gid import MetaDiff, MetaState, Restorable
from walbops.worker import ReplServer, VolumeView, WorkerConfig, choose, merge_run, parse_period

NOW = 1_800_000_000
DAY = 86400


@pytest.mark.parametrize(("text", "seconds"), [
    (90, 90), ("90", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("01:02:03", 3723), ("45s", 45)])
def test_periods_are_walbs(text, seconds):
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "1:2:3", "12:60:00", "-5", "soon"])
def test_bad_periods_are_named(text):
    with pytest.raises(UsageError, match="period"):
        parse_period(text)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "worker.yml"
    path.write_text(text)
    return str(path)


def test_config_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(UsageError, match=r"worker.yml: merge: 'interval' is a required property"):
        WorkerConfig.load(write(tmp_path, "general: {address: h, port: 1, key_file: k}\nmerge: {max_nr: 3}\n"))
    with pytest.raises(UsageError, match=r"worker.yml: general.max_task"):
        WorkerConfig.load(write(tmp_path, "general: {address: h, port: 1, key_file: k, max_task: 0}\n"))
    with pytest.raises(UsageError, match=r"general: give layout"):
        WorkerConfig.load(write(tmp_path, "general: {address: h}\n"))
    with pytest.raises(UsageError, match=r"worker.yml: period '1w'"):
        WorkerConfig.load(write(tmp_path, "general: {address: h, port: 1, key_file: k}\napply: {keep_period: 1w}\n"))
    config = WorkerConfig.load(write(tmp_path, (
        "general: {address: 127.0.0.1, port: 10200, key_file: k, max_task: 2}\n"
        "apply: {keep_period: 3d}\nmerge: {interval: 10m, max_size: 64M, threshold_nr: 20}\n"
        "retention: {interval: 1h, keep_daily: 7, keep_within: 2d}\n")))
    assert (config.max_task, config.keep_period, config.apply_interval) == (2, 3 * DAY, DAY)
    assert (config.merge_interval, config.merge_max_size, config.merge_threshold_nr) == (600, 64 << 20, 20)
    assert config.retention is not None and config.retention.keep_daily == 7


def chain(flags: str) -> tuple[MetaDiff, ...]:
    return tuple(MetaDiff(i, i + 1, is_mergeable=flag == "M", timestamp=NOW - (len(flags) - i) * DAY,
                          data_size=100) for i, flag in enumerate(flags))


def view(vol: str, flags: str, running: tuple[str, ...] = (), base: str = "<|0|>") -> VolumeView:
    diffs = chain(flags)
    restorable = (Restorable(0, NOW - 100 * DAY, False),) + tuple(
        Restorable(d.snap_e.gid_b, d.timestamp, True) for d in diffs)
    return VolumeView(vol, "Archived", MetaState.parse(base), diffs, restorable, running)


def config(**options) -> WorkerConfig:
    archive = Server("a0", "127.0.0.1", 1, "archive")
    return WorkerConfig(Layout((archive,), "k"), archive, **options)


def test_merge_run_takes_the_longest_mergeable_run_within_limits():
    diffs = chain("-MM-MMMM-M")
    assert [d.snap_b.gid_b for d in merge_run(diffs, 10, 10_000)] == [3, 4, 5, 6, 7]
    assert [d.snap_b.gid_b for d in merge_run(diffs, 3, 10_000)] == [0, 1, 2]
    assert [d.snap_b.gid_b for d in merge_run(diffs, 10, 250)] == [0, 1]
    assert merge_run(chain("----"), 10, 10_000) == []


def test_choose_follows_walbs_order_one_task_per_volume():
    views = [view("busy", "MMMM", running=("Restore",)), view("small", "-MM"), view("big", "-MMMMMM"),
             view("half", "--", base="<|0|-->|1|>")]
    tasks = choose(views, config(keep_period=3 * DAY, merge_interval=600, merge_threshold_nr=3), NOW, {})
    assert [(t.vol, t.kind) for t in tasks] == [("half", "finish-apply"), ("big", "apply"), ("small", "apply")]
    assert tasks[1].gid == 5  # the newest snapshot at least three days old (its diff: NOW - 3 days)
    # Recently applied: the merges come next, by count first.
    last = {("big", "apply"): NOW, ("small", "apply"): NOW}
    tasks = choose(views[:3], config(keep_period=3 * DAY, merge_interval=600, merge_threshold_nr=5), NOW, last)
    assert [(t.vol, t.kind, t.gid, t.gid_e) for t in tasks] == [("big", "merge", 0, 7), ("small", "merge", 0, 3)]
    assert "7 diffs >= 5" in tasks[0].reason and "merge interval" in tasks[1].reason


def test_retention_runs_by_interval():
    from walbops.retention import Policy

    tasks = choose([view("v", "--")], config(retention=Policy(keep_last=1), retention_interval=3600), NOW,
                   {("v", "retention"): NOW - 10})
    assert tasks == []
    tasks = choose([view("v", "--")], config(retention=Policy(keep_last=1), retention_interval=3600), NOW, {})
    assert [t.kind for t in tasks] == ["retention"]


A1 = Server("a1", "10.0.0.6", 10200, "archive")
A2 = Server("a2", "10.0.0.7", 10200, "archive")


def repl_view(vol: str, replicas: tuple[tuple[str, str], ...] = (), flags: str = "----") -> VolumeView:
    base = view(vol, flags)
    return VolumeView(vol, "Archived", base.base, base.chain, base.restorable, (), replicas, f"|{len(flags)}|")


def test_replication_goes_to_each_destination_not_at_the_latest_snapshot():
    servers = (ReplServer(A1), ReplServer(A2), ReplServer(Server("a3", "10.0.0.8", 1, "archive"), enabled=False))
    cfg = config(repl_servers=servers)
    at_latest = repl_view("v1", (("10.0.0.6:10200", "|4|"), ("10.0.0.7:10200", "|2|")))
    (task,) = choose([at_latest], cfg, NOW, {})
    assert (task.kind, task.server, task.gid) == ("replicate", A2, 4) and "a2 is at |2|, here |4|" in task.reason
    # Least recently replicated first; one task per volume per round.
    fresh = repl_view("v2")
    (task,) = choose([fresh], cfg, NOW, {("v2", "replicate:a1"): NOW - 10})
    assert task.server == A2 and "not replicated yet" in task.reason
    # The interval holds back a destination replicated recently; a disabled volume is left alone.
    timed = config(repl_servers=(ReplServer(A1, interval=600),))
    assert choose([fresh], timed, NOW, {("v2", "replicate:a1"): NOW - 10}) == []
    assert choose([fresh], config(repl_servers=(ReplServer(A1),), repl_disabled_volumes=("v2",)), NOW, {}) == []


def test_max_send_size_caps_the_target_gid():
    cfg = config(repl_servers=(ReplServer(A1, max_send_size=250),))
    (task,) = choose([repl_view("v", (("10.0.0.6:10200", "|1|"),), flags="------")], cfg, NOW, {})
    assert task.gid == 3  # diffs of 100 bytes: |1|->|2|->|3| fit in 250 bytes, the next would not
    (task,) = choose([repl_view("v", (("10.0.0.6:10200", "|1|"),), flags="------")],
                     config(repl_servers=(ReplServer(A1, max_send_size=50),)), NOW, {})
    assert task.gid == 2  # at least one diff goes


def test_repl_config_names_layout_archives_or_addresses(tmp_path):
    layout = tmp_path / "layout.yml"
    layout.write_text("key_file: k\nservers:\n  - {name: a0, address: 127.0.0.1, port: 10200, role: archive}\n"
                      "  - {name: a1, address: 10.0.0.6, port: 10200, role: archive}\n"
                      "  - {name: p0, address: 127.0.0.1, port: 10100, role: proxy}\n")
    loaded = WorkerConfig.load(write(tmp_path, (
        f"general: {{layout: {layout}, server: a0, max_replication_task: 2}}\n"
        "repl: {servers: {a1: {interval: 10m, max_send_size: 1G}, far: {address: 10.9.0.1, port: 10200}},"
        " disabled_volumes: [scratch]}\n")))
    assert loaded.max_replication_task == 2 and loaded.repl_disabled_volumes == ("scratch",)
    far = Server("far", "10.9.0.1", 10200, "archive")
    assert loaded.repl_servers == (ReplServer(A1, 600, 1 << 30), ReplServer(far))
    with pytest.raises(UsageError, match="repl.servers.p0: a proxy, not an archive"):
        WorkerConfig.load(write(tmp_path, f"general: {{layout: {layout}}}\nrepl: {{servers: {{p0: {{}}}}}}\n"))
    with pytest.raises(UsageError, match="both address and port"):
        WorkerConfig.load(write(tmp_path, f"general: {{layout: {layout}}}\nrepl: {{servers: {{x: {{port: 1}}}}}}\n"))


@pytest.mark.parametrize("restorable, reached", [
    ([], False), ([3, 5], False), ([3, 6], True),
    # A synchronizing destination past gid 6 by a diff the proxy merged over it (found by scripts/chaos:
    # the worker waited for 6 itself, which that archive never lists, until its hour-long timeout).
    ([3, 7], True), ([7], True),
])
def test_a_replication_is_done_when_the_destination_reached_the_gid_or_went_past_it(restorable, reached):
    assert replicated_up_to(6, restorable) is reached
