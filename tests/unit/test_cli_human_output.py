"""What the CLI prints for a person (walbops/cli/_common.py): tables for lists of records."""

from __future__ import annotations

from walbops.cli._common import format_table, human_result


def test_a_list_of_records_is_a_table_with_every_key_as_a_column():
    text = human_result([{"name": "vol0", "gid": 12, "ts_delta": 3},
                         {"name": "volume-long", "gid": 7, "extra": {"a": [1]}}])
    assert text.splitlines() == [
        "NAME         GID  TS_DELTA  EXTRA",
        "vol0         12   3         -",
        'volume-long  7    -         {"a":[1]}',
    ]


def test_a_record_is_key_value_lines_and_a_plain_list_one_item_a_line():
    assert human_result({"state": "Archived", "diffs": [1, 2], "base": None}) == \
        'state: Archived\ndiffs: [1,2]\nbase: -'
    assert human_result(["vol0", "vol1"]) == "vol0\nvol1"
    assert human_result([]) == ""
    assert human_result(3) == "3"


def test_control_characters_from_an_agent_are_escaped():
    assert "\x1b" not in human_result([{"name": "vol\x1b]0;owned\x07"}])
    assert "\x1b" not in human_result({"error": "\x1b[31mred"})


def test_the_last_column_is_left_ragged():
    assert format_table([("A", "LONG HEADER"), ("xyz", "t")]) == "A    LONG HEADER\nxyz  t"
    assert format_table([("ONLY",), ("x",)]) == "ONLY\nx"
    assert format_table([]) == ""
