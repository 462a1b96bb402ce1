"""DirStore on plain temporary directories: bases, restores against a naive model, failures."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from walbops.diff.chain import DiffDirectory
from walbops.diff.engine import DiscardPolicy, convert_to_indexed
from walbops.diff.files import merged_ios
from walbops.diff.io import DiffIo, IoKind
from walbops.diff.sorted_file import SortedDiffWriter
from walbops.errors import FormatError, OperationError, UsageError
from walbops.formats.compression import Compression
from walbops.gid import MetaDiff, MetaState, diff_file_name
from walbops.store import CloneMethod, ClonePolicy, Restored, diffs, open_store
from walbops.store import clone as clone_mod
from walbops.store.dirstore import DirStore

LB = 512
UUID = bytes(range(16))
SIZE_LB = 4096  # 2 MiB volume
VOL = "vol-1"


def make_io(address: int, blocks: int, kind: IoKind = IoKind.NORMAL, fill: int = 1) -> DiffIo:
    if kind == IoKind.NORMAL:
        return DiffIo.normal(address, bytes([fill]) * blocks * LB)
    return DiffIo(address, blocks, kind)


def write_diff(path: Path, ios: list[DiffIo], indexed: bool = False) -> Path:
    """A wdiff holding ``ios`` (sorted by address for the sorted type)."""
    with open(path, "wb") as out:
        if indexed:
            convert_to_indexed(iter(ios), out, UUID, Compression.LZ4)
        else:
            writer = SortedDiffWriter(out, UUID, Compression.LZ4)
            for io in sorted(ios, key=lambda io: io.address):
                writer.write(io)
            writer.close()
    return path


def paint(image: bytearray, ios: list[DiffIo], discard: DiscardPolicy) -> None:
    """The naive model of applying merged IOs: per block the newest IO wins.

    A block whose newest IO is a DISCARD keeps what ``image`` (the base) held under
    the IGNORE policy, even where an older diff wrote it: walb-archive merges the
    chain before it applies it, and so does the store.
    """
    newest: dict[int, tuple[DiffIo, int]] = {}
    for io in ios:
        for lb in range(io.address, io.end):
            newest[lb] = (io, lb - io.address)
    for lb, (io, index) in newest.items():
        if io.kind == IoKind.NORMAL:
            image[lb * LB:(lb + 1) * LB] = io.data()[index * LB:(index + 1) * LB]
        elif io.kind == IoKind.ALLZERO or discard != DiscardPolicy.IGNORE:
            image[lb * LB:(lb + 1) * LB] = bytes(LB)


# Three clean diffs 0→2→5→7, overlapping each other, with ALLZERO and DISCARD records.
CHAIN = [
    (MetaDiff(0, 2, timestamp=1_500_000_000), [make_io(0, 16, fill=1), make_io(100, 8, fill=2),
                                               make_io(2000, 64, fill=3)]),
    (MetaDiff(2, 5, timestamp=1_500_000_100), [make_io(4, 4, fill=4), make_io(100, 2, IoKind.ALLZERO),
                                               make_io(2010, 20, IoKind.DISCARD), make_io(4000, 96, fill=5)]),
    (MetaDiff(5, 7, timestamp=1_500_000_200), [make_io(0, 2, fill=6), make_io(2020, 4, fill=7)]),
]


@pytest.fixture
def diff_dir(tmp_path: Path) -> DiffDirectory:
    directory = tmp_path / "wdiffs"
    directory.mkdir()
    for index, (meta, ios) in enumerate(CHAIN):
        write_diff(directory / diff_file_name(meta), ios, indexed=index == 1)
    return DiffDirectory.scan(str(directory))


@pytest.fixture
def store(tmp_path: Path) -> DirStore:
    return DirStore(str(tmp_path / "archive"))


def base_content(seed: int = 7) -> bytes:
    """Data in the first and last quarter, a hole-sized zero run in between."""
    rng = random.Random(seed)
    quarter = SIZE_LB * LB // 4
    return rng.randbytes(quarter) + bytes(2 * quarter) + rng.randbytes(quarter)


def filled_base(store: DirStore, content: bytes | None = None) -> bytes:
    content = base_content() if content is None else content
    store.create_base(VOL, SIZE_LB)
    with store.open_base(VOL) as target:
        for offset in range(0, len(content), 1 << 18):
            chunk = content[offset:offset + (1 << 18)]
            if any(chunk):
                os.pwrite(target.fd, chunk, offset)
    return content


def expected(base: bytes, gid: int, discard: DiscardPolicy) -> bytes:
    image = bytearray(base)
    paint(image, [io for meta, ios in CHAIN if meta.snap_e.gid_b <= gid for io in ios], discard)
    return bytes(image)


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("vol", ["", "a" * 65, "a_b", "a/b", "..", "vol 1", "é"])
def test_bad_volume_ids_are_refused_everywhere(store, vol):
    for call in (lambda: store.create_base(vol, 8), lambda: store.base_exists(vol), lambda: store.restored(vol),
                 lambda: store.restore(vol, 1, []), lambda: store.cleanup(vol), lambda: store.remove_volume(vol)):
        with pytest.raises(UsageError, match=r"\[0-9A-Za-z-\]"):
            call()
    assert not os.path.exists(store.root)


@pytest.mark.parametrize("gid", [-1, 1 << 64, "3", 1.0, True])
def test_bad_gids_are_refused(store, gid):
    store.create_base(VOL, 8)
    with pytest.raises(UsageError, match="gid"):
        store.restore(VOL, gid, [])


def test_names_follow_walb(store):
    assert store.restored_path("a-Z-9", 12) == os.path.join(store.root, "a-Z-9", "restored", "wr_a-Z-9_12.img")
    assert store.base_path("x" * 64).endswith("/" + "x" * 64 + "/base.img")


# -- base --------------------------------------------------------------------------------


def test_create_base_is_sparse_and_refuses_a_second_create(store):
    path = store.create_base(VOL, SIZE_LB)
    assert store.base_exists(VOL) and not store.base_exists("other")
    assert store.base_size_lb(VOL) == SIZE_LB
    assert os.stat(path).st_blocks == 0, "a new base is one hole"
    assert store.volumes() == [VOL]
    with pytest.raises(OperationError, match=f"volume {VOL}: a base image exists already at {path}"):
        store.create_base(VOL, SIZE_LB)
    with pytest.raises(UsageError, match="size"):
        store.create_base("other", 0)


def test_grow_base_never_shrinks(store):
    store.create_base(VOL, 16)
    with store.open_base(VOL) as target:
        assert target.size_lb == 16
        os.pwrite(target.fd, b"\x09" * 16 * LB, 0)
    assert store.grow_base(VOL, 64) == 64
    assert store.grow_base(VOL, 32) == 64, "smaller is nothing to do"
    with open(store.base_path(VOL), "rb") as stream:
        assert stream.read() == b"\x09" * 16 * LB + bytes(48 * LB)


def test_base_operations_need_a_base(store):
    with pytest.raises(OperationError, match=f"volume {VOL}: no base image at .*base.img"):
        store.base_size_lb(VOL)
    with pytest.raises(OperationError, match="no base image"):
        store.grow_base(VOL, 8)
    with pytest.raises(OperationError, match="no base image"), store.open_base(VOL):
        pass


# The verify pass keeps every IO for the apply pass, none (the apply reads the files again), or
# stops keeping them in the middle of the second file.
KEEP_BUDGETS = [None, 0, 40 * LB]


@pytest.mark.parametrize("keep", KEEP_BUDGETS)
def test_apply_to_base_equals_the_model(store, diff_dir, keep, monkeypatch):
    if keep is not None:
        monkeypatch.setattr(diffs, "KEEP_VERIFIED_BYTES", keep)
    base = filled_base(store)
    paths = diff_dir.restore_paths(MetaState.parse("<|0|>"), 7)
    stats = store.apply_to_base(VOL, paths, DiscardPolicy.ZERO)
    assert stats.extra["diffs"] == 3 and stats.discard_lb == 20
    with open(store.base_path(VOL), "rb") as stream:
        assert stream.read() == expected(base, 7, DiscardPolicy.ZERO)


def test_apply_to_base_refuses_a_corrupt_chain_untouched(store, diff_dir, tmp_path):
    base = filled_base(store)
    paths = diff_dir.restore_paths(MetaState.parse("<|0|>"), 7)
    corrupt_data(paths[2])
    with pytest.raises(OperationError, match=f"volume {VOL}: cannot apply") as caught:
        store.apply_to_base(VOL, paths)
    assert isinstance(caught.value.__cause__, FormatError)
    with open(store.base_path(VOL), "rb") as stream:
        assert stream.read() == base


@pytest.mark.parametrize("keep", KEEP_BUDGETS)
def test_verified_diffs_merge_as_the_files_do(diff_dir, keep):
    paths = diff_dir.restore_paths(MetaState.parse("<|0|>"), 7)
    verified = diffs.verify_diffs(paths, SIZE_LB, DiscardPolicy.ZERO, keep)
    assert (verified.kept is not None) == (keep is None)
    if verified.kept is not None:
        assert len(verified.kept) == len(CHAIN) and all(verified.kept)

    def described(ios):
        return [(io.address, io.blocks, io.kind, bytes(io.data()) if io.kind == IoKind.NORMAL else b"")
                for io in ios]

    assert described(verified.merged()) == described(merged_ios(paths))


# -- restore -----------------------------------------------------------------------------


@pytest.mark.parametrize("gid", [2, 5, 7])
@pytest.mark.parametrize("discard", [DiscardPolicy.IGNORE, DiscardPolicy.ZERO, DiscardPolicy.PASSDOWN])
def test_restore_equals_applying_by_hand(store, diff_dir, gid, discard):
    base = filled_base(store)
    paths = diff_dir.restore_paths(MetaState.parse("<|0|>"), gid)
    restored = store.restore(VOL, gid, paths, discard)
    assert isinstance(restored, Restored) and os.fspath(restored) == str(restored) == restored.path
    assert restored.path == store.restored_path(VOL, gid)
    assert restored.clone in (CloneMethod.REFLINK, CloneMethod.SPARSE_COPY)
    assert restored.stats.extra["diffs"] == len(paths)
    with open(restored.path, "rb") as stream:
        assert stream.read() == expected(base, gid, discard)
    with open(store.base_path(VOL), "rb") as stream:
        assert stream.read() == base, "the base is untouched"
    assert store.restored(VOL) == [gid]
    assert os.listdir(os.path.dirname(restored.path)) == [os.path.basename(restored.path)], "no tmp left"


def test_restore_with_no_diffs_is_the_base(store):
    base = filled_base(store)
    restored = store.restore(VOL, 0, [])
    with open(restored.path, "rb") as stream:
        assert stream.read() == base


def test_restore_refuses_an_existing_gid_and_a_missing_base(store, diff_dir):
    with pytest.raises(OperationError, match=f"volume {VOL}: no base image"):
        store.restore(VOL, 2, [])
    filled_base(store)
    store.restore(VOL, 2, diff_dir.restore_paths(MetaState.parse("<|0|>"), 2))
    with pytest.raises(OperationError, match=f"volume {VOL}: gid 2 is restored already at .*wr_{VOL}_2.img"):
        store.restore(VOL, 2, [])


def blocks_of(path: str) -> int:
    return os.stat(path).st_blocks


def test_sparse_copy_fallback_keeps_holes_and_content(store, diff_dir, monkeypatch):
    def no_reflink(fd, request, arg=0):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(clone_mod.fcntl, "ioctl", no_reflink)
    content = base_content()
    store.create_base(VOL, SIZE_LB)
    with open(store.base_path(VOL), "r+b") as stream:
        stream.write(content)  # zeros written too: the middle half is allocated zeros
    base_blocks = blocks_of(store.base_path(VOL))
    assert base_blocks * 512 >= len(content), "the base is fully allocated"
    paths = diff_dir.restore_paths(MetaState.parse("<|0|>"), 7)
    restored = store.restore(VOL, 7, paths, DiscardPolicy.ZERO)
    assert restored.clone == CloneMethod.SPARSE_COPY
    with open(restored.path, "rb") as stream:
        assert stream.read() == expected(content, 7, DiscardPolicy.ZERO)
    # The zero half is left out of the copy; only the data quarters and the diffs' writes are allocated.
    assert blocks_of(restored.path) * 512 <= len(content) // 2 + 256 * 1024


def test_sparse_copy_of_a_mostly_hole_base(tmp_path, diff_dir):
    store = DirStore(str(tmp_path / "a"), clone=ClonePolicy.COPY)
    store.create_base(VOL, SIZE_LB * 64)  # 128 MiB, one 4 KiB block of data
    with store.open_base(VOL) as target:
        os.pwrite(target.fd, b"\x05" * 4096, 50 << 20)
    restored = store.restore(VOL, 0, [])
    assert restored.clone == CloneMethod.SPARSE_COPY
    assert blocks_of(restored.path) * 512 <= 64 * 1024
    assert os.path.getsize(restored.path) == SIZE_LB * 64 * LB
    with open(restored.path, "rb") as stream:
        stream.seek(50 << 20)
        assert stream.read(8192) == b"\x05" * 4096 + bytes(4096)


def test_reflink_policy_fails_cleanly_without_reflinks(tmp_path, monkeypatch):
    def no_reflink(fd, request, arg=0):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(clone_mod.fcntl, "ioctl", no_reflink)
    store = DirStore(str(tmp_path / "a"), clone="reflink")
    filled_base(store)
    with pytest.raises(OperationError, match=f"volume {VOL}: cannot clone .* for gid 3"):
        store.restore(VOL, 3, [])
    assert store.restored(VOL) == [] and os.listdir(store.restored_dir(VOL)) == []
    with pytest.raises(UsageError, match="clone policy"):
        DirStore(str(tmp_path), clone="hardlink")


def corrupt_data(path: str) -> None:
    """Flip a byte inside the last record's data (before the EOF pack / index)."""
    raw = bytearray(Path(path).read_bytes())
    raw[-4096 - 100] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


