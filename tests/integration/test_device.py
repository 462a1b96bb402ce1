"""The userspace walb device for real: FUSE, a loop device, ext4 on top, SIGKILL, ring wrap."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from devices import Device, read_device, walbops, walbops_json, write_direct
from helpers import sha1_of

from walbops.device.registry import DevicePaths, pid_alive
from walbops.formats.ldev import SuperSector
from walbops.loop import backing_file

MiB = 1 << 20


def one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def extract_and_redo(device: Device, tmp_path: Path, begin: int = 0) -> Path:
    """Checkpoint, extract the logs from ``begin`` and redo them onto a zeroed image."""
    walbops("wdev", "force-checkpoint", device.name, check=True)
    wlog = tmp_path / f"{device.name}-{begin}.wlog"
    walbops("wdev", "cat-wlog", device.name, "--begin", str(begin), "-o", str(wlog), check=True)
    image = tmp_path / f"{device.name}-redo.img"
    image.unlink(missing_ok=True)
    walbops("wlog", "redo", str(wlog), "--target", str(image), "--size", str(device.ddev.stat().st_size),
            "--discard", "zero", check=True)
    return image


def mount(device: Device, where: Path) -> None:
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", device.path, str(where)], check=True)


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """A mount point that is never left mounted, whatever the test did."""
    where = tmp_path / "mnt"
    where.mkdir()
    yield where
    while os.path.ismount(where):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("pbs", [512, 4096])
def test_ext4_on_the_device_and_its_logs_rebuild_the_ddev(device_factory, tmp_path, mnt, pbs):
    device = device_factory(pbs=pbs, ldev_size=96 * MiB, ddev_size=64 * MiB)
    assert os.path.realpath(device.path).startswith("/dev/loop")
    subprocess.run(["mkfs.ext4", "-q", device.path], check=True)
    mount(device, mnt)
    rng = random.Random(pbs)
    expected = {}
    for index in range(40):
        data = rng.randbytes(rng.randint(1, 300_000))
        (mnt / f"file{index}").write_bytes(data)
        expected[f"file{index}"] = hashlib.sha1(data).hexdigest()
    (mnt / "dir" / "sub").mkdir(parents=True)
    (mnt / "dir" / "sub" / "small").write_text("walbops\n")
    umount(mnt)
    mount(device, mnt)
    for name, digest in expected.items():
        assert hashlib.sha1((mnt / name).read_bytes()).hexdigest() == digest
    assert (mnt / "dir" / "sub" / "small").read_text() == "walbops\n"
    umount(mnt)
    status = device.status()
    assert status["pbs"] == pbs and status["overflow"] is False
    assert status["log_usage_pb"] > 0
    assert sha1_of(extract_and_redo(device, tmp_path)) == sha1_of(device.ddev)


WRITER = r'''
import hashlib, mmap, os, random, sys
path, acked = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_DIRECT)
size = os.fstat(fd).st_size
buffer = mmap.mmap(-1, 16 * 4096)
rng = random.Random(7)
out = open(acked, "w")
index = 0
while True:
    blocks = rng.randint(1, 16)
    offset = rng.randrange(0, size // 4096 - blocks) * 4096
    data = rng.randbytes(blocks * 4096)
    buffer[:len(data)] = data
    try:
        # A write cut short by the kill returns fewer bytes: that is no acknowledgement.
        if os.pwrite(fd, memoryview(buffer)[:len(data)], offset) != len(data):
            break
        if index % 25 == 0:
            name = os.path.join(os.path.dirname(path), f"synced{index}")
            with open(name, "wb") as small:
                small.write(data[:4096])
                small.flush()
                os.fsync(small.fileno())
            out.write(f"file {name} {hashlib.sha1(data[:4096]).hexdigest()}\n")
    except OSError:
        break
    out.write(f"write {offset} {hashlib.sha1(data).hexdigest()} {index}\n")
    out.flush()
    index += 1
'''


def test_sigkill_mid_write_stream_loses_no_acknowledged_write(device_factory, tmp_path, mnt):
    device = device_factory(ldev_size=160 * MiB, ddev_size=64 * MiB)
    subprocess.run(["mkfs.ext4", "-q", device.path], check=True)
    mount(device, mnt)
    target = mnt / "target"
    target.write_bytes(os.urandom(16 * MiB))
    os.sync()
    acked = tmp_path / "acked.txt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(acked)])
    deadline = time.monotonic() + 30
    while (not acked.exists() or acked.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(device.pid(), signal.SIGKILL)
    writer.wait(timeout=60)
    subprocess.run(["umount", "-l", str(mnt)], check=True)

    walbops("wdev", "create", str(device.ldev), str(device.ddev), "--name", device.name, check=True)
    mount(device, mnt)  # replays ext4's journal
    data = target.read_bytes()
    last_write: dict[int, tuple[int, int]] = {}
    rng = random.Random(7)
    writes = [line.split() for line in acked.read_text().splitlines()]
    assert len([w for w in writes if w[0] == "write"]) > 50, "the stream ran before the kill"
    size = len(data)
    generated = {}
    for entry in writes:
        if entry[0] == "file":
            assert hashlib.sha1(Path(entry[1]).read_bytes()).hexdigest() == entry[2], "an fsynced file survived"
            continue
        offset, index = int(entry[1]), int(entry[3])
        while len(generated) <= index:
            blocks = rng.randint(1, 16)
            generated[len(generated)] = (rng.randrange(0, size // 4096 - blocks) * 4096, rng.randbytes(blocks * 4096))
        assert generated[index][0] == offset
        for block in range(offset // 4096, offset // 4096 + len(generated[index][1]) // 4096):
            last_write[block] = (index, block * 4096 - offset)
    # The write in flight at the kill was never acknowledged: it may or may not be there.
    last_acked = max(last_write.values())[0] if last_write else -1
    blocks = rng.randint(1, 16)
    in_flight = (rng.randrange(0, size // 4096 - blocks) * 4096, rng.randbytes(blocks * 4096))
    for block, (index, skip) in last_write.items():
        got = data[block * 4096:(block + 1) * 4096]
        if got != generated[index][1][skip:skip + 4096]:
            flight_skip = block * 4096 - in_flight[0]
            assert index <= last_acked and 0 <= flight_skip < len(in_flight[1]) \
                and got == in_flight[1][flight_skip:flight_skip + 4096], \
                f"acknowledged write {index} lost at block {block}: it holds {holder(got, block, generated)}"
    umount(mnt)
    fsck = subprocess.run(["e2fsck", "-f", "-n", device.path], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert sha1_of(extract_and_redo(device, tmp_path)) == sha1_of(device.ddev)


def holder(got: bytes, block: int, generated: dict[int, tuple[int, bytes]]) -> str:
    """Which generated write's data a 4 KiB block of the target holds (for failure messages)."""
    for index in sorted(generated, reverse=True):
        offset, data = generated[index]
        skip = block * 4096 - offset
        if 0 <= skip < len(data) and data[skip:skip + 4096] == got:
            return f"write {index}'s data"
    return "zeros" if got == bytes(4096) else "data of no write in the stream"


