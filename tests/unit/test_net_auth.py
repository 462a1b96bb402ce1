"""The cluster key file, the proofs, and both handshake state machines (no sockets)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import subprocess
import sys

import pytest

from walbops.errors import AuthenticationError, BadField, InvalidMessage, OperationError, ProtocolError, VersionMismatch
from walbops.net import auth, messages
from walbops.net.auth import ClientHandshake, ServerHandshake

KEY = bytes(range(32))
CLIENT_NONCE = b"\xc1" * 32
SERVER_NONCE = b"\x5e" * 32


# Key files.

def test_write_then_load(tmp_path):
    path = tmp_path / "cluster.key"
    key = auth.write_key(path)
    assert len(key) == auth.KEY_SIZE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == key.hex().encode() + b"\n"
    assert auth.load_key(path) == key
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.key"]  # no temporary left behind


def test_write_refuses_to_overwrite_unless_forced(tmp_path):
    path = tmp_path / "cluster.key"
    first = auth.write_key(path)
    with pytest.raises(OperationError, match="exists"):
        auth.write_key(path)
    assert auth.load_key(path) == first
    second = auth.write_key(path, force=True)
    assert second != first and auth.load_key(path) == second
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660])
def test_load_refuses_keys_others_can_access(tmp_path, mode):
    path = tmp_path / "cluster.key"
    auth.write_key(path, KEY)
    os.chmod(path, mode)
    with pytest.raises(OperationError, match=f"mode {mode:04o}"):
        auth.load_key(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_accepts_owner_only_modes(tmp_path, mode):
    path = tmp_path / "cluster.key"
    auth.write_key(path, KEY)
    os.chmod(path, mode)
    assert auth.load_key(path) == KEY


@pytest.mark.parametrize("content", [
    b"", b"\n", KEY.hex().encode()[:-1] + b"\n", KEY.hex().encode() + b"00\n", KEY.hex().encode() + b"\n\n",
    b"zz" + KEY.hex().encode()[2:] + b"\n", b" " + KEY.hex().encode(), KEY,
])
def test_load_refuses_malformed_content(tmp_path, content):
    path = tmp_path / "cluster.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(BadField) as info:
        auth.load_key(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize("content", [KEY.hex().encode(), KEY.hex().upper().encode() + b"\n"])
def test_load_tolerates_no_newline_and_upper_case(tmp_path, content):
    path = tmp_path / "cluster.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    assert auth.load_key(path) == KEY


def test_load_refuses_a_directory(tmp_path):
    os.chmod(tmp_path, 0o700)
    with pytest.raises(OperationError, match="regular file"):
        auth.load_key(tmp_path)


def test_keys_are_32_bytes():
    with pytest.raises(BadField):
        auth.format_key(b"short")
    with pytest.raises(BadField):
        ServerHandshake(b"short", "a0", "archive")


# Proofs.

def test_proofs_golden():
    # Independent of auth.py: HMAC-SHA256 over label || nonces || id, as docs/protocol.md §4.2 says.
    expected_server = hmac.new(KEY, b"walbops-server\0" + CLIENT_NONCE + SERVER_NONCE + b"a0", hashlib.sha256)
    expected_client = hmac.new(KEY, b"walbops-client\0" + SERVER_NONCE + CLIENT_NONCE + b"s0", hashlib.sha256)
    assert auth.server_proof(KEY, CLIENT_NONCE, SERVER_NONCE, "a0") == expected_server.digest()
    assert auth.client_proof(KEY, SERVER_NONCE, CLIENT_NONCE, "s0") == expected_client.digest()
    assert expected_server.hexdigest() == "3b98c27692a6fe5d11339f6061a8eb5ee0ff402c51f57d70647654e3eaf0790f"
    assert expected_client.hexdigest() == "6157060daff5318719c68cc6d21d0476f5dd8b09113188e03db40a543551043e"


def test_labels_separate_the_two_proofs():
    # Same key, nonces in the same positions, same id: still different (no reflection).
    assert auth.server_proof(KEY, CLIENT_NONCE, SERVER_NONCE, "x") != auth.client_proof(
        KEY, CLIENT_NONCE, SERVER_NONCE, "x")


def test_nonces_are_fresh():
    assert len(auth.make_nonce()) == auth.NONCE_SIZE
    assert auth.make_nonce() != auth.make_nonce()


# Role key files (docs/protocol.md 4.7).

def test_role_key_files_prove_only_their_roles():
    archive = auth.Keys.issue(KEY, ("archive",), "a0")
    proxy = auth.Keys.issue(KEY, ("proxy",), "p0")
    controller = auth.Keys.issue(KEY, ("controller",))
    assert [role for role, _ in archive.accepts] == ["controller", "storage", "proxy", "archive"]
    assert [role for role, _ in proxy.accepts] == ["controller", "storage", "proxy"]
    # Role keys and the cluster key interoperate: both derive the same link key.
    run(ClientHandshake(controller, "ctl", "controller"), ServerHandshake(archive, "a0", "archive"))
    run(ClientHandshake(proxy, "p0", "proxy"), ServerHandshake(archive, "a0", "archive"))
    run(ClientHandshake(KEY, "ctl", "controller"), ServerHandshake(proxy, "p0", "proxy"))
    run(ClientHandshake(archive, "a0", "archive"), ServerHandshake(KEY, "a1", "archive"))
    # A proxy's file holds no controller key: it cannot even say hello as the controller ...
    with pytest.raises(AuthenticationError, match="holds no controller key .it has proxy"):
        ClientHandshake(proxy, "p0", "controller")
    # ... and a forged hello that claims the role gets no challenge from an agent without that key.
    server = ServerHandshake(proxy, "p0", "proxy")
    with pytest.raises(AuthenticationError,
                       match="takes no archive clients .its key file accepts controller, storage, proxy"):
        server.receive(messages.hello("a0", "archive", CLIENT_NONCE.hex()))
    # Link keys are bound to their agent: the archive a0's file is worth nothing at the archive a1.
    with pytest.raises(AuthenticationError):
        run(ClientHandshake(KEY, "s0", "storage"), ServerHandshake(archive, "a1", "archive"))
    # A rogue agent with only a proxy's file cannot pose as an archive to the controller: the
    # link key it makes up is not the one the controller derives.
    made_up = auth.link_key(dict(proxy.roles)["proxy"], "a0")
    rogue = ServerHandshake(auth.Keys(proxy.roles, "a0", (("controller", made_up),)), "a0", "archive")
    client = ClientHandshake(KEY, "ctl", "controller")
    with pytest.raises(AuthenticationError, match="cannot prove the key of controller clients"):
        client.receive(rogue.receive(client.hello()))


def test_role_key_file_round_trip_and_refusals(tmp_path):
    keys = auth.Keys.issue(KEY, ("storage", "controller"), "s0")
    path = tmp_path / "s0.key"
    auth.write_keys(path, keys)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert auth.load_keys(path) == keys
    assert path.read_bytes() == auth.format_keys(auth.Keys.issue(KEY, ("storage", "controller"), "s0"))
    auth.write_key(tmp_path / "cluster.key", KEY)
    assert auth.load_keys(tmp_path / "cluster.key") == KEY
    for content, match in [
        (b"walbops-keys 1\nrole root " + b"00" * 32 + b"\n", "not a role"),
        (b"walbops-keys 1\nrole proxy " + b"00" * 32 + b"\nrole proxy " + b"11" * 32 + b"\n", "repeated"),
        (b"walbops-keys 1\naccept proxy " + b"00" * 32 + b"\n", "names its agent"),
        (b"walbops-keys 1\nrole proxy 00\n", "64 hex digits"),
        (b"walbops-keys 1\nkey proxy " + b"00" * 32 + b"\n", "expected 'id ID'"),
        (b"walbops-keys 1\n" + b"#" * 5000, "at most 4096 bytes"),
        (b"walbops-keys 1\n\xff\n", "ASCII"),
    ]:
        path.write_bytes(content)
        with pytest.raises(BadField, match=match):
            auth.load_keys(path)
    with pytest.raises(BadField, match="names its kind"):
        auth.Keys.issue(KEY, ("controller",), "c0")
    # One file for a host's storage and proxy agents accepts the callers of both.
    both = auth.Keys.issue(KEY, ("storage", "proxy", "controller"), "h0")
    assert [role for role, _ in both.accepts] == ["controller", "storage", "proxy"]


def test_callers_are_the_roles_of_the_agents_command_tables(tmp_path):
    from walbops.agents import config as agent_config
    from walbops.agents.archive import ArchiveAgent
    from walbops.agents.proxy import ProxyAgent
    from walbops.agents.storage import StorageAgent

    auth.write_key(tmp_path / "key")
    for agent_class in (StorageAgent, ProxyAgent, ArchiveAgent):
        host_type = agent_class.host_type
        overrides = {"base_dir": str(tmp_path / host_type), "cluster_key_file": str(tmp_path / "key"), "port": 1}
        if host_type == "storage":
            overrides.update(archive="127.0.0.1:1", proxies=["127.0.0.1:2"])
        agent = agent_class(agent_config.load(host_type, overrides=overrides))  # type: ignore[abstract]
        roles = set().union(*(command.roles for name, command in agent.commands.items() if name != "version"))
        assert roles == set(messages.CALLERS[host_type]), host_type


# Handshake state machines.

def run(client: ClientHandshake, server: ServerHandshake) -> None:
    challenge = server.receive(client.hello())
    welcome = server.receive(client.receive(challenge))
    assert client.receive(welcome) is None


def test_handshake_succeeds_with_the_same_key():
    client = ClientHandshake(KEY, "s0", "storage", CLIENT_NONCE)
    server = ServerHandshake(KEY, "a0", "archive", SERVER_NONCE)
    run(client, server)
    assert client.done and server.done
    assert (client.server_id, client.host_type) == ("a0", "archive")
    assert (server.client_id, server.role) == ("s0", "storage")


def test_handshake_messages_golden():
    client = ClientHandshake(KEY, "s0", "storage", CLIENT_NONCE)
    server = ServerHandshake(KEY, "a0", "archive", SERVER_NONCE)
    hello = client.hello()
    assert hello == {"type": "hello", "version": 2, "id": "s0", "role": "storage", "nonce": "c1" * 32}
    challenge = server.receive(hello)
    # docs/protocol.md appendix A: the link key of role storage and server a0, and both proofs.
    role_key = hmac.digest(KEY, b"walbops-role\0storage", hashlib.sha256)
    assert role_key.hex() == "eee6cbac0ba4fc42fc78d085830158daa7a6340ba38d88132f8097005fb62f49"
    link = hmac.digest(role_key, b"walbops-link\0a0", hashlib.sha256)
    assert link.hex() == "1903b6b64ec6c7e6cb29a532234ad6c54c377086537d0421b43fab1ff487e579"
    assert (auth.role_key(KEY, "storage"), auth.link_key(role_key, "a0")) == (role_key, link)
    assert challenge == {"type": "challenge", "version": 2, "id": "a0", "host_type": "archive", "nonce": "5e" * 32,
                         "proof": "6aac051357b962b2be5b38dbfa0a9adef0055745015116078b26130f2c94423a"}
    assert client.receive(challenge) == {
        "type": "auth", "proof": "361c7665f8c445d4a818c6c155363091aa8ebee755c9bf8371a49f1c78baf428"}
    assert auth.client_proof(link, SERVER_NONCE, CLIENT_NONCE, "s0").hex() == (
        "361c7665f8c445d4a818c6c155363091aa8ebee755c9bf8371a49f1c78baf428")


def test_server_refuses_a_client_with_another_key():
    client = ClientHandshake(os.urandom(32), "s0", "storage")
    server = ServerHandshake(KEY, "a0", "archive")
    challenge = server.receive(client.hello())
    # The client notices first (the server's proof does not verify under its key) ...
    with pytest.raises(AuthenticationError):
        client.receive(challenge)
    assert client.refusal(AuthenticationError("x")) == {"type": "error", "reason": "authentication failed",
                                                        "detail": "x"}
    # ... and a client that sends a proof anyway is refused by the server.
    forged = messages.auth(auth.client_proof(os.urandom(32), bytes.fromhex(challenge["nonce"]), b"\0" * 32, "s0").hex())
    with pytest.raises(AuthenticationError, match="cannot prove"):
        server.receive(forged)
    assert not server.done


def test_client_detects_a_server_with_another_key():
    client = ClientHandshake(KEY, "s0", "storage")
    server = ServerHandshake(os.urandom(32), "a0", "archive")
    with pytest.raises(AuthenticationError, match="server a0 .archive. cannot prove"):
        client.receive(server.receive(client.hello()))
    assert not client.done


def test_reflection_does_not_authenticate():
    # An attacker without the key claims the server's own id and echoes the server's proof.
    server = ServerHandshake(KEY, "a0", "archive")
    challenge = server.receive(messages.hello("a0", "archive", CLIENT_NONCE.hex()))
    with pytest.raises(AuthenticationError):
        server.receive(messages.auth(challenge["proof"]))


def test_server_reads_nothing_but_the_handshake():
    server = ServerHandshake(KEY, "a0", "archive")
    with pytest.raises(InvalidMessage, match="expected hello .* got 'request'"):
        server.receive(messages.request(1, "snapshot", {"vol": "vol0"}))
    server = ServerHandshake(KEY, "a0", "archive")
    server.receive(messages.hello("s0", "storage", CLIENT_NONCE.hex()))
    with pytest.raises(InvalidMessage, match="expected auth"):
        server.receive(messages.request(1, "snapshot", {}))


def test_version_mismatch_both_ways():
    server = ServerHandshake(KEY, "a0", "archive")
    # A later hello may have other members: the version is checked before the schema.
    hello = {"type": "hello", "version": 3, "id": "s0", "role": "storage", "nonce": "c1" * 32, "cipher": "x"}
    with pytest.raises(VersionMismatch) as info:
        server.receive(hello)
    assert server.refusal(info.value) == {"type": "error", "reason": "version mismatch",
                                          "detail": "client speaks protocol version 3; "
                                                    "this server speaks protocol version 2"}
    # A version 1 client (the proofs keyed with the cluster key itself) is refused as clearly.
    with pytest.raises(VersionMismatch, match="client speaks protocol version 1"):
        ServerHandshake(KEY, "a0", "archive").receive({**hello, "version": 1})
    client = ClientHandshake(KEY, "s0", "storage")
    client.hello()
    with pytest.raises(VersionMismatch):
        client.receive({**messages.challenge("a0", "archive", "5e" * 32, "00" * 32), "version": 3})


def test_peer_refusals_map_to_errors_and_are_not_answered():
    client = ClientHandshake(KEY, "s0", "storage")
    client.hello()
    with pytest.raises(AuthenticationError, match="authentication failed"):
        client.receive(messages.error("authentication failed"))
    assert client.refusal(AuthenticationError("x")) is None
    client = ClientHandshake(KEY, "s0", "storage")
    with pytest.raises(VersionMismatch, match="speaks protocol version 1"):
        client.receive(messages.error("version mismatch", "this server speaks protocol version 1"))
    client = ClientHandshake(KEY, "s0", "storage")
    with pytest.raises(ProtocolError, match="protocol error"):
        client.receive(messages.error("protocol error"))


def test_messages_after_the_handshake_are_not_handshake_messages():
    client = ClientHandshake(KEY, "s0", "storage")
    server = ServerHandshake(KEY, "a0", "archive")
    run(client, server)
    with pytest.raises(InvalidMessage):
        server.receive(messages.auth("00" * 32))
    with pytest.raises(InvalidMessage):
        client.receive(messages.welcome())


def test_bad_local_ids_fail_before_sending():
    with pytest.raises(InvalidMessage, match="hello.id"):
        ClientHandshake(KEY, "bad id", "storage").hello()
    with pytest.raises(InvalidMessage, match="challenge.host_type"):
        ServerHandshake(KEY, "a0", "controller").receive(messages.hello("s0", "storage", "c1" * 32))


def test_load_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    # Run in a child so that a regression hangs one subprocess with a timeout, not the suite.
    path = tmp_path / "cluster.key"
    os.mkfifo(path, 0o600)
    probe = ("import sys\nfrom walbops.net.auth import load_key\nfrom walbops.errors import OperationError\n"
             "try:\n    load_key(sys.argv[1])\nexcept OperationError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "regular file" in result.stdout


def test_load_refuses_a_key_owned_by_another_user(tmp_path):
    path = tmp_path / "cluster.key"
    auth.write_key(path, KEY)
    stranger = os.geteuid() + 4242
    os.chown(path, stranger, -1)
    with pytest.raises(OperationError, match=f"owned by uid {stranger}"):
        auth.load_key(path)
