"""The worker's configuration and decisions (WalB's walb-worker order), without an archive."""

from __future__ import annotations

import pytest

from walbops.controller import Layout, Server
from walbops.errors import UsageError
from walbops.gid import MetaDiff, MetaState, Restorable
from walbops.worker import VolumeView, WorkerConfig, choose, merge_run, parse_period

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