def ship(device: Device, tmp_path: Path, done: int, shipped: list[Path]) -> int:
    """What the storage agent does: extract permanent logs, then let the ring reuse them."""
    lsids = walbops_json("wdev", "force-checkpoint", device.name)
    if lsids["permanent"] == done:
        return done
    wlog = tmp_path / f"ship{len(shipped)}.wlog"
    walbops("wdev", "cat-wlog", device.name, "--begin", str(done), "--end", str(lsids["permanent"]),
            "-o", str(wlog), check=True)
    shipped.append(wlog)
    walbops("wdev", "set-oldest-lsid", device.name, str(min(lsids["permanent"], lsids["prev_written"])),
            check=True)
    return lsids["permanent"]


@pytest.mark.parametrize("pbs", [512, 4096])
def test_ring_wraps_with_padding_and_shipped_logs_rebuild_the_ddev(device_factory, tmp_path, pbs):
    device = device_factory(pbs=pbs, ldev_size=4 * MiB + 8192, ddev_size=16 * MiB)
    ring = device.status()["log_capacity_pb"]
    rng = random.Random(pbs)
    shipped: list[Path] = []
    done = 0
    while device.lsids()["latest"] < 3 * ring:
        for _ in range(12):
            size = rng.randint(1, 64) * 4096
            write_direct(device.path, rng.randrange(0, (16 * MiB - size) // 4096) * 4096, rng.randbytes(size))
        done = ship(device, tmp_path, done, shipped)
    done = ship(device, tmp_path, done, shipped)
    assert not device.status()["overflow"]
    padding = sum(walbops_json("wlog", "show", str(w))["padding_pb"] for w in shipped)
    assert padding > 0, "the log wrapped with padding records"
    image = tmp_path / "rebuilt.img"
    walbops("wlog", "redo", *map(str, shipped), "--target", str(image), "--size", str(16 * MiB),
            "--discard", "zero", check=True)
    assert sha1_of(image) == sha1_of(device.ddev)
    assert read_device(device.path) == device.ddev.read_bytes()


def test_overflow_overwrite_keeps_writing_until_reset_wal(device_factory, tmp_path):
    device = device_factory(ldev_size=4 * MiB, ddev_size=16 * MiB)
    before = device.status()
    payload = os.urandom(6 * MiB)
    for offset in range(0, len(payload), MiB):
        write_direct(device.path, offset, payload[offset:offset + MiB])
    assert walbops_json("wdev", "is-overflow", device.name)["overflow"] is True
    assert read_device(device.path, 0, len(payload)) == payload, "writes went on"
    one_line_error(walbops("wdev", "cat-wlog", device.name, "--begin", "0", "-o", str(tmp_path / "x.wlog")),
                   5, "overflow")
    reset = walbops_json("wdev", "reset-wal", device.name)
    status = device.status()
    assert status["overflow"] is False and reset["uuid"] != before["uuid"]
    assert all(value == 0 for value in status["lsids"].values())
    write_direct(device.path, 0, b"\x5a" * 4096)
    assert sha1_of(extract_and_redo(device, tmp_path)) == hashlib.sha1(
        b"\x5a" * 4096 + bytes(16 * MiB - 4096)).hexdigest()
    super_sector = SuperSector.parse(device.ldev.read_bytes()[4096:4608])
    assert super_sector.uuid.hex() == reset["uuid"]


def test_overflow_error_fails_writes_instead(device_factory, tmp_path):
    device = device_factory(512, 4 * MiB, 16 * MiB, "--overflow", "error")
    failed = False
    for offset in range(0, 6 * MiB, MiB):
        try:
            write_direct(device.path, offset, os.urandom(MiB))
        except OSError:
            failed = True
            break
    assert failed, "a write past the ring's capacity failed"
    status = device.status()
    assert status["overflow"] is False and status["log_usage_pb"] <= status["log_capacity_pb"]
    lsids = walbops_json("wdev", "force-checkpoint", device.name)
    walbops("wdev", "set-oldest-lsid", device.name, str(lsids["prev_written"]), check=True)
    write_direct(device.path, 0, b"\x11" * MiB)  # room again
    assert read_device(device.path, 0, MiB) == b"\x11" * MiB


def test_freeze_holds_writes_until_melt(device_factory):
    device = device_factory()
    walbops("wdev", "freeze", device.name, check=True)
    assert walbops_json("wdev", "is-frozen", device.name)["frozen"] is True
    writer = threading.Thread(target=write_direct, args=(device.path, 0, b"\x22" * 4096))
    writer.start()
    writer.join(1.0)
    assert writer.is_alive(), "the write waits while frozen"
    walbops("wdev", "melt", device.name, check=True)
    writer.join(10)
    assert not writer.is_alive()
    assert read_device(device.path, 0, 4096) == b"\x22" * 4096
    walbops("wdev", "freeze", device.name, "0.5", check=True)
    started = time.monotonic()
    write_direct(device.path, 4096, b"\x33" * 4096)
    assert time.monotonic() - started >= 0.3, "a freeze with a timeout melts by itself"


def test_set_oldest_lsid_stays_within_oldest_and_prev_written(device_factory):
    device = device_factory()
    write_direct(device.path, 0, os.urandom(MiB))
    lsids = walbops_json("wdev", "force-checkpoint", device.name)
    one_line_error(walbops("wdev", "set-oldest-lsid", device.name, str(lsids["prev_written"] + 1)), 5,
                   "prev_written")
    walbops("wdev", "set-oldest-lsid", device.name, str(lsids["prev_written"] // 2), check=True)
    assert device.lsids()["oldest"] == lsids["prev_written"] // 2
    one_line_error(walbops("wdev", "set-oldest-lsid", device.name, "0"), 5, "oldest")
    sector = SuperSector.parse(device.ldev.read_bytes()[4096:4608])
    assert sector.oldest_lsid == lsids["prev_written"] // 2, "oldest is saved in the super sector"


def test_wait_permanent_returns_once_new_logs_are_permanent(device_factory):
    device = device_factory()
    start = device.lsids()["permanent"]
    started = time.monotonic()
    idle = walbops_json("wdev", "wait-permanent", device.name, "--after", str(start), "--timeout", "0.5")
    assert idle["permanent"] == start and time.monotonic() - started >= 0.4
    timer = threading.Timer(0.3, write_direct, args=(device.path, 0, b"\x44" * 4096))
    timer.start()
    woke = walbops_json("wdev", "wait-permanent", device.name, "--after", str(start), "--timeout", "20")
    timer.join()
    assert woke["permanent"] > start


def test_delete_refuses_a_mounted_device_unless_forced(device_factory, tmp_path, mnt):
    device = device_factory()
    subprocess.run(["mkfs.ext4", "-q", device.path], check=True)
    mount(device, mnt)
    one_line_error(walbops("wdev", "delete", device.name), 5, "in use")
    assert device.status()["name"] == device.name
    umount(mnt)
    walbops("wdev", "delete", device.name, check=True)
    running = json.loads(walbops("wdev", "list", "--json", check=True).stdout)["devices"]
    assert device.name not in [entry["name"] for entry in running]
    assert not os.path.lexists(device.path)


def test_resize_grows_and_refuses_to_shrink(device_factory):
    device = device_factory(ddev_size=16 * MiB)
    with open(device.ddev, "r+b") as stream:
        stream.truncate(32 * MiB)
    walbops("wdev", "resize", device.name, "0", check=True)
    assert device.status()["size_lb"] == 32 * MiB // 512
    size = subprocess.run(["blockdev", "--getsize64", device.path], capture_output=True, text=True, check=True)
    assert int(size.stdout) == 32 * MiB
    write_direct(device.path, 30 * MiB, b"\x55" * 4096)
    one_line_error(walbops("wdev", "resize", device.name, "16M"), 5, "shrink")


def test_bad_arguments_get_one_line_and_change_nothing(device_factory, tmp_path):
    device = device_factory()
    ldev_before = device.ldev.read_bytes()[:8192]
    lonely = tmp_path / "lonely.img"
    lonely.write_bytes(bytes(8 * MiB))
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(bytes(64 * 1024))
    one_line_error(walbops("wdev", "format-ldev", str(lonely), str(tmp_path / "missing.img")), 2, "missing.img")
    one_line_error(walbops("wdev", "format-ldev", str(tiny), str(lonely)), 5, "ring")
    assert tiny.read_bytes() == bytes(64 * 1024)
    one_line_error(walbops("wdev", "format-ldev", str(device.ldev), str(lonely)), 5, "in use", device.name)
    one_line_error(walbops("wdev", "format-ldev", str(lonely), str(lonely)), 2, "different")
    one_line_error(walbops("wdev", "create", str(device.ldev), str(device.ddev), "--name", device.name), 5,
                   "already running")
    one_line_error(walbops("wdev", "create", str(lonely), str(device.ddev), "--name", "other"), 5, "in use")
    one_line_error(walbops("wdev", "create", str(lonely), str(tiny), "--name", "bad/name"), 2, "device name")
    one_line_error(walbops("wdev", "status", "nosuchdevice"), 5, "not running")
    one_line_error(walbops("wdev", "delete", "nosuchdevice"), 5, "not running")
    one_line_error(walbops("wdev", "cat-wlog", device.name, "--begin", "999999"), 5, "begin lsid")
    one_line_error(walbops("wdev", "set-checkpoint-interval", device.name, "5"), 5, "checkpoint interval")
    assert device.ldev.read_bytes()[:8192] == ldev_before
    assert device.status()["lsids"]["latest"] == 0


def test_unformatted_ldev_is_refused_at_create(tmp_path):
    ldev, ddev = tmp_path / "l.img", tmp_path / "d.img"
    ldev.write_bytes(bytes(8 * MiB))
    ddev.write_bytes(bytes(8 * MiB))
    one_line_error(walbops("wdev", "create", str(ldev), str(ddev), "--name", "unformatted"), 5, "super sector")


def test_delete_force_cleans_up_after_a_dead_daemon(device_factory):
    device = device_factory()
    loop = os.path.realpath(device.path)
    os.kill(device.pid(), signal.SIGKILL)
    time.sleep(0.2)
    one_line_error(walbops("wdev", "delete", device.name), 5, "--force")
    walbops("wdev", "delete", device.name, "--force", check=True)
    assert not os.path.lexists(device.path)
    assert backing_file(loop) is None
    walbops("wdev", "create", str(device.ldev), str(device.ddev), "--name", device.name, check=True)


def test_delete_force_stops_a_device_that_stays_mounted(device_factory, tmp_path, mnt):
    device = device_factory()
    subprocess.run(["mkfs.ext4", "-q", device.path], check=True)
    mount(device, mnt)
    pid = device.pid()
    walbops("wdev", "delete", device.name, "--force", check=True)
    assert not pid_alive(pid)


def test_loop_devices_are_listed_while_a_daemon_is_stopped(device_factory, tmp_path):
    """A daemon that does not answer (here SIGSTOP; in the wild, one stuck in the kernel) must not
    hang whoever lists loop devices: the listing reads sysfs and never stats the FUSE file."""
    device = device_factory()
    pid = device.pid()
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    lister = (
        "import sys; from walbops import loop\n"
        "assert loop.attachments(sys.argv[1]) == [loop.Attachment(sys.argv[2], False)]\n"
        "print(loop.attach(sys.argv[3], read_only=True)); loop.detach(sys.argv[3])\n"
    )
    os.kill(pid, signal.SIGSTOP)
    try:
        # A hang here fails the test with TimeoutExpired, the child killed (a FUSE wait is killable).
        listed = subprocess.run([sys.executable, "-c", lister, DevicePaths(device.name).volume,
                                 os.path.realpath(device.path), str(image)],
                                capture_output=True, text=True, timeout=120)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("/dev/loop")
