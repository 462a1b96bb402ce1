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


def test_keygen_derives_role_key_files(tmp_path, capsys):
    from walbops.net.auth import Keys, load_keys

    cluster = tmp_path / "cluster.key"
    assert main(["keygen", str(cluster)]) == 0
    key = load_key(cluster)
    host = tmp_path / "backup1.key"
    argv = ["keygen", str(host), "--from", str(cluster), "--role", "storage", "--role", "proxy",
            "--role", "controller", "--id", "backup1", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {
        "path": str(host), "mode": "0600", "id": "backup1", "roles": ["storage", "proxy", "controller"],
        "accepts": ["controller", "storage", "proxy"]}
    assert load_keys(host) == Keys.issue(key, ("storage", "proxy", "controller"), "backup1")
    assert stat.S_IMODE(os.stat(host).st_mode) == 0o600
    # The same inputs give the same bytes: a playbook that rewrites the file sees no change.
    content = host.read_bytes()
    assert main([*argv, "--force"]) == 0 and host.read_bytes() == content
    assert key.hex() not in content.decode() + capsys.readouterr().out
    # Refusals: a role without --from, --id without an agent kind, --from without a role.
    assert main(["keygen", str(tmp_path / "x"), "--role", "proxy"]) == 2
    assert "give the cluster key with --from" in capsys.readouterr().err
    assert main(["keygen", str(tmp_path / "x"), "--from", str(cluster), "--role", "controller", "--id", "c"]) == 2
    assert "--id names an agent" in capsys.readouterr().err
    assert main(["keygen", str(tmp_path / "x"), "--from", str(cluster)]) == 2
    assert "at least one --role" in capsys.readouterr().err
    # A role key file is not a cluster key to derive from.
    assert main(["keygen", str(tmp_path / "x"), "--from", str(host), "--role", "proxy"]) != 0
    assert "hex digits" in capsys.readouterr().err
