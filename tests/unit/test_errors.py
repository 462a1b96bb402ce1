"""The error tree: exit codes, locations, and the message for a missing extra."""

from __future__ import annotations

import builtins

import pytest

from walbops.errors import BadField, ChecksumMismatch, FormatError, MissingExtra, UsageError, WalbopsError
from walbops.formats import compression
from walbops.formats.compression import Compression


def test_exit_codes_follow_the_tree():
    assert WalbopsError().exit_code == 1
    assert UsageError().exit_code == 2
    assert ChecksumMismatch("x").exit_code == 3
    assert MissingExtra().exit_code == 4


def test_format_error_names_source_and_offset():
    error = BadField("io_size is 0", 4096).located("x.wlog", 12)
    assert str(error) == "x.wlog: offset 4096: io_size is 0"
    assert isinstance(error, FormatError)


@pytest.mark.parametrize("kind, module, extra", [
    (Compression.SNAPPY, "cramjam", "snappy"),
    (Compression.ZSTD, "zstandard", "zstd"),
])
def test_missing_optional_codec_names_the_extra(monkeypatch, kind, module, extra):
    real_import = builtins.__import__

    def refusing_import(name, *args, **kwargs):
        if name == module:
            raise ImportError(f"No module named {module!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refusing_import)
    with pytest.raises(MissingExtra, match=rf"walbops\[{extra}\]"):
        compression.compress(kind, b"x" * 4096)
    with pytest.raises(MissingExtra, match=extra):
        compression.decompress(kind, b"\x80\x20\x00", 4096)
