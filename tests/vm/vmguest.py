"""A throw-away qemu guest with device-mapper, running this checkout (importable as ``vmguest``).

This machine's kernel has no device-mapper; Debian's own kernel has it as modules. The guest
boots that kernel (``linux-image-amd64``, fetched with ``apt-get download`` and unpacked, never
installed on the host) with a small busybox initramfs that loads the virtio, 9p, overlay,
device-mapper, loop and ext4 modules, mounts the host's root filesystem read-only over 9p with a
tmpfs overlay on top (so the guest runs the host's Python, lvm2 and this checkout's virtualenv,
and nothing it writes reaches the host), and chroots into it. There it serves jobs: the host
writes ``job-N.sh`` into a shared directory, the guest runs it and writes its output and exit
code next to it. One boot serves every job of a test module.

lvm2 in the guest runs without udev (``/run/lvm-sys/lvm.conf``: no udev sync, no udev device
list, no lvmpolld, no monitoring): device-mapper nodes appear in devtmpfs by themselves.

Without KVM (this machine's is nested and cannot run a stock kernel) qemu emulates the CPU
(TCG): a boot takes about 10 s, and Python runs about ten times slower than on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gzip
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("WALBOPS_VM_CACHE", "/var/cache/walbops-vm"))  # the harness owns it
QEMU = "qemu-system-x86_64"
MEMORY_MIB = 1536  # [MiB] of guest RAM; its /tmp (the overlay's upper layer) lives in it too
BOOT_TIMEOUT = 120.0  # [s] from qemu's start to the guest serving jobs (10 s idle, 40 s on a busy host)
POLL_INTERVAL = 0.2  # [s] between two looks for a job's result (host) or a new job (guest)
POWEROFF_TIMEOUT = 30.0  # [s] for the guest to power off once told to

# Modules the guest loads, in load order (each after what it needs): virtio and 9p for the root,
# overlay for a writable root, a network card for forwarded ports, device-mapper with snapshot and
# thin-pool, loop, ext4.
MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
    "virtio-rng", "9pnet", "9pnet_virtio", "netfs", "fscache", "9p", "overlay", "failover", "net_failover",
    "virtio_net",
    "dm-mod", "dm-bufio", "dm-snapshot", "crc32c-intel", "crc32c_generic", "libcrc32c", "dm-bio-prison",
    "dm-persistent-data", "dm-thin-pool", "loop", "jbd2", "mbcache", "crc16", "ext4",
)

LVM_CONF = """\
# walbops' test guest: no udev, no daemons
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
}
global {
    use_lvmpolld = 0
}
"""

# /init of the initramfs (busybox sh). Loads the modules, builds the root (9p read-only lower
# layer, tmpfs upper layer), then runs /run/share/serve.sh chrooted into it; powers off after.
INIT = r"""#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
while read module; do
    insmod "/modules/$module" || echo "walbops-guest: insmod $module failed"
done </modules.list
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up && ip addr add {guest_address}/24 dev eth0
fi
mkdir -p /lower /rw /root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower \
    || { echo "walbops-guest: no host root"; poweroff -f; }
mount -t tmpfs -o mode=755 rw /rw && mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /root \
    || { echo "walbops-guest: no overlay"; poweroff -f; }
R=/root
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=755 run $R/run
mkdir -p $R/run/lock $R/run/lvm $R/run/share $R/run/lvm-sys
chmod 1777 $R/run/lock
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none share $R/run/share \
    || { echo "walbops-guest: no share"; poweroff -f; }
cp -a $R/etc/lvm/. $R/run/lvm-sys/ 2>/dev/null
cp /lvm.conf $R/run/lvm-sys/lvm.conf
ln -sf /proc/self/mounts $R/run/mtab
chroot $R /bin/sh /run/share/serve.sh
sync
poweroff -f
"""

# The guest's job loop, chrooted (written into the share at each boot).
SERVE = """\
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb LVM_SYSTEM_DIR=/run/lvm-sys LVM_SUPPRESS_FD_WARNINGS=1
export DM_DISABLE_UDEV=1 WALBOPS_VM_GUEST=1
share=/run/share
n=1
: >$share/ready
while [ ! -e $share/quit ]; do
    if [ -e $share/job-$n.sh ]; then
        (cd / && exec sh $share/job-$n.sh) </dev/null >$share/job-$n.out 2>&1
        echo $? >$share/job-$n.rc.tmp && mv $share/job-$n.rc.tmp $share/job-$n.rc
        n=$((n + 1))
    else
        sleep {poll}
    fi
