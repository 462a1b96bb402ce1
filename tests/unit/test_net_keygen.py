"""``walbops keygen``: exit codes, no overwrite without --force, JSON, the key never printed."""

from __future__ import annotations

import json
import os
import stat

from walbops.cli.main import main
from walbops.net.auth import load_key


def test_keygen_writes_a_loadable_key(tmp_path, capsys):
    path = tmp_path / "cluster.key"
    assert main(["keygen", str(path)]) == 0
    key = load_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    out = capsys.readouterr().out
    assert out == f"{path}\n"
    assert key.hex() not in out  # the secret stays in the file


def test_keygen_refuses_to_overwrite_without_force(tmp_path, capsys):
    path = tmp_path / "cluster.key"
    assert main(["keygen", str(path)]) == 0
    first = load_key(path)
    capsys.readouterr()
    assert main(["keygen", str(path)]) == 5
    err = capsys.readouterr().err
    assert err.startswith("walbops: ") and "exists" in err and len(err.splitlines()) == 1
    assert load_key(path) == first
    assert main(["keygen", str(path), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"mode": "0600", "path": str(path)}
    assert load_key(path) != first


def test_keygen_into_a_missing_directory(tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "nope" / "cluster.key")]) == 1
    assert "No such file or directory" in capsys.readouterr().err
