"""walb_credentials: a host's certificates and keys in one step, written only when they differ,
a key that is not its certificate's refused before anything is written, secrets in no result."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from modules import ModuleFailed, run_module

from walbops import pki
from walbops.net.auth import format_key, generate_key


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, and host h1's storage and proxy certificates and keys, as text."""
    ca = tmp_path_factory.mktemp("ca")
    pki.init_ca(str(ca))
    texts = {"ca.crt": (ca / "ca.crt").read_text()}
    for role in ("storage", "proxy"):
        pki.issue(str(ca), "h1", role, str(ca / role))
        texts[f"{role}.crt"] = (ca / role / "h1.crt").read_text()
        texts[f"{role}.key"] = (ca / role / "h1.key").read_text()
    return texts


def tls_args(directory: Path, texts: dict[str, str], *, key_of: str = "storage") -> dict:
    return {"dir": str(directory),
            "public": {"ca.crt": texts["ca.crt"].rstrip("\n"), "storage.crt": texts["storage.crt"].rstrip("\n")},
            "secret": {"storage.key": texts[f"{key_of}.key"].rstrip("\n")}}  # as lookup('file') strips


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_once_with_modes_and_keeps_secrets_out(tmp_path: Path, issued: dict[str, str]) -> None:
    tls = tmp_path / "tls"
    predicted = run_module("walb_credentials", tls_args(tls, issued), check=True)
    assert predicted["changed"] and predicted["written"] == ["ca.crt", "storage.crt", "storage.key"]
    assert not tls.exists()
    first = run_module("walb_credentials", tls_args(tls, issued))
    assert first["changed"] and mode_of(tls) == 0o750
    for name, mode in (("ca.crt", 0o644), ("storage.crt", 0o644), ("storage.key", 0o600)):
        assert (tls / name).read_text() == issued[name] and mode_of(tls / name) == mode
    assert first["diff"]["after"]["storage.key"] == "0600 secret"
    assert issued["storage.key"].splitlines()[1] not in str(first)
    again = run_module("walb_credentials", tls_args(tls, issued))
    assert not again["changed"] and again["written"] == []
    assert not run_module("walb_credentials", tls_args(tls, issued), check=True)["changed"]


def test_a_changed_file_or_mode_is_rewritten_and_others_stay(tmp_path: Path, issued: dict[str, str]) -> None:
    tls = tmp_path / "tls"
    run_module("walb_credentials", tls_args(tls, issued))
    (tls / "storage.key").chmod(0o644)
    (tls / "unrelated.txt").write_text("kept\n")
    mended = run_module("walb_credentials", tls_args(tls, issued))
    assert mended["changed"] and mended["written"] == ["storage.key"] and mode_of(tls / "storage.key") == 0o600
    (tls / "ca.crt").write_text("stale\n")
    assert run_module("walb_credentials", tls_args(tls, issued))["written"] == ["ca.crt"]
    assert (tls / "ca.crt").read_text() == issued["ca.crt"] and (tls / "unrelated.txt").read_text() == "kept\n"


def test_a_key_that_is_not_the_certificates_is_refused_before_writing(tmp_path: Path,
                                                                       issued: dict[str, str]) -> None:
    tls = tmp_path / "tls"
    refusal = r"storage.key: the key is not the one of .*storage.crt \(OU=storage,CN=h1\)"
    with pytest.raises(ModuleFailed, match=refusal):
        run_module("walb_credentials", tls_args(tls, issued, key_of="proxy"))
    assert not tls.exists()


def test_role_key_files_alone_in_a_private_directory(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    args = {"dir": str(keys), "dir_mode": "0700", "secret": {"controller.key": format_key(generate_key()).decode()}}
    assert run_module("walb_credentials", args)["changed"]
    assert mode_of(keys) == 0o700 and mode_of(keys / "controller.key") == 0o600
    assert not run_module("walb_credentials", args)["changed"]


@pytest.mark.parametrize(("args", "message"), [
    ({"public": {"../ca.crt": "x"}}, "'../ca.crt' is not a plain file name"),
    ({"public": {"a.crt": "x"}, "secret": {"a.crt": "y"}}, "a.crt is both public and secret"),
    ({"public": {"big.crt": "x" * ((1 << 20) + 1)}}, "more than 1048576"),
    ({"dir_mode": "0999"}, "'0999' is not an octal mode"),
])
def test_bad_input_is_named(tmp_path: Path, args: dict, message: str) -> None:
    with pytest.raises(ModuleFailed, match=message):
        run_module("walb_credentials", {"dir": str(tmp_path / "tls"), **args})
    assert not (tmp_path / "tls").exists()
