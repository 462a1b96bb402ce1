"""One printable line per log message, and the rate limit for what strangers cause."""

from __future__ import annotations

import logging
import sys

from walbops.logs import OneLineFormatter, RateLimit, printable


def test_printable_escapes_every_control_character_and_keeps_the_rest():
    assert printable("plain text, tabs\tand ünïcödé") == "plain text, tabs\tand ünïcödé"
    assert printable("a\nb\rc") == "a\\nb\\rc"
    assert printable("\x1b[2J\x07\x00\x7f\x9b") == "\\x1b[2J\\x07\\x00\\x7f\\x9b"
    assert all(printable(chr(code)) != chr(code) for code in [*range(0, 9), *range(10, 32), *range(127, 160)])


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("walbops.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_the_formatter_escapes_the_message_with_its_arguments_but_keeps_a_traceback():
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    assert formatter.format(record("peer said %s", "x\nWARNING forged")) == "WARNING peer said x\\nWARNING forged"
    try:
        raise ValueError("boom")
    except ValueError:
        text = formatter.format(record("failed:\n%s", "why", exc_info=sys.exc_info()))
    first, *rest = text.splitlines()
    assert first == "WARNING failed:\\nwhy"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limit_passes_a_burst_per_period_and_counts_the_rest():
    clock = Clock()
    limit = RateLimit(burst=3, period=60.0, monotonic=clock)
    assert [limit.allow() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 59.9
    assert limit.allow() is None
    clock.now += 0.1
    # The first line of the next period says how many were left out.
    assert [limit.allow() for _ in range(4)] == [3, 0, 0, None]


def test_a_log_file_in_a_directory_that_does_not_exist_yet_is_created(tmp_path):
    # An agent's log_file is relative to its base_dir, which the agent makes only once it starts.
    from walbops.logs import configure

    path = tmp_path / "base" / "dir" / "archive.log"
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure(str(path))
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
                handler.close()
    assert path.exists()