done
"""

# qemu's user network: the guest's own address, where the ports forwarded from the host's loopback
# arrive. The guest is restricted: it reaches neither the host nor anything beyond.
GUEST_ADDRESS = "10.0.2.15"
INIT = INIT.replace("{guest_address}", GUEST_ADDRESS)


class GuestError(Exception):
    """The guest could not be built, did not boot, or a job did not finish in time."""


def unavailable() -> str | None:
    """Why no guest can run here, or None."""
    if os.geteuid() != 0:
        return "needs root (the guest's scratch disks and apt-get download)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (scripts/bootstrap installs qemu-system-x86)"
    if shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None:
        return "needs apt-get and dpkg-deb to fetch the guest's kernel"
    return None


# -- boot files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path


def boot_files(cache: Path = CACHE) -> BootFiles:
    """The guest's kernel and initramfs, built into ``cache`` once (under a lock: test workers
    may ask at the same time) and reused while the kernel package and this file's init stay."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kernel_package = _kernel_package()
        kernel_root = _unpacked(kernel_package, cache)
        busybox_root = _unpacked("busybox-static", cache)
        version = next(iter(os.listdir(kernel_root / "lib" / "modules")))
        recipe = hashlib.sha256("\0".join((INIT, LVM_CONF, *MODULES)).encode()).hexdigest()[:16]
        initrd = cache / f"initrd-{version}-{recipe}.cpio.gz"
        if not initrd.exists():
            archive = _initramfs(kernel_root / "lib" / "modules" / version, busybox_root / "bin" / "busybox")
            partial = initrd.with_suffix(".partial")
            partial.write_bytes(gzip.compress(archive, 6))
            partial.replace(initrd)
        return BootFiles(kernel_root / "boot" / f"vmlinuz-{version}", initrd)


def _kernel_package() -> str:
    """The versioned kernel package linux-image-amd64 currently depends on (linux-image-6.1.0-N-amd64)."""
    shown = _apt(["apt-cache", "show", "--no-all-versions", "linux-image-amd64"])
    match = re.search(r"^Depends:.*?\b(linux-image-\d[^\s,(]*-amd64)\b", shown, re.MULTILINE)
    if match is None:
        raise GuestError(f"apt-cache show linux-image-amd64 names no kernel package:\n{shown}")
    return match[1]


def _apt(argv: list[str], cwd: Path | None = None) -> str:
    """Run an apt command; once more after ``apt-get update`` if it fails (a machine whose package
    lists were never fetched)."""
    for attempt in (1, 2):
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode == 0:
            return result.stdout
        if attempt == 1:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, stdin=subprocess.DEVNULL)
    raise GuestError(f"{shlex.join(argv)} failed: {result.stderr.strip()}")


def _unpacked(package: str, cache: Path) -> Path:
    """``package`` downloaded and unpacked into ``cache/package`` (not installed)."""
    root = cache / package
    if (root / ".unpacked").exists():
        return root
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        _apt(["apt-get", "download", "-q", package], cwd=Path(scratch))
        deb = next(Path(scratch).glob("*.deb"))
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
    modules = root / "lib" / "modules"
    if modules.is_dir():  # the package ships no modules.dep: depmod writes it
        for version in os.listdir(modules):
            subprocess.run(["depmod", "-b", str(root), version], check=True, capture_output=True)
    (root / ".unpacked").touch()
    return root


def _initramfs(module_dir: Path, busybox: Path) -> bytes:
    paths = _module_paths(module_dir)
    archive = NewcArchive()
    for directory in ("bin", "dev", "proc", "sys", "modules"):
        archive.directory(directory)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    for path in paths:
        archive.file(f"modules/{path.name}", path.read_bytes())
    archive.file("modules.list", "".join(f"{path.name}\n" for path in paths).encode())
    archive.file("init", INIT.encode(), 0o755)
    archive.file("lvm.conf", LVM_CONF.encode())
    return archive.close()


def _module_paths(module_dir: Path) -> list[Path]:
    """The files of MODULES, in MODULES' order; a module the kernel has built in is left out."""
    by_name = {}
    for line in (module_dir / "modules.dep").read_text().splitlines():
        path = line.partition(":")[0]
        by_name[_module_name(path)] = module_dir / path
    built_in = {_module_name(line) for line in (module_dir / "modules.builtin").read_text().split()}
    paths = []
    for module in MODULES:
        name = module.replace("-", "_")
        if name in by_name:
            paths.append(by_name[name])
        elif name not in built_in:
            raise GuestError(f"the guest kernel has no module {module} ({module_dir})")
    return paths


def _module_name(path: str) -> str:
    return re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(path)).replace("-", "_")


