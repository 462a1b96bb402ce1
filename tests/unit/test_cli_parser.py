"""The walbops command line: every command's --help renders, and a command loads only its own module."""

from __future__ import annotations

import argparse
import subprocess
import sys

from walbops.cli.main import COMMAND_MODULES, build_parser


def every_parser(parser: argparse.ArgumentParser, path: str = "walbops"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from every_parser(child, f"{path} {name}")


def test_every_command_renders_its_help():
    parsers = dict(every_parser(build_parser([])))
    assert set(COMMAND_MODULES) <= {path.split()[1] for path in parsers if " " in path}
    for path, parser in parsers.items():
        assert parser.format_help(), path  # a stray % in a help text raises here


def test_a_command_imports_only_its_own_module():
    """Each short command an Ansible module runs pays the import of what it uses, not of every command."""
    probe = ("import sys; from walbops.cli.main import build_parser; build_parser(['wdev', 'list']); "
             "print(sorted(m for m in sys.modules if m.startswith('walbops.cli.') and m.endswith('_cmd')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['walbops.cli.wdev_cmd']"
    assert "wdev" in build_parser(["wdev", "list"]).format_help()
    # A mistake, or no command, lists them all.
    for argv in (["bogus"], [], ["--help"]):
        listing = build_parser(argv).format_help()
        assert all(f"    {name}" in listing for name in COMMAND_MODULES), listing