def test_corrupt_diff_refuses_the_restore_and_leaves_nothing(store, diff_dir):
    base = filled_base(store)
    paths = diff_dir.restore_paths(MetaState.parse("<|0|>"), 7)
    corrupt_data(paths[0])  # even though later diffs overwrite some of it
    with pytest.raises(OperationError, match=f"volume {VOL}: cannot restore gid 7: .*{os.path.basename(paths[0])}") \
            as caught:
        store.restore(VOL, 7, paths)
    assert isinstance(caught.value.__cause__, FormatError)
    assert store.restored(VOL) == [] and os.listdir(store.restored_dir(VOL)) == []
    with open(store.base_path(VOL), "rb") as stream:
        assert stream.read() == base


def test_diff_beyond_the_base_or_missing_refuses_the_restore(store, tmp_path):
    store.create_base(VOL, 64)
    far = write_diff(tmp_path / "far.wdiff", [make_io(60, 8)])
    with pytest.raises(OperationError, match="gid 1: .*far.wdiff: IO \\[60, 68\\) LB lies beyond"):
        store.restore(VOL, 1, [str(far)])
    with pytest.raises(OperationError, match="gone.wdiff: no such diff"):
        store.restore(VOL, 1, [str(tmp_path / "gone.wdiff")])
    assert os.listdir(store.restored_dir(VOL)) == []


