"""``walbops ctl`` turns walbc's positional words into request arguments."""

from __future__ import annotations

import pytest

from walbops.cli.ctl_cmd import request_args
from walbops.errors import UsageError


def test_archive_info_positional_forms() -> None:
    assert request_args("archive-info", ["list", "vol0"]) == {"cmd": "list", "vol": "vol0"}
    assert request_args("archive-info", ["get", "vol0", "a0"]) == {"cmd": "get", "vol": "vol0", "archive": "a0"}
    assert request_args("archive-info", ["add", "vol0", "a0", "10.0.0.5:10200", "zstd:3:1", "2.5"]) == {
        "cmd": "add", "vol": "vol0", "archive": "a0", "host": "10.0.0.5", "port": 10200,
        "compression": "zstd:3:1", "delay": 2.5}


@pytest.mark.parametrize("words, message", [
    ([], "expected list"),
    (["add", "vol0", "a0"], "expected list"),
    (["add", "vol0", "a0", "nohost"], "not ADDR:PORT"),
    (["add", "vol0", "a0", "h:1", "lz4:0:1", "soon"], "delay must be a number"),
    (["list", "vol0", "a0"], "expected list"),
])
def test_archive_info_bad_words_are_named(words: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        request_args("archive-info", words)


def test_get_and_integer_arguments() -> None:
    assert request_args("get", ["restorable", "vol0", "all"]) == {"target": "restorable", "vol": "vol0", "args": "all"}
    assert request_args("restore", ["vol0", "12"]) == {"vol": "vol0", "gid": 12}
    with pytest.raises(UsageError, match="gid must be an integer"):
        request_args("restore", ["vol0", "twelve"])


def test_replicate_takes_walbcs_forms() -> None:
    assert request_args("replicate", ["vol0", "gid", "12", "10.0.0.6:10200"]) == {
        "vol": "vol0", "host": "10.0.0.6", "port": 10200, "gid": 12}
    assert request_args("replicate", ["vol0", "size", "0", "a1.example:10200", "1"]) == {
        "vol": "vol0", "host": "a1.example", "port": 10200, "size": 0, "do_resync": True}
    assert request_args("replicate", ["vol0", "size", "64", "[fd00::6]:10200", "0"])["size"] == 64 << 20


@pytest.mark.parametrize("words, message", [
    (["vol0", "12", "10.0.0.6:10200"], "expected VOL \\(gid GID \\| size MAX_MB\\) HOST:PORT"),
    (["vol0", "gid", "x", "10.0.0.6:10200"], "GID must be an integer"),
    (["vol0", "gid", "3", "10.0.0.6"], "must be HOST:PORT"),
    (["vol0", "gid", "3", "10.0.0.6:99999"], "must be HOST:PORT"),
    (["vol0", "gid", "3", "10.0.0.6:10200", "yes"], "doResync must be 0 or 1"),
])
def test_replicate_refuses_bad_words(words, message) -> None:
    with pytest.raises(UsageError, match=message):
        request_args("replicate", words)
