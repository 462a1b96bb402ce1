"""The documentation names every configuration key and CLI command group it promises."""

from __future__ import annotations

from pathlib import Path

from walbops.agents.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent.parent


def test_agents_doc_lists_every_option():
    text = (ROOT / "docs" / "agents.md").read_text()
    missing = [option.key for option in OPTIONS if f"`{option.key}`" not in text]
    assert not missing, f"docs/agents.md does not describe {missing}"