def test_a_failure_while_applying_removes_the_tmp_image(store, diff_dir, monkeypatch):
    import walbops.store.dirstore as dirstore

    filled_base(store)

    def crash(paths, target):
        raise OSError(errno.EIO, "simulated IO error")

    monkeypatch.setattr(dirstore, "apply_diffs", crash)
    with pytest.raises(OSError, match="simulated"):
        store.restore(VOL, 7, diff_dir.restore_paths(MetaState.parse("<|0|>"), 7))
    assert os.listdir(store.restored_dir(VOL)) == []


def test_cleanup_removes_tmp_leftovers_only(store, diff_dir):
    filled_base(store)
    store.restore(VOL, 2, diff_dir.restore_paths(MetaState.parse("<|0|>"), 2))
    leftover = os.path.join(store.restored_dir(VOL), f"wr_{VOL}_5_tmp.img")
    other_volume = os.path.join(store.restored_dir(VOL), "wr_other_5_tmp.img")
    for path in (leftover, other_volume, os.path.join(store.volume_dir(VOL), ".base.img.tmp")):
        Path(path).write_bytes(b"partial")
    assert store.restored(VOL) == [2], "tmp images are not restored images"
    removed = store.cleanup(VOL)
    assert sorted(removed) == sorted([leftover, os.path.join(store.volume_dir(VOL), ".base.img.tmp")])
    assert store.cleanup(VOL) == []
    assert sorted(os.listdir(store.restored_dir(VOL))) == ["wr_other_5_tmp.img", f"wr_{VOL}_2.img"]
    # A restore after a crash replaces its own leftover.
    Path(leftover).write_bytes(b"partial")
    store.restore(VOL, 5, diff_dir.restore_paths(MetaState.parse("<|0|>"), 5))
    assert not os.path.exists(leftover) and store.restored(VOL) == [2, 5]


