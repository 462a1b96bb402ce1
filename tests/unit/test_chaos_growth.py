"""The soak's leak test in scripts/chaos.py: a fitted line's rise over the last half of the samples."""

from __future__ import annotations

import importlib.util
import random

from helpers import ROOT

spec = importlib.util.spec_from_file_location("chaos_script", ROOT / "scripts" / "chaos.py")
assert spec is not None and spec.loader is not None
chaos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chaos)


def samples(rss, disk=lambda t: 100 << 20, count: int = 40, step: float = 30, fds=lambda t: 12) -> list[dict]:
    return [{"t": index * step, "disk_bytes a0": disk(index * step),
             "daemons": {"a0": {"rss_kib": rss(index * step), "fds": fds(index * step), "threads": 8}}}
            for index in range(count)]


def test_rise_is_the_fitted_lines_rise():
    assert chaos.rise([(0, 5), (10, 5), (20, 5)]) == 0
    assert abs(chaos.rise([(0, 0), (10, 10), (20, 20)]) - 20) < 1e-9
    assert abs(chaos.rise([(0, 0), (10, 12), (20, 20)]) - 20) < 1e-9  # the line, not the last point


def test_a_steady_leak_is_found_and_a_warm_up_or_noise_is_not():
    rng = random.Random(1)
    leak = chaos.grown_series(samples(lambda t: 100_000 + 40 * t))  # +23 MiB over the last 10 min
    assert leak and leak[0].startswith("a0 rss_kib: +")
    warm_up = samples(lambda t: 100_000 + min(t, 300) * 50 + rng.randrange(-2000, 2000))
    assert chaos.grown_series(warm_up) == []
    disk_growing = samples(lambda t: 100_000, disk=lambda t: (100 << 20) + int(t) * (128 << 10))
    assert [line.split(":")[0] for line in chaos.grown_series(disk_growing)] == ["a0 disk_bytes"]


def test_a_daemon_that_restarted_or_too_few_samples_are_not_judged():
    assert chaos.grown_series(samples(lambda t: 100_000 + 100 * t, count=4)) == []
    restarted = samples(lambda t: 100_000 + 100 * t)
    for sample in restarted[21:]:
        sample["daemons"] = {"a0 (restarted)": sample["daemons"]["a0"]}
    assert [line.split(":")[0] for line in chaos.grown_series(restarted)] == ["a0 (restarted) rss_kib"]


def test_connections_in_flight_are_no_leak_and_a_rising_floor_is():
    """The 60-minute soak's a1 had 11-41 fds, 12 at rest, and a line through the samples rose by 6
    where the spikes fell; their floor stays. A floor that rises (an fd kept per minute) is found."""
    rng = random.Random(2)
    spikes = [rng.random() < 0.3 for _ in range(40)]
    in_flight = samples(lambda t: 100_000, fds=lambda t: 12 + (25 if spikes[int(t // 30)] and t > 900 else 0))
    assert chaos.grown_series(in_flight) == []
    leaking = samples(lambda t: 100_000, fds=lambda t: 12 + int(t // 60) + (25 if spikes[int(t // 30)] else 0))
    assert [line.split(":")[0] for line in chaos.grown_series(leaking)] == ["a0 fds"]
