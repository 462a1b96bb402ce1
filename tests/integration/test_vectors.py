"""Interoperability with WalB itself: files written by walb-tools 1.0.19 (tests/vectors)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from helpers import sha1_of

from walbops.diff.engine import convert_to_indexed, convert_to_sorted, log_ios
from walbops.diff.logs import LdevLogReader, WlogReader, WlogWriter, read_super
from walbops.formats.compression import Compression
from walbops.formats.wlog import WlogHeader

S1_SHA1 = "e58163c219f07912d8473ee5949c26af018ce350"
S2_SHA1 = "4b23372d5590a68cbf7a573799eb315e40794199"
M123_SHA1 = "713db37931f637c2e70ad3ee2d86fb3ccf515573"
IMAGE = "16M"

EXPECTED = {
    "s1.wlog": S1_SHA1, "s1.sorted.wdiff": S1_SHA1, "s1.indexed.wdiff": S1_SHA1,
    "s2.wlog": S2_SHA1, "s2.sorted.wdiff": S2_SHA1, "s2.indexed.wdiff": S2_SHA1,
    "m123.lz4.wdiff": M123_SHA1,
}


def walbops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, text=True)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_vector_applies_to_the_documented_image(tmp_path, vectors, name):
    target = tmp_path / "image"
    group = "wlog" if name.endswith(".wlog") else "wdiff"
    result = walbops(group, "redo", str(vectors / name), "--target", str(target), "--size", IMAGE,
                     "--discard", "zero", "--json")
    assert result.returncode == 0, result.stderr
    assert sha1_of(target) == EXPECTED[name]


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if n.endswith(".wdiff")])
def test_every_wdiff_gives_the_documented_full_image(tmp_path, vectors, name):
    out = tmp_path / "full.img"
    result = walbops("wdiff", "full", str(vectors / name), "--size", IMAGE, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert sha1_of(out) == EXPECTED[name]


def test_s2_wlog_facts(vectors):
    with open(vectors / "s2.wlog", "rb") as stream:
        reader = WlogReader(stream)
        packs = list(reader)
    head = reader.header
    assert (head.physical_bs, head.log_checksum_salt) == (4096, 0x88BC0EA4)
    assert head.uuid.hex() == "9bb39ac6009665dbf643fce5338d7876"
    assert (head.begin_lsid, head.end_lsid) == (0, 0xFFFF_FFFF_FFFF_FFFF)
    assert len(packs) == 17 and reader.end_lsid == 1113
    records = [rec for pack in packs for rec in pack.header.records]
    assert sum(r.io_size for r in records if r.is_normal) == 7708
    assert sum(r.io_size for r in records if r.is_discard) == 19644
    assert sum(r.data_pb(4096) for r in records if r.is_padding) == 36


def test_s1_sorted_wdiff_facts(vectors):
    result = walbops("wdiff", "show", str(vectors / "s1.sorted.wdiff"), "--json")
    assert result.returncode == 0, result.stderr
    import json
    facts = json.loads(result.stdout)
    assert (facts["normal_ios"], facts["normal_lb"]) == (196, 5646)
    assert (facts["allzero_ios"], facts["allzero_lb"]) == (17, 524)
    assert (facts["discard_ios"], facts["discard_lb"]) == (78, 6559)
    assert facts["data_bytes"] == 2890752


def test_ldev_super_sector_and_logs_give_s1_wlog_byte_for_byte(l512_ldev, vectors):
    fd = os.open(l512_ldev, os.O_RDONLY)
    try:
        sup = read_super(fd)
        assert (sup.physical_bs, sup.log_checksum_salt, sup.name) == (512, 4042102797, "peer0")
        assert (sup.ring_buffer_size, sup.ring_buffer_offset) == (65526, 10)
        assert (sup.oldest_lsid, sup.written_lsid, sup.device_size) == (0, 0, 32768)
        assert sup.uuid.hex() == "86f73b444f0867fe84a30ab2d3dfdf6c"
        out = io.BytesIO()
        writer = WlogWriter(out, WlogHeader(sup.physical_bs, sup.log_checksum_salt, sup.uuid, 0))
        for pack in LdevLogReader(fd, sup).packs(0):
            writer.write_pack(pack.header, pack.data)
        writer.close()
    finally:
        os.close(fd)
    assert out.getvalue() == (vectors / "s1.wlog").read_bytes()


@pytest.mark.parametrize("name", ["s1", "s2"])
def test_converting_with_snappy_reproduces_walb_tools_bytes(vectors, name):
    """The stretch goal: walb-tools' wlog-to-wdiff is deterministic, and so is walbops."""
    with open(vectors / f"{name}.wlog", "rb") as stream:
        reader = WlogReader(stream)
        out = io.BytesIO()
        convert_to_sorted(log_ios(reader), out, reader.header.uuid, Compression.SNAPPY)
    assert out.getvalue() == (vectors / f"{name}.sorted.wdiff").read_bytes()


@pytest.mark.parametrize("name, sha1", [("s1", S1_SHA1), ("s2", S2_SHA1)])
@pytest.mark.parametrize("indexed", [False, True])
def test_our_conversion_of_walb_logs_gives_the_same_image(tmp_path, vectors, name, sha1, indexed):
    out = tmp_path / "ours.wdiff"
    with open(vectors / f"{name}.wlog", "rb") as stream, open(out, "wb") as sink:
        reader = WlogReader(stream)
        convert = convert_to_indexed if indexed else convert_to_sorted
        convert(log_ios(reader), sink, reader.header.uuid, Compression.LZ4)
    image = tmp_path / "full.img"
    result = walbops("wdiff", "full", str(out), "--size", IMAGE, "-o", str(image))
    assert result.returncode == 0, result.stderr
    assert sha1_of(image) == sha1


def test_merging_our_conversions_matches_walb_merge(tmp_path, vectors):
    """m123 merges s1, s2 and a third log we do not have; s1+s2 merged must equal s2 over s1."""
    ours = tmp_path / "m12.wdiff"
    result = walbops("wdiff", "merge", str(vectors / "s1.sorted.wdiff"), str(vectors / "s2.indexed.wdiff"),
                     "-o", str(ours))
    assert result.returncode == 0, result.stderr
    merged, layered = tmp_path / "merged.img", tmp_path / "layered.img"
    assert walbops("wdiff", "redo", str(ours), "--target", str(merged), "--size", IMAGE, "--discard",
                   "zero").returncode == 0
    for name in ("s1.wlog", "s2.wlog"):
        assert walbops("wlog", "redo", str(vectors / name), "--target", str(layered), "--size", IMAGE,
                       "--discard", "zero").returncode == 0
    assert sha1_of(merged) == sha1_of(layered)


@pytest.mark.parametrize("name", ["s1", "s2"])
def test_indexed_conversion_with_snappy_reproduces_walb_tools_bytes(vectors, name):
    """The proxy's format too: same images, same aligned index, same index super."""
    with open(vectors / f"{name}.wlog", "rb") as stream:
        reader = WlogReader(stream)
        out = io.BytesIO()
        convert_to_indexed(log_ios(reader), out, reader.header.uuid, Compression.SNAPPY)
    assert out.getvalue() == (vectors / f"{name}.indexed.wdiff").read_bytes()
