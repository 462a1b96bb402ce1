"""TLS mode over real sockets: certificates from walbops.pki, roles from the certificates."""

from __future__ import annotations

import pytest
from test_net_transport import Archive, archive_server, run

from walbops import pki
from walbops.errors import AuthenticationError, OperationError, ProtocolError
from walbops.net.tls import Credentials, TlsFiles
from walbops.net.transport import open_connection

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A CA with an archive, a storage, a proxy and a controller certificate, and a foreign CA."""
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(str(root / "ca"))
    for host, role in (("a0", "archive"), ("s0", "storage"), ("p0", "proxy"), ("ctl", "controller")):
        pki.issue(str(root / "ca"), host, role, str(root / "certs"), names=[HOST])
    pki.issue(str(root / "ca"), "old", "storage", str(root / "certs"), names=[HOST], days=0)  # expired at once
    pki.init_ca(str(root / "other"), name="someone else's CA")
    pki.issue(str(root / "other"), "stranger", "controller", str(root / "foreign"), names=[HOST])
    return root


def creds(root, host, ca="ca", certs="certs") -> Credentials:
    return Credentials(tls=TlsFiles(str(root / certs / f"{host}.crt"), str(root / certs / f"{host}.key"),
                                    str(root / ca / "ca.crt")))


def test_tls_connection_carries_requests_and_the_certified_role(fleet):
    async def scenario():
        async with archive_server(key=creds(fleet, "a0")) as (handler, port):
            async with await open_connection(HOST, port, creds(fleet, "s0"), "s0", "storage") as channel:
                assert channel.peer_role == "archive" and channel.certified_role == "archive"
                assert await channel.request("echo", {"n": 1}) == {"args": {"n": 1}, "peer": ["s0", "storage"]}
    run(scenario())


@pytest.mark.parametrize("client, certs, ca, match", [
    ("old", "certs", "ca", "certificate has expired"),
    ("stranger", "foreign", "other", "does not verify"),  # the server does not trust its CA
])
def test_a_client_certificate_that_does_not_verify_is_refused(fleet, client, certs, ca, match, caplog):
    async def scenario():
        async with archive_server(key=creds(fleet, "a0")) as (handler, port):
            with pytest.raises((AuthenticationError, ProtocolError, OSError)):
                await open_connection(HOST, port, creds(fleet, client, ca=ca, certs=certs), client, "storage")
            assert handler.requests == []
            # The server serves on.
            async with await open_connection(HOST, port, creds(fleet, "s0"), "s0", "storage") as channel:
                await channel.request("echo")
    run(scenario())
    assert "TLS" in caplog.text


def test_a_client_that_does_not_trust_the_servers_ca_gives_up(fleet):
    async def scenario():
        async with archive_server(key=creds(fleet, "a0")) as (handler, port):
            with pytest.raises(AuthenticationError, match="does not verify: .*self.signed|unable to get local"):
                await open_connection(HOST, port, creds(fleet, "stranger", ca="other", certs="foreign"), "x",
                                      "controller")
    run(scenario())


def test_the_role_a_client_says_must_be_the_role_of_its_certificate(fleet):
    async def scenario():
        async with archive_server(key=creds(fleet, "a0")) as (handler, port):
            with pytest.raises(AuthenticationError, match="certificate is for role proxy"):
                await open_connection(HOST, port, creds(fleet, "p0"), "p0", "controller")
            assert handler.requests == []
    run(scenario())


def test_a_key_mode_client_cannot_talk_to_a_tls_server(fleet):
    async def scenario():
        async with archive_server(key=creds(fleet, "a0")) as (handler, port):
            with pytest.raises((ProtocolError, OSError)):
                await open_connection(HOST, port, bytes(range(32)), "s0", "storage", handshake_timeout=3)
            assert handler.requests == []
    run(scenario())


def test_certificate_info_names_role_and_expiry(fleet):
    info = pki.certificate_info(str(fleet / "certs" / "p0.crt"))
    assert info.role == "proxy" and "CN=p0" in info.subject and HOST in info.names
    assert 364 < info.days_left() <= 365
    assert pki.certificate_info(str(fleet / "certs" / "old.crt")).days_left() <= 0


del Archive  # imported for archive_server's default handler


def test_an_encrypted_ca_key_issues_only_with_its_passphrase(tmp_path):
    ca = str(tmp_path / "ca")
    pki.init_ca(ca, passphrase=b"vault secret")
    assert b"ENCRYPTED" in (tmp_path / "ca" / pki.CA_KEY).read_bytes()
    with pytest.raises(OperationError, match=f"is encrypted: give its passphrase in {pki.PASSPHRASE_ENV}"):
        pki.issue(ca, "s0", "storage", str(tmp_path))
    with pytest.raises(OperationError, match="wrong passphrase"):
        pki.issue(ca, "s0", "storage", str(tmp_path), passphrase=b"guess")
    _, cert = pki.issue(ca, "s0", "storage", str(tmp_path), passphrase=b"vault secret")
    assert pki.certificate_info(cert).role == "storage"
