"""The command line as a user meets it: one-line errors, exit codes, JSON, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import sha1_of


def walbops(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, input=stdin)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or code == 2, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr
    return stderr


def test_version():
    result = walbops("--version")
    assert result.returncode == 0 and result.stdout.decode().startswith("walbops ")


def test_gen_show_convert_redo_roundtrip(tmp_path: Path):
    wlog = tmp_path / "x.wlog"
    gen = walbops("wlog", "gen", str(wlog), "--device-size", "2M", "--log-size", "1M", "--seed", "7", "--json")
    assert gen.returncode == 0, gen.stderr
    shown = json.loads(walbops("wlog", "show", str(wlog), "--json").stdout)
    generated = json.loads(gen.stdout)
    assert shown["normal_lb"] == generated["normal_lb"] and shown["discard_lb"] == generated["discard_lb"]
    assert walbops("wlog", "gen", str(tmp_path / "y.wlog"), "--device-size", "2M", "--log-size", "1M",
                   "--seed", "7").returncode == 0
    assert (tmp_path / "y.wlog").read_bytes() == wlog.read_bytes(), "same seed, same bytes"

    for flag in ([], ["--indexed"]):
        wdiff = tmp_path / f"x{len(flag)}.wdiff"
        converted = walbops("wlog", "to-wdiff", str(wlog), "-o", str(wdiff), "--json", *flag)
        assert converted.returncode == 0, converted.stderr
        assert json.loads(walbops("wdiff", "verify", str(wdiff), "--json").stdout)["ok"] is True
        image = tmp_path / f"d{len(flag)}.img"
        assert walbops("wdiff", "redo", str(wdiff), "--target", str(image), "--size", "2M",
                       "--discard", "zero").returncode == 0
    redone = tmp_path / "r.img"
    assert walbops("wlog", "redo", str(wlog), "--target", str(redone), "--size", "2M",
                   "--discard", "zero").returncode == 0
    assert sha1_of(redone) == sha1_of(tmp_path / "d0.img") == sha1_of(tmp_path / "d1.img")


def test_stdin_and_stdout_pipes(tmp_path: Path):
    raw = walbops("wlog", "gen", "-", "--device-size", "1M", "--log-size", "256K").stdout
    converted = walbops("wlog", "to-wdiff", "-", "-o", "-", stdin=raw)
    assert converted.returncode == 0
    (tmp_path / "p.wdiff").write_bytes(converted.stdout)
    assert walbops("wdiff", "verify", str(tmp_path / "p.wdiff")).returncode == 0


def test_corrupt_wlog_is_one_line_with_file_and_offset(tmp_path: Path, vectors: Path):
    raw = bytearray((vectors / "s1.wlog").read_bytes())
    raw[4096 + 512 + 100] ^= 0xFF  # inside the data of the first record
    bad = tmp_path / "bad.wlog"
    bad.write_bytes(bytes(raw))
    image = tmp_path / "img"
    image.write_bytes(bytes(16 << 20))
    result = walbops("wlog", "redo", str(bad), "--target", str(image))
    assert_one_line_error(result, 3, "bad.wlog", "offset 4608", "IO checksum mismatch")
    assert image.read_bytes() == bytes(16 << 20), "nothing applied"


def test_truncated_wlog(tmp_path: Path, vectors: Path):
    bad = tmp_path / "cut.wlog"
    bad.write_bytes((vectors / "s2.wlog").read_bytes()[:-4096])
    assert_one_line_error(walbops("wlog", "show", str(bad)), 3, "cut.wlog", "end marker")


def test_not_a_wlog(tmp_path: Path, vectors: Path):
    result = walbops("wlog", "show", str(vectors / "s1.sorted.wdiff"))
    assert_one_line_error(result, 3, "s1.sorted.wdiff", "not a wlog")


@pytest.mark.parametrize("name", ["s1.sorted.wdiff", "s1.indexed.wdiff"])
def test_corrupt_wdiff_refused_before_applying(tmp_path: Path, vectors: Path, name: str):
    raw = bytearray((vectors / name).read_bytes())
    raw[len(raw) // 2] ^= 0x55
    bad = tmp_path / name
    bad.write_bytes(bytes(raw))
    image = tmp_path / "img"
    image.write_bytes(bytes(16 << 20))
    result = walbops("wdiff", "redo", str(bad), "--target", str(image))
    assert_one_line_error(result, 3, name, "offset")
    assert image.read_bytes() == bytes(16 << 20)
    verify = walbops("wdiff", "verify", str(bad), "--json")
    assert verify.returncode == 3 and json.loads(verify.stdout)["ok"] is False


def test_truncated_wdiff(tmp_path: Path, vectors: Path):
    bad = tmp_path / "cut.wdiff"
    bad.write_bytes((vectors / "s2.sorted.wdiff").read_bytes()[:50000])
    assert_one_line_error(walbops("wdiff", "verify", str(bad)), 3, "cut.wdiff")


def test_missing_file_is_exit_1(tmp_path: Path):
    assert_one_line_error(walbops("wdiff", "show", str(tmp_path / "nope.wdiff")), 1, "nope.wdiff")


@pytest.mark.parametrize("args", [
    ["wlog", "gen", "x", "--device-size", "1000", "--log-size", "1M"],
    ["wlog", "gen", "x", "--device-size", "1M", "--log-size", "lots"],
    ["wlog", "to-wdiff", "x", "-o", "y", "--compression", "brotli"],
    ["wlog", "to-wdiff", "x", "-o", "y", "--compression", "lzma:9"],
    ["wdiff", "redo", "x", "--target", "t", "--discard", "shred"],
])
def test_bad_arguments_are_usage_errors(tmp_path: Path, args):
    result = subprocess.run([sys.executable, "-m", "walbops.cli.main", *args], capture_output=True, cwd=tmp_path)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_output_is_atomic_on_failure(tmp_path: Path, vectors: Path):
    raw = bytearray((vectors / "s2.wlog").read_bytes())
    raw[-4096 - 8192] ^= 0x01
    bad = tmp_path / "bad.wlog"
    bad.write_bytes(bytes(raw))
    out = tmp_path / "out.wdiff"
    result = walbops("wlog", "to-wdiff", str(bad), "-o", str(out))
    assert result.returncode == 3
    assert not out.exists() and not list(tmp_path.glob(".out.wdiff.*"))


def test_merge_refuses_to_overwrite_an_input(tmp_path: Path, vectors: Path):
    copy = tmp_path / "a.wdiff"
    copy.write_bytes((vectors / "s2.sorted.wdiff").read_bytes())
    assert_one_line_error(walbops("wdiff", "merge", str(copy), "-o", str(copy)), 2, "inputs")


def test_no_command_writes_over_one_of_its_inputs_by_any_name(tmp_path: Path, vectors: Path, monkeypatch):
    """Issue 13's probe: the same file through another spelling, a symlink or a hard link."""
    monkeypatch.chdir(tmp_path)
    wdiff = tmp_path / "a.wdiff"
    wdiff.write_bytes((vectors / "s2.sorted.wdiff").read_bytes())
    wlog = tmp_path / "c.wlog"
    wlog.write_bytes((vectors / "s2.wlog").read_bytes())
    base = tmp_path / "base.img"
    base.write_bytes(bytes(4 << 20))
    (tmp_path / "link.wdiff").symlink_to(wdiff)
    os.link(wdiff, tmp_path / "hard.wdiff")
    (tmp_path / "sub").mkdir()
    before = {path: path.read_bytes() for path in (wdiff, wlog, base)}
    size = "4M"
    attempts = [
        ["wdiff", "full", "a.wdiff", "--size", size, "-o", "./sub/../a.wdiff"],
        ["wdiff", "full", "a.wdiff", "--size", size, "-o", "link.wdiff"],
        ["wdiff", "full", "a.wdiff", "--size", size, "-o", "hard.wdiff"],
        ["wdiff", "full", "a.wdiff", "--size", size, "--base", "base.img", "-o", str(base)],
        ["wdiff", "merge", "a.wdiff", "-o", "link.wdiff"],
        ["wlog", "to-wdiff", "c.wlog", "-o", "./c.wlog"],
    ]
    for args in attempts:
        stderr = assert_one_line_error(walbops(*args), 2, "is one of the inputs")
        assert "destroy" in stderr
    assert {path: path.read_bytes() for path in before} == before
    assert (tmp_path / "link.wdiff").is_symlink()


