"""The one size parser (walbops.units)."""

from __future__ import annotations

import pytest

from walbops.errors import UsageError
from walbops.units import parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("4096", 4096), ("64K", 64 << 10), ("64k", 64 << 10), ("16M", 16 << 20), ("1G", 1 << 30), ("1GiB", 1 << 30),
    ("2t", 2 << 40), (" 8m ", 8 << 20), (512, 512), ("0", 0),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "K", "1.5G", "-1", "12X", "ten", -4])
def test_bad_sizes_name_the_text(text):
    with pytest.raises(UsageError, match="size"):
        parse_size(text)
