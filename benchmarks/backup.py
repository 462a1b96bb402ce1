"""Full and incremental backup through the walb device and the agents, against a raw TCP copy and a hash scan.

Prints one JSON object (progress goes to stderr). Everything runs on this machine over
127.0.0.1: a walb device (FUSE + loop) over two files, the storage, proxy and archive agents
as processes on free ports, driven with walbops.controller.Controller as in
tests/scenarios/test_tutorial.py. Every walbops figure is set against a plain-Python
baseline run in the same run, on the same data, with the same page-cache state (dropped
before each timed step), because absolute times on shared machines are not stable:

(a) ``full-bkp`` of a volume whose 1 MiB regions are half random and half zeros, timed from
    the request until the storage is Target (the archive has fdatasync'ed the base and
    acknowledged), against a raw TCP copy of the same device: a sender reading it in 1 MiB
    O_DIRECT blocks into a socket, a receiver process writing a file and fsyncing at the end.
    The copy runs once before and once after the backup and the ratio uses their mean, so a
    drift in the machine's load does not favour either side. Note that the copy writes every
    byte while the archive's base is sparse (zero bulks travel as ``zero`` records).
(b) after 1 % of the volume changed by random 4 KiB O_DIRECT writes (distinct blocks, queue
    depth 1, so each write is a log pack of its own: 4 KiB of header per 4 KiB of data; the
    ldev ring is sized to hold every round without overflow), ``snapshot`` until the
    archive lists the gid as restorable, against a hash-scan incremental as blocksync/bdsync
    do: the target process reads the previous image (the raw copy of (a)) in 1 MiB blocks and
    sends their digests, the source reads the volume in 1 MiB blocks, compares digests and
    sends the blocks that differ, the target writes them and fsyncs. The storage agent is
    stopped while the changes are written and started just after the snapshot, so *every*
    changed byte is shipped inside the timed window (with the agents running, most of it would
    already have left during the writes and the window would only hold the tail). The scan
    reads the volume from the ddev file (``--scan-source ddev``, after the device applied
    every write) so that it does not pay for walbops' FUSE layer; ``--scan-source device``
    reads /dev/walbops/NAME instead.
(c) (b) at 1 % and 5 % on every volume size (the one of (a), and ``--scale-sizes``), as a
    table, with a least-squares fit ``seconds = a + b * changed GiB + c * volume GiB`` for
    each method: walbops should have c ~ 0, the scan pays mostly c (with 1 MiB blocks, 1 % of
    random 4 KiB writes already touches ~92 % of the blocks, so it resends most of the volume).
(d) VmHWM of each agent process at the end of (a).
(e) hash backup: a volume like (a)'s is backed up in full, goes standby (its logs are not
    shipped), 1 % and then 10 % of it change by random 4 KiB writes, and ``hash-bkp`` with 4 KiB
    bulks brings the archive up to it, timed from the request until the storage is Target again;
    against that full backup, and against ``rsync --inplace --no-whole-file`` bringing the
    previous image (a raw copy after the first full backup) up to the changed one (the ddev
    file), the tool an operator would reach for. ``--hash-rounds`` rounds (3), each beginning
    with a new full backup into the cleared archive; the medians are compared (one run each
    swung by 20 % on this machine's disk). The bytes each moves are reported: the hash backup's
    stored diff and the hashes it exchanged; rsync's literal data and total bytes sent. The clock
    starts at the ``hash-bkp`` request (the standby volume stopped before it, as the controller
    prepares it).
(f) TLS: (a) and (b) at 1 % on fresh clusters in key mode and in TLS mode (docs/security.md),
    ``--tls-rounds`` rounds in alternating order; the cost is TLS's mean time over key mode's,
    minus one.
(g) metrics: the same with every agent serving Prometheus metrics and scraped every second
    (docs/operations.md), ``--metrics-rounds`` rounds, against metrics off.

    .venv/bin/python benchmarks/backup.py [--quick] [--size 2G] [--scale-sizes 1G,4G|none] [--skip-large]
                                          [--changes 1,5] [--dir /var/tmp] [--verify]

``--scale-sizes none --changes 1`` runs only (a), (b) and (d) on ``--size`` (about 2 minutes at 2G).

Targets (issue 4): full backup >= 0.7x the raw TCP copy; snapshot -> restorable >= 10x faster
than the hash scan at 1 % change; every agent under 256 MiB peak RSS. (e): the hash backup
faster than rsync and than the full backup at both change rates, its bytes near the changed
bytes. (f) (issue 13): TLS costs under 15 % on (a) and under 10 % on (b). (g) (issue 14): metrics
cost under 3 % on both. Needs root, FUSE and
loop devices, and 3.3x the largest volume size + 1 GiB of free disk in ``--dir`` (a scale
size that does not fit is skipped and listed under ``skipped``; ``--skip-large`` leaves out
those above ``--size``). The default run takes about 5 minutes. ``--quick`` runs the same
steps on 64 and 32 MiB volumes in about 20 s and checks the results (sha1 of the restored
snapshot and of the scanned image against the device).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import mmap
import os
import shutil
import signal
import socket
import stat
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _cluster import Cluster, MiB, drop_caches, free_port, peak_rss

GiB = 1 << 30
BLOCK = 4096  # [bytes] the size of each changing write
FULL_TARGET = 0.7  # walbops full backup throughput / raw TCP copy throughput
INCREMENTAL_TARGET = 10.0  # hash-scan seconds / walbops snapshot->restorable seconds, at 1 %
RSS_TARGET = 256 * MiB  # [bytes] per agent
TLS_FULL_TARGET = 0.15  # (f): TLS mode's extra time on (a), as a fraction of key mode's
TLS_INCREMENTAL_TARGET = 0.10  # (f): the same on (b)
METRICS_TARGET = 0.03  # (g): metrics on and scraped: extra time on (a) and on (b), as a fraction
RECORD = struct.Struct("<QI")  # a hash-scan block on the wire: index, length (then the bytes)
END = (1 << 64) - 1  # RECORD index that ends the hash-scan stream
DISK_FACTOR = 3.3  # free disk a volume needs, in volume sizes (ddev, scan target, archive base, diffs)


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    return int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)


def label(size: int) -> str:
    return f"{size // GiB}G" if size % GiB == 0 else f"{size // MiB}M"


STOPPED: list[int] = []  # signals that asked us to stop
CLEANING: list[bool] = []  # non-empty while a cleanup runs: signals wait for its end


def on_signal(number: int, _frame: Any) -> None:
    """SIGTERM/SIGINT: raise SystemExit so that every cleanup runs; during a cleanup, only note it."""
    STOPPED.append(number)
    if not CLEANING:
        raise SystemExit(128 + number)


@contextlib.contextmanager
def cleaning() -> Iterator[None]:
    """Run a cleanup to its end whatever signal arrives; exit afterwards if one did."""
    CLEANING.append(True)
    try:
        yield
    finally:
        CLEANING.pop()
    if STOPPED and not CLEANING:
        raise SystemExit(128 + STOPPED[0])


def say(text: str) -> None:
    if STOPPED:  # again: an exception raised while a finaliser ran is only printed
        raise SystemExit(128 + STOPPED[0])
    print(f"[backup bench] {text}", file=sys.stderr, flush=True)


def hasher() -> tuple[str, Callable[..., Any]]:
    """The digest the hash scan compares: xxhash if installed (as blocksync can), else sha1."""
    try:
        import xxhash  # type: ignore[import-not-found]

        return "xxh3_128", xxhash.xxh3_128
    except ImportError:
        return "sha1", hashlib.sha1


def open_reader(path: str) -> int:
    """O_DIRECT for a block device (the faster way through FUSE + loop), buffered for a file."""
    if stat.S_ISBLK(os.stat(path).st_mode):
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    return os.open(path, os.O_RDONLY)


def connect(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> socket.socket:
    """Connect to a helper process's listener once it is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the helper on port {port} did not start") from None
            time.sleep(0.01)