def test_output_to_a_device_node_is_written_in_place_not_replaced(tmp_path: Path):
    # Run as root, an atomic rename over /dev/null would replace the device with a file.
    result = walbops("wlog", "gen", "/dev/null", "--device-size", "1M", "--log-size", "256K")
    assert result.returncode == 0, result.stderr
    assert Path("/dev/null").is_char_device()


def test_to_wdiff_of_consecutive_wlogs_equals_to_wdiff_of_the_whole(tmp_path: Path):
    from io import BytesIO

    from walbops.diff.logs import WlogReader, WlogWriter
    from walbops.formats.wlog import WlogHeader

    whole = tmp_path / "whole.wlog"
    assert walbops("wlog", "gen", str(whole), "--device-size", "2M", "--log-size", "2M", "--seed", "3").returncode == 0
    reader = WlogReader(BytesIO(whole.read_bytes()))
    packs = list(reader)
    parts = []
    for index, chunk in enumerate((packs[:len(packs) // 2], packs[len(packs) // 2:])):
        part = tmp_path / f"part{index}.wlog"
        with open(part, "wb") as out:
            writer = WlogWriter(out, WlogHeader(reader.pbs, reader.salt, reader.header.uuid,
                                                chunk[0].header.logpack_lsid))
            for pack in chunk:
                writer.write_pack(pack.header, pack.data)
            writer.close()
        parts.append(str(part))
    assert walbops("wlog", "to-wdiff", str(whole), "-o", str(tmp_path / "a.wdiff")).returncode == 0
    assert walbops("wlog", "to-wdiff", *parts, "-o", str(tmp_path / "b.wdiff")).returncode == 0
    assert (tmp_path / "a.wdiff").read_bytes() == (tmp_path / "b.wdiff").read_bytes()
    reversed_order = walbops("wlog", "to-wdiff", parts[1], parts[0], "-o", str(tmp_path / "c.wdiff"))
    assert_one_line_error(reversed_order, 3, "part0.wlog", "does not continue")
    assert not (tmp_path / "c.wdiff").exists()


def test_full_image_up_to_a_gid_picks_the_chain_by_walb_names(tmp_path: Path):
    """Three diffs named as an archive names them; `full --gid` lays the right ones over the base."""
    from io import BytesIO

    from walbops.diff.logs import WlogReader, WlogWriter
    from walbops.formats.wlog import WlogHeader
    from walbops.gid import MetaDiff, diff_file_name

    whole = tmp_path / "whole.wlog"
    assert walbops("wlog", "gen", str(whole), "--device-size", "2M", "--log-size", "3M", "--seed", "5").returncode == 0
    reader = WlogReader(BytesIO(whole.read_bytes()))
    packs = list(reader)
    third = -(-len(packs) // 3)
    diffs = tmp_path / "diffs"
    diffs.mkdir()
    for gid in range(3):
        part = tmp_path / f"part{gid}.wlog"
        chunk = packs[gid * third:(gid + 1) * third]
        with open(part, "wb") as out:
            writer = WlogWriter(out, WlogHeader(reader.pbs, reader.salt, reader.header.uuid,
                                                chunk[0].header.logpack_lsid))
            for pack in chunk:
                writer.write_pack(pack.header, pack.data)
            writer.close()
        name = diff_file_name(MetaDiff(gid, gid + 1, is_mergeable=gid == 1, timestamp=1_700_000_000 + gid))
        assert walbops("wlog", "to-wdiff", str(part), "-o", str(diffs / name)).returncode == 0
        redone = tmp_path / f"redo{gid + 1}.img"
        if gid:
            redone.write_bytes((tmp_path / f"redo{gid}.img").read_bytes())
        assert walbops("wlog", "redo", str(part), "--target", str(redone), "--size", "2M",
                       "--discard", "zero").returncode == 0
    for gid in (1, 2, 3):
        image = tmp_path / f"full{gid}.img"
        result = walbops("wdiff", "full", "--diff-dir", str(diffs), "--gid", str(gid), "--size", "2M",
                         "-o", str(image), "--json")
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)["diffs"]) == gid
        assert sha1_of(image) == sha1_of(tmp_path / f"redo{gid}.img")
    missing = walbops("wdiff", "full", "--diff-dir", str(diffs), "--gid", "7", "--size", "2M", "-o",
                      str(tmp_path / "none.img"))
    assert_one_line_error(missing, 5, "snapshot 7 is not restorable")
    (diffs / "not-a-walb-name.wdiff").write_bytes(b"")
    assert_one_line_error(walbops("wdiff", "full", "--diff-dir", str(diffs), "--gid", "1", "--size", "2M", "-o",
                                  str(tmp_path / "x.img")), 3, "not-a-walb-name.wdiff")


def test_pki_issue_gives_a_host_all_its_roles_in_one_run_and_keeps_them(tmp_path: Path):
    """What the roles run once per host and run: a certificate per role, kept while valid."""
    ca = str(tmp_path / "ca")
    assert walbops("pki", "init", ca).returncode == 0
    issue = ("pki", "issue", ca, "h1", "--role", "storage", "--role", "controller", "--name", "10.0.0.1", "--out",
             str(tmp_path / "issued" / "{role}"), "--json")
    first = json.loads(walbops(*issue).stdout)
    assert first["changed"] and [cert["role"] for cert in first["certificates"]] == ["storage", "controller"]
    assert {cert["reason"] for cert in first["certificates"]} == {"missing"}
    for role in ("storage", "controller"):
        assert (tmp_path / "issued" / role / "h1.key").stat().st_mode & 0o777 == 0o600
    again = json.loads(walbops(*issue).stdout)
    assert not again["changed"] and [cert["path"] for cert in again["certificates"]] == [
        cert["path"] for cert in first["certificates"]]
    one = json.loads(walbops("pki", "issue", ca, "h1", "--role", "storage", "--name", "10.0.0.1", "--out",
                             str(tmp_path / "issued" / "storage"), "--json").stdout)
    assert not one["changed"] and one["role"] == "storage"  # one role: its fields at the top level too
    assert_one_line_error(walbops("pki", "issue", ca, "h1", "--role", "storage", "--role", "proxy", "--out",
                                  str(tmp_path / "flat")), 2, "must contain {role} when several roles")