class NewcArchive:
    """A cpio archive in the "newc" format the kernel unpacks as an initramfs."""

    MAGIC = "070701"

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._inode = 1

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, b"", links=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def close(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return b"".join(self._parts)

    def _entry(self, name: str, mode: int, data: bytes, links: int = 1) -> None:
        encoded = name.encode() + b"\0"
        # inode, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
        fields = (self._inode, mode, 0, 0, links, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        self._inode += 1
        self._add(self.MAGIC.encode() + b"".join(b"%08X" % value for value in fields) + encoded)
        self._add(data)

    def _add(self, data: bytes) -> None:
        """``data`` padded to 4 bytes, as newc pads each header+name and each file's data."""
        self._parts.append(data + b"\0" * (-len(data) % 4))
        self._size += len(data)


# -- the guest --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobResult:
    returncode: int
    output: str  # stdout and stderr, interleaved


class Guest:
    """A booted guest serving jobs; use :func:`booted_guest`.

    Args:
        workdir: the host directory shared into the guest (``/run/share``) and holding its disks.
        disks: sizes [bytes] of sparse scratch disks, /dev/vda, /dev/vdb … in the guest.
        forwards: TCP ports of the host's 127.0.0.1 forwarded to the same port of GUEST_ADDRESS
            (an agent in the guest that the host's agents and controller reach).
    """

    def __init__(self, workdir: Path, disks: Sequence[int], forwards: Sequence[int] = ()) -> None:
        self.workdir = workdir
        self.console = workdir / "console.log"
        self._jobs = 0
        files = boot_files()
        (workdir / "serve.sh").write_text(SERVE.replace("{poll}", f"{POLL_INTERVAL:g}"))
        argv = [QEMU, "-nographic", "-nodefaults", "-no-reboot", "-serial", "stdio", "-monitor", "none",
                "-m", str(MEMORY_MIB), "-smp", "1", "-accel", os.environ.get("WALBOPS_VM_ACCEL", "tcg"),
                "-cpu", "max", "-kernel", str(files.kernel), "-initrd", str(files.initrd),
                "-append", "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off rw",
                "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
                "-fsdev", f"local,id=share,path={workdir},security_model=none",
                "-device", "virtio-9p-pci,fsdev=share,mount_tag=share",
                "-device", "virtio-rng-pci"]
        if forwards:
            rules = "".join(f",hostfwd=tcp:127.0.0.1:{port}-{GUEST_ADDRESS}:{port}" for port in forwards)
            argv += ["-netdev", f"user,id=net0,restrict=on{rules}", "-device", "virtio-net-pci,netdev=net0"]
        for index, size in enumerate(disks):
            image = workdir / f"disk{index}.img"
            with open(image, "wb") as stream:
                stream.truncate(size)
            argv += ["-drive", f"file={image},format=raw,if=none,id=disk{index},cache=unsafe,discard=unmap",
                     "-device", f"virtio-blk-pci,drive=disk{index},serial=walbops{index}"]
        with open(self.console, "wb") as console:
            self._qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                          preexec_fn=_die_with_parent)
        try:
            self._wait_for(workdir / "ready", BOOT_TIMEOUT, "boot")
        except GuestError:
            self.kill()
            raise

    def run(self, script: str, timeout: float) -> JobResult:
        """Run the shell ``script`` in the guest (as root, in /); its exit code and output.

        Raises:
            GuestError: the guest died, or the job did not finish within ``timeout`` [s] (the
                guest is stopped then: its state is unknown).
        """
        self._jobs += 1
        job = self.workdir / f"job-{self._jobs}"
        partial = job.with_suffix(".partial")
        partial.write_text(script)
        partial.replace(job.with_suffix(".sh"))
        result = job.with_suffix(".rc")
        try:
            self._wait_for(result, timeout, f"job {self._jobs}")
        except GuestError:
            self.kill()
            raise
        output = job.with_suffix(".out").read_text(errors="replace")
        return JobResult(int(result.read_text()), output)

    def python(self, argv: Sequence[str], timeout: float, cwd: Path, env: dict[str, str] | None = None) -> JobResult:
        """Run this checkout's virtualenv Python with ``argv`` in ``cwd``."""
        from helpers import ROOT

        exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in (env or {}).items())
        python = ROOT / ".venv" / "bin" / "python"
        return self.run(f"{exports}cd {shlex.quote(str(cwd))} && exec {shlex.join([str(python), *argv])}\n",
                        timeout)

    def _wait_for(self, path: Path, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self._qemu.poll() is not None:
                raise GuestError(f"the guest stopped (qemu exit {self._qemu.returncode}) during {what}; "
                                 f"its console:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise GuestError(f"{what} did not finish within {timeout:g} s; the guest's console:\n"
                                 f"{self.console_tail()}")
            time.sleep(POLL_INTERVAL)

    def console_tail(self, size: int = 4000) -> str:
        return self.console.read_bytes()[-size:].decode(errors="replace")

    def kill(self) -> None:
        if self._qemu.poll() is None:
            self._qemu.kill()
            self._qemu.wait()

    def power_off(self) -> None:
        """Let the guest leave its job loop and power off; kill it if it does not."""
        (self.workdir / "quit").touch()
        try:
            self._qemu.wait(POWEROFF_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()


def _die_with_parent() -> None:
    """In the qemu child: be killed when the test process dies (a killed pytest runs no teardown)."""
    PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.contextmanager
def booted_guest(workdir: Path, disks: Sequence[int] = (), forwards: Sequence[int] = ()) -> Iterator[Guest]:
    """A guest booted with scratch ``disks`` and ``forwards`` (Guest) in ``workdir``; powered off
    afterwards, its disks deleted."""
    guest = Guest(workdir, disks, forwards)
    try:
        yield guest
    finally:
        guest.power_off()
        for image in workdir.glob("disk*.img"):
            image.unlink()
