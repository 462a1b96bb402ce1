"""A host's credential files in one directory: TLS certificates and keys and the CA's
certificates, or role key files (the ``walb_credentials`` module).

The controller hands over every file of the directory at once, public ones (mode 0644) and
secret ones (0600), as one JSON document on stdin: never on a command line, where ``ps`` shows
it. One call per host replaces a copy per file (two module runs each on every host and run).
Each file is replaced atomically, and only when its bytes or its mode differ, so a second run
changes nothing. A key handed over with its certificate (``NAME.key`` beside ``NAME.crt``) must
be that certificate's key: a mix-up is refused before anything is written. The diff names the
files and fingerprints the public ones; secret contents appear nowhere in the outcome.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from ..durable import atomic_write
from ..errors import OperationError, UsageError
from . import Outcome

PUBLIC_MODE = 0o644
SECRET_MODE = 0o600
MAX_FILES = 64  # a host holds a certificate and a key per role (four roles) and the CA's: far fewer
MAX_FILE_BYTES = 1 << 20  # [bytes] a PEM chain or a key file is a few KiB; more is a mistake
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a plain file name, never a path


@dataclass(frozen=True)
class CredentialFile:
    name: str
    content: bytes
    mode: int
    secret: bool


def parse_bundle(document: Any) -> list[CredentialFile]:
    """``{"public": {NAME: TEXT}, "secret": {NAME: TEXT}}`` as the files to hold.

    Raises:
        UsageError: not that shape, a name that is not a plain file name, a name in both,
            too many files or one too large.
    """
    if not isinstance(document, dict) or set(document) - {"public", "secret"}:
        raise UsageError('the credentials must be a JSON object {"public": {NAME: TEXT}, "secret": {NAME: TEXT}}')
    files: dict[str, CredentialFile] = {}
    for kind, mode in (("public", PUBLIC_MODE), ("secret", SECRET_MODE)):
        entries = document.get(kind) or {}
        if not isinstance(entries, dict):
            raise UsageError(f"credentials {kind}: must map file names to their text")
        for name, text in entries.items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise UsageError(f"credentials {kind}: {name!r} is not a plain file name")
            if not isinstance(text, str):
                raise UsageError(f"credentials {kind} {name}: the content must be text (PEM or a key file)")
            if name in files:
                raise UsageError(f"credentials: {name} is both public and secret")
            content = text.encode()
            if len(content) > MAX_FILE_BYTES:
                raise UsageError(f"credentials {kind} {name}: {len(content)} bytes, more than {MAX_FILE_BYTES}")
            files[name] = CredentialFile(name, content if content.endswith(b"\n") else content + b"\n", mode,
                                         kind == "secret")
    if len(files) > MAX_FILES:
        raise UsageError(f"credentials: {len(files)} files, more than {MAX_FILES}")
    return sorted(files.values(), key=lambda file: file.name)


def _check_pairs(directory: str, files: list[CredentialFile]) -> None:
    from .. import pki

    by_name = {file.name: file for file in files}
    for file in files:
        stem = file.name.removesuffix(".key")
        if file.name.endswith(".key") and f"{stem}.crt" in by_name:
            pki.check_key_pair(by_name[f"{stem}.crt"].content, file.content, os.path.join(directory, stem))


def _existing(path: str) -> tuple[bytes, int] | None:
    """A file's bytes (up to one more than the bound) and mode, or None when it is absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise OperationError(f"{path} is not a regular file; remove it first")
    with open(path, "rb") as stream:
        return stream.read(MAX_FILE_BYTES + 1), stat.S_IMODE(info.st_mode)


def _describe(content: bytes, mode: int, secret: bool) -> str:
    """What the diff shows of a file: its mode, and a public file's fingerprint."""
    return f"{mode:04o} " + ("secret" if secret else "sha256:" + hashlib.sha256(content).hexdigest()[:16])


def ensure_credentials(directory: str, files: list[CredentialFile], dir_mode: int = 0o750,
                       check: bool = False) -> Outcome:
    """Make ``directory`` (mode ``dir_mode``) hold ``files`` with their modes; other files stay."""
    _check_pairs(directory, files)
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise OperationError(f"{directory} is not a directory")
    before: dict[str, Any] = {"dir_mode": None if info is None else f"{stat.S_IMODE(info.st_mode):04o}"}
    after: dict[str, Any] = {"dir_mode": f"{dir_mode:04o}"}
    written = []
    for file in files:
        existing = None if info is None else _existing(os.path.join(directory, file.name))
        before[file.name] = None if existing is None else _describe(*existing, file.secret)
        after[file.name] = _describe(file.content, file.mode, file.secret)
        if existing != (file.content, file.mode):
            written.append(file.name)
    changed = bool(written) or before["dir_mode"] != after["dir_mode"]
    if changed and not check:
        if info is None:
            os.makedirs(directory, mode=dir_mode, exist_ok=True)
        os.chmod(directory, dir_mode)  # makedirs' mode is filtered by the umask
        for file in files:
            if file.name in written:
                atomic_write(os.path.join(directory, file.name), file.content, mode=file.mode)
    return Outcome(changed, before, after, {"dir": directory, "written": written,
                                            "files": [file.name for file in files]})