def test_delete_restored_and_remove_volume(store, diff_dir):
    filled_base(store)
    for gid in (2, 7):
        store.restore(VOL, gid, diff_dir.restore_paths(MetaState.parse("<|0|>"), gid))
    assert store.restored(VOL) == [2, 7] and store.has_restored(VOL, 7)
    store.delete_restored(VOL, 2)
    assert store.restored(VOL) == [7]
    with pytest.raises(OperationError, match=f"volume {VOL}: gid 2 is not restored"):
        store.delete_restored(VOL, 2)
    with pytest.raises(OperationError, match="gid 2 is not restored"):
        store.attach(VOL, 2)
    assert store.detach(VOL, 2) == []
    store.remove_volume(VOL)
    assert not os.path.exists(store.volume_dir(VOL)) and store.volumes() == []
    store.remove_volume(VOL)  # nothing left: nothing to do


def test_open_store(tmp_path):
    store = open_store("dir", root=str(tmp_path))
    assert isinstance(store, DirStore) and store.kind == "dir"
    with pytest.raises(UsageError, match="unknown store kind 'zfs'"):
        open_store("zfs")
    with pytest.raises(UsageError, match="store dir"):
        open_store("dir", root=str(tmp_path), vg="x")


def test_clone_helpers_on_the_host_filesystem(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(8192) + bytes(1 << 20) + b"\x01" * 100)
    with open(src, "rb") as a, open(dst, "wb") as b:
        method = clone_mod.clone_file(a.fileno(), b.fileno(), ClonePolicy.AUTO)
    assert method in (CloneMethod.REFLINK, CloneMethod.SPARSE_COPY)
    assert dst.read_bytes() == src.read_bytes()


