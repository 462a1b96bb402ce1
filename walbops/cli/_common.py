"""Shared pieces of the command line: sizes, output, atomic files, opening diffs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import units
from ..blockdev import same_node
from ..converge import Outcome
from ..durable import atomic_file
from ..errors import FormatError, UsageError
from ..logs import printable

if TYPE_CHECKING:  # the format modules (numpy) load only for the commands that read formats
    from ..formats.compression import CompressOpt
    from ..formats.wdiff import DiffType


def parse_size(text: str) -> int:
    """:func:`walbops.units.parse_size` for argparse: a bad size is an argument error."""
    try:
        return units.parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_lb_size(text: str) -> int:
    """A byte size that must be a positive multiple of 512; returned in LB."""
    from ..formats.ldev import LOGICAL_BLOCK_SIZE

    value = parse_size(text)
    if value == 0 or value % LOGICAL_BLOCK_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive multiple of 512 bytes")
    return value // LOGICAL_BLOCK_SIZE


def parse_compression(text: str) -> CompressOpt:
    from ..formats.compression import CompressOpt

    try:
        return CompressOpt.parse(text)
    except FormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def emit(result: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Print a command's result, as JSON or as ``key: value`` lines."""
    if as_json:
        json.dump(result, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    elif human is not None:
        print(human(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first one the header) as aligned columns, two spaces apart; the last column is
    left ragged, so a long free text does not widen the others."""
    if not rows:
        return ""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
                      + ("  " if widths else "") + row[-1]).rstrip() for row in rows)


def human_result(result: Any) -> str:
    """An agent's answer for a person: a table for a list of records (``get ts-delta``, ``get
    restorable``, ...), ``key: value`` lines for one record, one line per item of a plain list."""
    if isinstance(result, list) and result and all(isinstance(item, dict) for item in result):
        keys = list(dict.fromkeys(key for item in result for key in item))
        return format_table([[key.upper() for key in keys],
                             *([_cell(item.get(key)) for key in keys] for item in result)])
    if isinstance(result, list):
        return "\n".join(_cell(item) for item in result)
    if isinstance(result, dict):
        return "\n".join(f"{key}: {_cell(value)}" for key, value in result.items())
    return _cell(result)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return printable(json.dumps(value, sort_keys=True, separators=(",", ":")))
    return printable(str(value))


@contextlib.contextmanager
def atomic_output(path: str, inputs: Sequence[str] = ()) -> Iterator[BinaryIO]:
    """Write ``path`` whole or not at all (:func:`walbops.durable.atomic_file`); '-' is stdout.

    Raises:
        UsageError: ``path`` is the same file as one of ``inputs`` (by device and inode, so a
            link or another spelling of the name is caught too): writing it would destroy it.
    """
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    refuse_an_input_as_output(path, inputs)
    with atomic_file(path) as stream:
        yield stream


def refuse_an_input_as_output(output: str, inputs: Sequence[str]) -> None:
    """Raise UsageError when ``output`` exists and is one of ``inputs``; '-' is never a file."""
    try:
        written = os.stat(output)
    except FileNotFoundError:
        return
    for path in inputs:
        if path == "-":
            continue
        with contextlib.suppress(FileNotFoundError):
            read = os.stat(path)
            if same_node(read, written):
                same = "" if path == output else f" (it is {path})"
                raise UsageError(f"the output {output} is one of the inputs{same}; writing it would destroy it")


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """Open an input file for reading; '-' is stdin."""
    if path == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as stream:
        yield stream


def diff_type(path: str) -> DiffType:
    """Read a wdiff's header and return its type."""
    from ..diff.files import read_header

    return read_header(path).type


def diff_uuid(path: str) -> bytes:
    from ..diff.files import read_header

    return read_header(path).uuid


def require(condition: bool, message: str) -> None:
    """Raise a UsageError unless ``condition`` holds."""
    if not condition:
        raise UsageError(message)


def add_ensure_flags(parser: argparse.ArgumentParser) -> None:
    """``--check`` and ``--json``, which every ``walbops ensure`` command takes."""
    parser.add_argument("--check", action="store_true", help="only tell what would change")
    add_json_flag(parser)


def report(outcome: Outcome, as_json: bool) -> int:
    """Print an ensure command's outcome: its JSON, or changed/unchanged with its values."""
    result = outcome.as_json()
    if as_json:
        emit(result, True)
        return 0
    diff = result.pop("diff", None)
    print("changed" if outcome.changed else "unchanged")
    for key, value in result.items():
        if key != "changed":
            print(f"{key}: {value}")
    if diff and outcome.changed:
        print(f"before: {diff['before']}\nafter: {diff['after']}")
    return 0