def read_exact(stream: Any, count: int) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise SystemExit("the peer closed the connection early")
    return bytes(data)


def helper(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def reaped(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Wait for a helper process after its work (it must succeed); kill it if the work failed."""
    try:
        yield
    except BaseException:
        process.kill()
        process.wait()
        raise
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise SystemExit(f"helper {process.args!r} hung") from None
    if code != 0:
        raise SystemExit(f"helper {process.args!r} failed with {code}")


# --------------------------------------------------------------------------- the baselines

def serve_raw_receiver(port: int, path: str) -> None:
    """The raw copy's receiving end: everything from one connection into ``path``, fsync, answer."""
    listener = socket.create_server(("127.0.0.1", port))
    conn, _ = listener.accept()
    listener.close()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    while True:
        filled = 0
        while filled < MiB:
            got = conn.recv_into(view[filled:])
            if not got:
                break
            filled += got
        if filled:
            os.write(fd, view[:filled])
        if filled < MiB:
            break
    os.fsync(fd)
    os.close(fd)
    conn.sendall(b"done\n")
    conn.close()


def raw_tcp_copy(device: str, target: str) -> float:
    """Seconds to copy ``device`` into the file ``target`` over loopback TCP (1 MiB O_DIRECT reads)."""
    port = free_port()
    receiver = helper("--serve-raw-receiver", str(port), target)
    with reaped(receiver):
        sock = connect(port, receiver)
        buffer = mmap.mmap(-1, MiB)
        view = memoryview(buffer)
        start = time.perf_counter()
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
        try:
            with sock:
                offset = 0
                while count := os.preadv(fd, [buffer], offset):
                    sock.sendall(view[:count])
                    offset += count
                sock.shutdown(socket.SHUT_WR)
                if sock.makefile("rb").readline() != b"done\n":
                    raise SystemExit("the raw copy's receiver did not confirm")
        finally:
            os.close(fd)
        seconds = time.perf_counter() - start
        view.release()
    return seconds


def serve_hash_target(port: int, path: str, block: int) -> None:
    """The hash scan's target end: send the digest of every block, write the blocks sent back."""
    _name, digest = hasher()
    listener = socket.create_server(("127.0.0.1", port))
    conn, _ = listener.accept()
    listener.close()

    def send_digests() -> None:
        fd = open_reader(path)
        buffer = bytearray(block)
        view = memoryview(buffer)
        offset = 0
        try:
            while count := os.preadv(fd, [buffer], offset):
                conn.sendall(digest(view[:count]).digest())
                offset += count
        except BaseException:
            conn.shutdown(socket.SHUT_RDWR)  # the source sees the end instead of waiting for ever
            raise
        finally:
            os.close(fd)

    sender = threading.Thread(target=send_digests, name="digests")
    sender.start()
    fd = os.open(path, os.O_WRONLY)
    reader = conn.makefile("rb")
    written = 0
    while True:
        index, length = RECORD.unpack(read_exact(reader, RECORD.size))
        if index == END:
            break
        os.pwrite(fd, read_exact(reader, length), index * block)
        written += 1
    os.fsync(fd)
    os.close(fd)
    sender.join()
    conn.sendall(json.dumps({"written": written}).encode() + b"\n")
    conn.close()


def hash_scan(source: str, target: str, block: int) -> dict[str, Any]:
    """Bring ``target`` up to ``source`` as blocksync does; seconds, blocks and bytes sent."""
    _name, digest = hasher()
    size = digest().digest_size
    port = free_port()
    process = helper("--serve-hash-target", str(port), target, str(block))
    with reaped(process):
        sock = connect(port, process)
        buffer = mmap.mmap(-1, block)
        view = memoryview(buffer)
        offset = index = differing = sent = 0
        start = time.perf_counter()
        fd = open_reader(source)
        try:
            with sock:
                reader = sock.makefile("rb")
                while count := os.preadv(fd, [buffer], offset):
                    if digest(view[:count]).digest() != read_exact(reader, size):
                        sock.sendall(RECORD.pack(index, count))
                        sock.sendall(view[:count])
                        differing += 1
                        sent += count
                    offset += count
                    index += 1
                sock.sendall(RECORD.pack(END, 0))
                answer = json.loads(reader.readline())
        finally:
            os.close(fd)
        seconds = time.perf_counter() - start
        view.release()
    if answer["written"] != differing:
        raise SystemExit(f"the hash scan's target wrote {answer['written']} blocks, not {differing}")
    return {"seconds": round(seconds, 3), "blocks": index, "blocks_sent": differing,
            "blocks_sent_fraction": round(differing / max(1, index), 3), "bytes_sent": sent,
            "bytes_scanned": 2 * offset}


# --------------------------------------------------------------------------- data

def fill_mixed(path: str, size: int, rng: np.random.Generator) -> None:
    """Half the 1 MiB regions random, the others zeros (written, not holes)."""
    regions = size // MiB
    random_regions = set(rng.permutation(regions)[: regions // 2].tolist())
    zeros = bytes(MiB)
    with open(path, "wb") as stream:
        for region in range(regions):
            stream.write(rng.bytes(MiB) if region in random_regions else zeros)
        os.fsync(stream.fileno())


def random_writes(device: str, size: int, count: int, rng: np.random.Generator) -> float:
    """``count`` O_DIRECT writes of 4 KiB of random bytes at distinct random offsets; seconds."""
    blocks = rng.choice(size // BLOCK, size=count, replace=False)
    data = rng.bytes(count * BLOCK)
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, BLOCK)
    start = time.perf_counter()
    try:
        for index, block in enumerate(blocks.tolist()):
            buffer[:] = data[index * BLOCK:(index + 1) * BLOCK]
            os.pwrite(fd, buffer, block * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def sha1_of(path: str) -> str:
    digest = hashlib.sha1()
    fd = open_reader(path)
    buffer = mmap.mmap(-1, MiB)
    offset = 0
    try:
        while count := os.preadv(fd, [buffer], offset):
            digest.update(buffer[:count])
            offset += count
    finally:
        os.close(fd)
    return digest.hexdigest()


# --------------------------------------------------------------------------- one volume

def bench_volume(work: Path, index: int, size: int, changes: list[float], args: argparse.Namespace) -> dict[str, Any]:
    """Build a cluster for one volume size and run (a), (d) and (b) at each change rate on it."""
    root = work / f"vol{index}-{label(size)}"
    root.mkdir()
    rng = np.random.default_rng(args.seed + index)
    ddev, ldev, target = str(root / "ddev.img"), str(root / "ldev.img"), str(root / "previous.img")
    say(f"{label(size)}: writing the volume (half random, half zeros)")
    fill_mixed(ddev, size, rng)
    # Each 4 KiB write at queue depth 1 is one log pack: a 4 KiB header and its data. The ring
    # holds every round (shipped logs are released lazily, at the device's checkpoints).
    ring = int(2.5 * size * sum(changes) / 100) + 64 * MiB
    with open(ldev, "wb") as stream:
        stream.truncate(ring // MiB * MiB)
    cluster = Cluster(root, tuning={})
    ctl, vol = cluster.ctl, cluster.vol
    result: dict[str, Any] = {"volume_bytes": size, "ldev_bytes": os.path.getsize(ldev)}
    slow = slow_timeout(size)
    try:
        device = start_group(cluster, f"bkb{os.getpid()}v{index}", ldev, ddev)

        say(f"{label(size)}: raw TCP copy of the device")
        drop_caches()
        raw_runs = [raw_tcp_copy(device, target)]

        say(f"{label(size)}: walbops full backup")
        full_seconds = timed_full_backup(cluster, slow, args.bulk_size)
        archive_state = ctl.get_state("a0", vol)
        if archive_state not in ("Archived", "WdiffRecv"):  # the first (empty) diff may already be arriving
            raise SystemExit(f"after the full backup the archive is {archive_state}")
        rss = {role: peak_rss(pid) for role, pid in cluster.agent_pids().items()}
        rss_device = peak_rss(cluster.device_pid())
        say(f"{label(size)}: raw TCP copy of the device again (the baseline brackets the backup)")
        drop_caches()
        raw_runs.append(raw_tcp_copy(device, target))
        raw_seconds = sum(raw_runs) / len(raw_runs)
        result["full_backup"] = {
            "walbops": {"seconds": round(full_seconds, 3), "mb_per_s": round(size / full_seconds / 1e6, 1)},
            "raw_tcp_copy": {"seconds": round(raw_seconds, 3), "mb_per_s": round(size / raw_seconds / 1e6, 1),
                             "runs_s": [round(run, 3) for run in raw_runs]},
            "ratio_vs_raw_copy": round(raw_seconds / full_seconds, 3),
        }
        result["peak_rss_after_full_backup_mib"] = {
            **{role: round(value / MiB, 1) for role, value in sorted(rss.items())},
            "device_daemon (no target)": round(rss_device / MiB, 1),
        }
        result["agents_rss_ok"] = all(value < RSS_TARGET for value in rss.values())

        rounds = []
        for percent in changes:
            count = max(1, round(size // BLOCK * percent / 100))
            say(f"{label(size)}: {percent} % changed ({count} random 4 KiB writes), storage stopped")
            ctl.run("s0", "stop", vol=vol)
            write_seconds = random_writes(device, size, count, rng)
            cluster.wait_applied()
            usage = cluster.device_call("log_usage")

            say(f"{label(size)}: {percent} %: snapshot -> restorable")
            archived_before = int(ctl.get("a0", "total-diff-size", vol))
            drop_caches()
            start = time.perf_counter()
            gid = int(ctl.run("s0", "snapshot", vol=vol)["gid"])
            ctl.run("s0", "start", vol=vol, role="target")
            def restorable(gid: int = gid) -> bool:
                return gid in ctl.get_restorable("a0", vol, include_implicit=True)

            cluster.wait(restorable, f"snapshot {gid} restorable", slow)
            walbops_seconds = time.perf_counter() - start
            archived = int(ctl.get("a0", "total-diff-size", vol)) - archived_before

            say(f"{label(size)}: {percent} %: hash scan")
            source = ddev if args.scan_source == "ddev" else device
            drop_caches()
            scan = hash_scan(source, target, args.hash_block)
            row: dict[str, Any] = {
                "volume": label(size), "changed_percent": percent, "changed_bytes": count * BLOCK,
                "write_seconds": round(write_seconds, 3),
                "ldev_ring_used_fraction": round(usage["usage_pb"] / usage["capacity_pb"], 3),
                "walbops_snapshot_to_restorable_s": round(walbops_seconds, 3),
                "walbops_changed_mb_per_s": round(count * BLOCK / walbops_seconds / 1e6, 1),
                "walbops_diff_bytes_archived": archived,
                "hash_scan_s": scan["seconds"],
                "hash_scan_blocks_sent_fraction": scan["blocks_sent_fraction"],
                "hash_scan_bytes_sent": scan["bytes_sent"],
                "speedup": round(scan["seconds"] / walbops_seconds, 2),
            }
            if args.verify:
                say(f"{label(size)}: {percent} %: verifying the restored snapshot and the scanned image")
                expected = sha1_of(device)
                restored = ctl.restore("a0", vol, gid, timeout=slow)
                try:
                    restored_sha1 = sha1_of(restored)
                finally:
                    ctl.del_restored("a0", vol, gid)
                row["verified"] = restored_sha1 == expected and sha1_of(target) == expected
                if not row["verified"]:
                    raise SystemExit(f"{label(size)} {percent} %: the restore or the scanned image differs")
            rounds.append(row)
        result["rounds"] = rounds
        result["peak_rss_at_end_mib"] = {role: round(peak_rss(pid) / MiB, 1)
                                         for role, pid in sorted(cluster.agent_pids().items())}
    finally:
        with cleaning():
            errors = cluster.teardown()
            shutil.rmtree(root, ignore_errors=True)
            if errors:
                print("[backup bench] cleanup: " + "; ".join(errors), file=sys.stderr, flush=True)
    return result


HASH_BULK = 4096  # [bytes] the hash backup's bulk in (e): one random 4 KiB write changes one bulk


def rsync_stats(output: str) -> dict[str, int]:
    """Literal data and total bytes sent from ``rsync --stats``."""
    found = {}
    for line in output.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("Literal data", "Total bytes sent"):
            found[name.strip().lower().replace(" ", "_")] = int(value.split()[0].replace(",", ""))
    return found


def bench_hash_backup(work: Path, size: int, changes: list[float], args: argparse.Namespace) -> dict[str, Any]:
    """(e): hash backups after each change rate, against the full backup and rsync, on one volume,
    ``args.hash_rounds`` times (each round begins with a new full backup); medians compared."""
    if shutil.which("rsync") is None:
        raise SystemExit("(e) needs rsync (apt-get install rsync)")
    root = work / f"hash-{label(size)}"
    root.mkdir()
    rng = np.random.default_rng(args.seed + 100)
    ddev, ldev, previous = str(root / "ddev.img"), str(root / "ldev.img"), str(root / "previous.img")
    say(f"(e) {label(size)}: writing the volume (half random, half zeros)")
    fill_mixed(ddev, size, rng)
    with open(ldev, "wb") as stream:
        stream.truncate(64 * MiB)  # standby drops the logs: the ring never fills
    cluster = Cluster(root, tuning={})
    ctl, vol = cluster.ctl, cluster.vol
    slow = slow_timeout(size)
    full_runs: list[float] = []
    samples: dict[float, list[dict[str, Any]]] = {percent: [] for percent in changes}
    try:
        device = start_group(cluster, f"bkh{os.getpid()}", ldev, ddev)
        for round_index in range(args.hash_rounds):
            if round_index:
                say(f"(e) {label(size)}: round {round_index + 1}: the archive cleared for a new full backup")
                ctl.go_standby("s0", vol)
                ctl.run("s0", "stop", vol=vol)  # SyncReady, as before the first one
                ctl.clear("a0", vol)
                ctl.run("a0", "init-vol", vol=vol)
            say(f"(e) {label(size)}: full backup")
            full_runs.append(timed_full_backup(cluster, slow))
            if round_index == 0:
                say(f"(e) {label(size)}: the previous image for rsync")
                raw_tcp_copy(device, previous)  # rsync keeps it equal to the device from then on
            for percent in changes:
                samples[percent].append(hash_round(cluster, device, previous, size, percent, rng, slow, args))
        rounds = []
        full_seconds = statistics.median(full_runs)
        for percent, runs in samples.items():
            hash_seconds = statistics.median(run["hash_backup_s"] for run in runs)
            rsync_seconds = statistics.median(run["rsync_s"] for run in runs)
            changed = runs[0]["changed_bytes"]
            data_bytes = max(run["hash_backup_data_bytes"] for run in runs)
            rounds.append({
                "changed_percent": percent, "changed_bytes": changed,
                "hash_backup_s": round(hash_seconds, 3), "full_backup_s": round(full_seconds, 3),
                "rsync_s": round(rsync_seconds, 3),
                "hash_backup_runs_s": [run["hash_backup_s"] for run in runs],
                "full_backup_runs_s": [round(value, 3) for value in full_runs],
                "rsync_runs_s": [run["rsync_s"] for run in runs],
                "hash_backup_data_bytes": data_bytes, "hash_backup_hash_bytes": size // HASH_BULK * 16,
                "rsync_literal_bytes": runs[-1]["rsync_literal_bytes"],
                "rsync_total_bytes_sent": runs[-1]["rsync_total_bytes_sent"],
                "data_bytes_vs_changed": round(data_bytes / changed, 3),
                "speedup_vs_rsync": round(rsync_seconds / hash_seconds, 2),
                "speedup_vs_full_backup": round(full_seconds / hash_seconds, 2),
                **({"verified": all(run["verified"] for run in runs)} if args.verify else {}),
            })
        return {"volume": label(size), "bulk_bytes": HASH_BULK, "rounds_each": args.hash_rounds,
                "compared": "medians", "rounds": rounds,
                "ok": all(row["speedup_vs_rsync"] > 1 and row["speedup_vs_full_backup"] > 1 for row in rounds)}
    finally:
        with cleaning():
            errors = cluster.teardown()
            shutil.rmtree(root, ignore_errors=True)
            if errors:
                print("[backup bench] cleanup: " + "; ".join(errors), file=sys.stderr, flush=True)


def hash_round(cluster: Cluster, device: str, previous: str, size: int, percent: float, rng: np.random.Generator,
               slow: float, args: argparse.Namespace) -> dict[str, Any]:
    """(e): ``percent`` of the volume changed in standby, then a hash backup and rsync, each timed
    from a cold page cache."""
    ctl, vol = cluster.ctl, cluster.vol
    count = max(1, round(size // BLOCK * percent / 100))
    say(f"(e) {label(size)}: standby, {percent} % changed ({count} random 4 KiB writes)")
    ctl.go_standby("s0", vol)
    random_writes(device, size, count, rng)
    cluster.wait_applied()
    diff_before = int(ctl.get("a0", "total-diff-size", vol))
    say(f"(e) {label(size)}: {percent} %: hash backup")
    ctl.run("s0", "stop", vol=vol)  # standby -> SyncReady, as Controller.hash_backup prepares it
    drop_caches()
    start = time.perf_counter()
    ctl.run("s0", "hash-bkp", vol=vol, bulk_size=HASH_BULK)
    cluster.wait(lambda: ctl.get_state("s0", vol) in ("Target", "SyncReady"), "the hash backup", slow)
    hash_seconds = time.perf_counter() - start
    if ctl.get_state("s0", vol) != "Target":
        raise SystemExit(f"(e) {percent} %: the hash backup failed; see {cluster.root}/storage.log")
    diff_bytes = int(ctl.get("a0", "total-diff-size", vol)) - diff_before
    say(f"(e) {label(size)}: {percent} %: rsync --inplace --no-whole-file --ignore-times")
    drop_caches()
    start = time.perf_counter()
    # --ignore-times: a loop device's writes do not touch its file's mtime, and within one
    # second both images look alike by size and mtime: rsync would skip the copy.
    result = subprocess.run(["rsync", "--inplace", "--no-whole-file", "--ignore-times", "--stats",
                             str(cluster.root / "ddev.img"), previous], capture_output=True, text=True)
    rsync_seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"rsync failed: {result.stderr.strip()}")
    stats = rsync_stats(result.stdout)
    run: dict[str, Any] = {
        "changed_bytes": count * BLOCK, "hash_backup_s": round(hash_seconds, 3), "rsync_s": round(rsync_seconds, 3),
        "hash_backup_data_bytes": diff_bytes, "rsync_literal_bytes": stats.get("literal_data"),
        "rsync_total_bytes_sent": stats.get("total_bytes_sent"),
    }
    if args.verify:
        say(f"(e) {label(size)}: {percent} %: verifying")
        gid = ctl.snapshot("s0", vol, timeout=slow)
        expected = sha1_of(device)
        restored = ctl.restore("a0", vol, gid, timeout=slow)
        try:
            run["verified"] = sha1_of(restored) == expected and sha1_of(previous) == expected
        finally:
            ctl.del_restored("a0", vol, gid)
        if not run["verified"]:
            raise SystemExit(f"(e) {percent} %: the restored image or rsync's copy differs from the device")
    return run


def slow_timeout(size: int) -> float:
    """[s] a timeout no healthy step on a volume of ``size`` bytes reaches."""
    return max(300.0, size / (10 * MiB))


def start_group(cluster: Cluster, name: str, ldev: str, ddev: str) -> str:
    """A walb device ``name`` over the files (4 KiB blocks, no checkpoints), the agents, and the volume
    set up; returns the device."""
    device = cluster.make_device(name, ldev, ddev, pbs=4096, checkpoint_interval_ms=None)
    cluster.start_all()
    cluster.setup_volume()
    return device


def timed_full_backup(cluster: Cluster, slow: float, bulk_size: int | None = None) -> float:
    """Seconds of a full backup from a cold page cache until the storage is Target."""
    ctl, vol = cluster.ctl, cluster.vol
    drop_caches()
    start = time.perf_counter()
    ctl.run("s0", "full-bkp", vol=vol, **({"bulk_size": bulk_size} if bulk_size else {}))
    cluster.wait(lambda: ctl.get_state("s0", vol) == "Target", "the full backup", slow)
    return time.perf_counter() - start


SCRAPE_INTERVAL = 1.0  # [s] (g): how often the benchmark scrapes each agent (Prometheus: 15-60 s)


class Scraper:
    """(g): fetch every agent's /metrics every SCRAPE_INTERVAL seconds while a round runs."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(SCRAPE_INTERVAL):
            for port in self.ports:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
                    answer.read()
                self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def variant_round(root: Path, mode: str, source: Path, size: int, count: int, index: int,
                  args: argparse.Namespace, step: str) -> tuple[float, float]:
    """One (f) or (g) round in one mode on a fresh cluster: the full backup's and the incremental's
    seconds. Modes: ``key`` (the baseline), ``tls``, ``metrics`` (key mode, every agent serving
    metrics and scraped every SCRAPE_INTERVAL)."""
    root.mkdir()
    ddev, ldev = str(root / "ddev.img"), str(root / "ldev.img")
    shutil.copyfile(source, ddev)
    with open(ldev, "wb") as stream:
        stream.truncate(int(2.5 * size / 100) // MiB * MiB + 64 * MiB)
    cluster = Cluster(root, tuning={}, tls=mode == "tls")
    ports = [free_port() for _ in ("storage", "proxy", "archive")] if mode == "metrics" else []
    for role, port in zip(("storage", "proxy", "archive"), ports, strict=False):
        cluster.agent_args[role] = ["--metrics-listen", f"127.0.0.1:{port}"]
    slow = slow_timeout(size)
    try:
        with Scraper(ports) if ports else contextlib.nullcontext():
            return _timed_round(cluster, mode, size, count, index, slow, args, step)
    finally:
        with cleaning():
            errors = cluster.teardown()
            shutil.rmtree(root, ignore_errors=True)
            if errors:
                print("[backup bench] cleanup: " + "; ".join(errors), file=sys.stderr, flush=True)


def _timed_round(cluster: Cluster, mode: str, size: int, count: int, index: int, slow: float,
                 args: argparse.Namespace, step: str) -> tuple[float, float]:
    ctl, vol = cluster.ctl, cluster.vol
    ldev, ddev = str(cluster.root / "ldev.img"), str(cluster.root / "ddev.img")
    device = start_group(cluster, f"bkt{os.getpid()}{index}{mode}", ldev, ddev)
    say(f"{step} round {index + 1}, {mode} mode: full backup")
    full = timed_full_backup(cluster, slow)
    say(f"{step} round {index + 1}, {mode} mode: 1 % changed, snapshot -> restorable")
    ctl.run("s0", "stop", vol=vol)
    random_writes(device, size, count, np.random.default_rng(args.seed + 300 + index))
    cluster.wait_applied()
    drop_caches()
    start = time.perf_counter()
    gid = int(ctl.run("s0", "snapshot", vol=vol)["gid"])
    ctl.run("s0", "start", vol=vol, role="target")
    cluster.wait(lambda: gid in ctl.get_restorable("a0", vol, include_implicit=True),
                 f"snapshot {gid} restorable", slow)
    incremental = time.perf_counter() - start
    if args.verify:
        expected = sha1_of(device)
        restored = ctl.restore("a0", vol, gid, timeout=slow)
        try:
            if sha1_of(restored) != expected:
                raise SystemExit(f"{step} {mode} mode: the restored snapshot differs from the device")
        finally:
            ctl.del_restored("a0", vol, gid)
    return full, incremental


def bench_variant(work: Path, size: int, args: argparse.Namespace, mode: str, rounds: int,
                  targets: tuple[float, float]) -> dict[str, Any]:
    """(f) and (g): (a) and (b) at 1 % in key mode and in ``mode`` on the same data, alternating
    the order over ``rounds`` rounds (key, mode; then mode, key; …) so that drift favours neither;
    the cost of ``mode`` is its mean time over key mode's, minus one."""
    rng = np.random.default_rng(args.seed + 200)
    source = work / f"{mode}-source.img"
    step = "(g)" if mode == "metrics" else "(f)"
    say(f"{step} {label(size)}: writing the volume (half random, half zeros)")
    fill_mixed(str(source), size, rng)
    count = max(1, round(size // BLOCK * 1 / 100))
    times: dict[str, dict[str, list[float]]] = {name: {"full": [], "incremental": []} for name in ("key", mode)}
    for index in range(rounds):
        for name in (("key", mode) if index % 2 == 0 else (mode, "key")):
            full, incremental = variant_round(work / f"{mode}-{index}-{name}", name, source, size, count, index,
                                              args, step)
            times[name]["full"].append(full)
            times[name]["incremental"].append(incremental)
    source.unlink()

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    full_cost = mean(times[mode]["full"]) / mean(times["key"]["full"]) - 1
    incremental_cost = mean(times[mode]["incremental"]) / mean(times["key"]["incremental"]) - 1
    return {
        "volume": label(size), "rounds": rounds, "changed_percent": 1,
        "seconds": {name: {step: [round(value, 3) for value in values] for step, values in steps.items()}
                    for name, steps in times.items()},
        f"a_full_backup_{mode}_cost": round(full_cost, 3),
        f"b_incremental_{mode}_cost": round(incremental_cost, 3),
        "targets": {"a": targets[0], "b": targets[1]},
        "ok": full_cost < targets[0] and incremental_cost < targets[1],
    }


def fit(rows: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Least squares ``seconds = a + b * changed GiB + c * volume GiB`` over the table's rows."""
    matrix = np.array([[1.0, row["changed_bytes"] / GiB, parse_size(row["volume"]) / GiB] for row in rows])
    seconds = np.array([row[key] for row in rows])
    if len(rows) < 3 or np.linalg.matrix_rank(matrix) < 3:
        return None
    (a, b, c), *_ = np.linalg.lstsq(matrix, seconds, rcond=None)
    return {"a_s": round(float(a), 3), "b_s_per_changed_gib": round(float(b), 2),
            "c_s_per_volume_gib": round(float(c), 2)}


# --------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 and 32 MiB volumes, with --verify: a smoke test")
    parser.add_argument("--size", default=None, help="the volume of (a) and (b) (default 2G)")
    parser.add_argument("--scale-sizes", default=None, help="more volume sizes for (c), comma-separated "
                        "(default 1G,4G; 'none': only --size, e.g. with --changes 1 for a quick (a) and (b))")
    parser.add_argument("--skip-large", action="store_true", help="leave out the scale sizes above --size")
    parser.add_argument("--changes", default="1,5", help="percentages of the volume changed, in rounds")
    parser.add_argument("--hash-block", type=parse_size, default=MiB, help="hash scan block size (default 1M)")
    parser.add_argument("--scan-source", choices=("ddev", "device"), default="ddev",
                        help="what the hash scan reads as the source: the ddev file (default) or the walb device")
    parser.add_argument("--bulk-size", type=parse_size, default=None,
                        help="full-bkp bulk_size (default: the storage agent's, 256K)")
    parser.add_argument("--hash-changes", default="1,10",
                        help="(e): percentages changed before each hash backup ('none': skip (e))")
    parser.add_argument("--hash-rounds", type=int, default=None,
                        help="(e): rounds, each a full backup then a hash backup per change rate; medians are "
                        "compared (default 3, 1 with --quick)")
    parser.add_argument("--metrics-rounds", type=int, default=2,
                        help="(g): rounds of (a) and (b) with metrics off and on (0: skip)")
    parser.add_argument("--tls-rounds", type=int, default=2,
                        help="(f): rounds of (a) and (b) in key mode and in TLS mode (0: skip (f))")
    parser.add_argument("--verify", action="store_true", help="check restores and scanned images (sha1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default="/var/tmp", help="scratch directory")
    parser.add_argument("--serve-raw-receiver", nargs=2, metavar=("PORT", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-hash-target", nargs=3, metavar=("PORT", "PATH", "BLOCK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw_receiver:
        serve_raw_receiver(int(args.serve_raw_receiver[0]), args.serve_raw_receiver[1])
        return 0
    if args.serve_hash_target:
        port, path, block = args.serve_hash_target
        serve_hash_target(int(port), path, int(block))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/backup.py needs root (loop devices, FUSE, drop_caches)")
    size = parse_size(args.size or ("64M" if args.quick else "2G"))
    scale_text = args.scale_sizes or ("32M" if args.quick else "1G,4G")
    scale = [] if scale_text == "none" else [parse_size(text) for text in scale_text.split(",") if text]
    if args.skip_large:
        scale = [other for other in scale if other <= size]
    changes = [float(text) for text in args.changes.split(",")]
    if not all(0 < percent <= 100 for percent in changes):
        raise SystemExit("--changes: percentages between 0 and 100")
    args.verify = args.verify or args.quick
    args.hash_rounds = args.hash_rounds or (1 if args.quick else 3)
    if any(value % MiB for value in [size, *scale]) or args.hash_block % 4096:
        raise SystemExit("volume sizes must be multiples of 1 MiB, the hash block of 4 KiB")
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, on_signal)

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="walbops-backupbench-", dir=args.dir))
    os.environ["WALBOPS_RUN_DIR"] = str(work / "run")
    os.environ["WALBOPS_DEV_DIR"] = str(work / "dev")
    volumes: dict[int, dict[str, Any]] = {}
    skipped = []
    try:
        for index, volume_size in enumerate([size, *sorted(scale)]):
            needed = int(DISK_FACTOR * volume_size) + GiB
            free = shutil.disk_usage(work).free
            if free < needed:
                if index == 0:
                    raise SystemExit(f"{label(size)} needs {needed >> 20} MiB free in {work}, there are "
                                     f"{free >> 20}: pass a smaller --size or another --dir")
                skipped.append({"volume": label(volume_size), "reason": f"needs {needed >> 20} MiB of disk, "
                                f"{free >> 20} MiB free"})
                continue
            volumes[index] = bench_volume(work, index, volume_size, changes, args)
        hash_backup = None if args.hash_changes == "none" else bench_hash_backup(
            work, size, [float(text) for text in args.hash_changes.split(",")], args)
        tls = bench_variant(work, size, args, "tls", args.tls_rounds, (TLS_FULL_TARGET, TLS_INCREMENTAL_TARGET)) \
            if args.tls_rounds > 0 else None
        metrics = bench_variant(work, size, args, "metrics", args.metrics_rounds, (METRICS_TARGET, METRICS_TARGET)) \
            if args.metrics_rounds > 0 else None
    finally:
        with cleaning():
            shutil.rmtree(work, ignore_errors=True)

    main_volume = volumes[0]
    full = main_volume["full_backup"]
    first = main_volume["rounds"][0]
    table = [row for volume in volumes.values() for row in volume["rounds"]]
    rss = {role: value for role, value in main_volume["peak_rss_after_full_backup_mib"].items()
           if role in ("storage", "proxy", "archive")}
    hash_name, _ = hasher()
    print(json.dumps({
        "benchmark": "backup",
        "mode": "quick" if args.quick else "full",
        "settings": {"hash": hash_name, "hash_block": args.hash_block, "scan_source": args.scan_source,
                     "bulk_size": args.bulk_size or "agent default", "ldev_pbs": 4096,
                     "data": "1 MiB regions, half random, half zeros", "changes": "distinct random 4 KiB blocks"},
        "a_full_backup": {"volume": label(size), **full},
        "b_incremental": {
            "volume": label(size), "changed_percent": first["changed_percent"],
            "changed_bytes": first["changed_bytes"],
            "walbops_snapshot_to_restorable_s": first["walbops_snapshot_to_restorable_s"],
            "hash_scan_s": first["hash_scan_s"],
            "speedup": first["speedup"],
        },
        "c_scaling": {
            "table": table,
            "fit_walbops": fit(table, "walbops_snapshot_to_restorable_s"),
            "fit_hash_scan": fit(table, "hash_scan_s"),
            "skipped": skipped,
        },
        "d_peak_rss_mib_after_full_backup": main_volume["peak_rss_after_full_backup_mib"],
        "e_hash_backup": hash_backup,
        "f_tls": tls,
        "g_metrics": metrics,
        "full_backup_by_size": [{"volume": label(volume["volume_bytes"]), **volume["full_backup"]}
                                for volume in volumes.values()],
        "peak_rss_mib_at_end_by_size": {label(volume["volume_bytes"]): volume["peak_rss_at_end_mib"]
                                        for volume in volumes.values()},
        "targets": {
            "full_backup_ratio": FULL_TARGET,
            "full_backup_ok": full["ratio_vs_raw_copy"] >= FULL_TARGET,
            "incremental_speedup": INCREMENTAL_TARGET,
            "incremental_ok": first["speedup"] >= INCREMENTAL_TARGET,
            "rss_mib": RSS_TARGET >> 20,
            "rss_ok": all(value < RSS_TARGET / MiB for value in rss.values()),
            "hash_backup_ok": None if hash_backup is None else hash_backup["ok"],
            "tls_full_backup_cost": TLS_FULL_TARGET, "tls_incremental_cost": TLS_INCREMENTAL_TARGET,
            "tls_ok": None if tls is None else tls["ok"],
            "metrics_cost": METRICS_TARGET,
            "metrics_ok": None if metrics is None else metrics["ok"],
        },
        "total_seconds": round(time.perf_counter() - started, 1),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