def test_sorted_and_indexed_diffs_both_apply(store, tmp_path):
    store.create_base(VOL, 64)
    ios = [make_io(8, 4, fill=9), make_io(0, 2, fill=8)]
    sorted_path = write_diff(tmp_path / "s.wdiff", ios)
    indexed_path = write_diff(tmp_path / "i.wdiff", [make_io(9, 1, fill=7)], indexed=True)
    restored = store.restore(VOL, 1, [str(sorted_path), str(indexed_path)])
    data = Path(restored.path).read_bytes()
    assert data[:2 * LB] == b"\x08" * 2 * LB
    assert data[8 * LB:12 * LB] == b"\x09" * LB + b"\x07" * LB + b"\x09" * 2 * LB


def test_restored_as_dict(store):
    filled_base(store)
    restored = store.restore(VOL, 0, [])
    assert restored.as_dict()["clone"] == str(restored.clone) and restored.as_dict()["gid"] == 0


def test_store_kinds_are_registered_once_under_their_own_names(tmp_path):
    from walbops.store import STORE_KINDS, parse_store_flag, store_config_schema, store_from_config
    from walbops.store.registry import _BACKENDS

    assert all(backend.kind == kind for kind, backend in _BACKENDS.items()) and STORE_KINDS == ("dir", "lvm")
    assert [form["properties"]["kind"]["const"] for form in store_config_schema()["oneOf"]] == list(STORE_KINDS)
    assert parse_store_flag("lvm:vg0/pool") == {"kind": "lvm", "vg": "vg0", "thinpool": "pool"}
    assert parse_store_flag("dir") == {"kind": "dir"}
    store = store_from_config({"kind": "dir"}, str(tmp_path))
    assert store.root == str(tmp_path / "images")
    with pytest.raises(UsageError, match="unknown store kind 'zfs'"):
        parse_store_flag("zfs:tank")
    with pytest.raises(UsageError, match="volume group"):
        parse_store_flag("lvm:")
