"""A small PKI for a fleet: one cluster CA, and per host a certificate that names its role.

``walbops pki init DIR`` makes the CA (``ca.key``, mode 0600, and ``ca.crt``); ``walbops pki
issue DIR HOST --role ROLE`` makes ``HOST.key`` and ``HOST.crt`` signed by it. The role is a
subjectAltName URI ``urn:walbops:role:ROLE``, which an agent reads from the peer's verified
certificate to decide what it may call (docs/protocol.md §6.2). Keys are ECDSA P-256: a TLS 1.3
handshake with them costs a fraction of a millisecond.

A rollover trusts two CAs at once: the trust file (``tls_ca``) is a bundle of PEM certificates,
``walbops pki bundle`` writes one, and hosts are re-issued by the new CA while the old still
verifies the others.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .durable import atomic_write
from .errors import BadField, OperationError, UsageError
from .net.messages import ROLES
from .net.tls import ROLE_URI_PREFIX, role_of_uris

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CA_DAYS = 3650  # [days] the CA's lifetime; rotate it well before (a rollover trusts two CAs)
HOST_DAYS = 365  # [days] a host certificate's default lifetime
_CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates are valid from a little before now
# The CA key's passphrase comes from the environment, never from a command line (ps shows those);
# Ansible passes it from a Vault variable.
PASSPHRASE_ENV = "WALBOPS_CA_PASSPHRASE"


def ca_passphrase() -> bytes | None:
    """The CA key's passphrase from :data:`PASSPHRASE_ENV`, or None (an unencrypted key)."""
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _crypto() -> Any:
    """cryptography, imported when a PKI command runs: agents only need the ssl module."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:  # pragma: no cover - a dependency of walbops
        raise OperationError("walbops pki needs the cryptography package (pip install cryptography)") from None
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator checks on a certificate: who, which role, which CA, until when."""

    path: str
    subject: str
    issuer: str
    role: str | None
    not_after: datetime.datetime
    names: tuple[str, ...]

    def days_left(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds() / 86400

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "subject": self.subject, "issuer": self.issuer, "role": self.role,
                "not_after": self.not_after.isoformat(), "days_left": round(self.days_left(), 1),
                "names": list(self.names)}


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UsageError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def _write_private_key(path: str, key: Any, passphrase: bytes | None = None) -> None:
    """PKCS#8 PEM, mode 0600; encrypted with ``passphrase`` when given (the CA's key at rest)."""
    _, _, serialization, _, _, _ = _crypto()
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    atomic_write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption),
                 mode=0o600)


def _pem(cert: Any) -> bytes:
    _, _, serialization, _, _, _ = _crypto()
    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def init_ca(directory: str, name: str = "walbops cluster CA", days: int = CA_DAYS, force: bool = False,
            passphrase: bytes | None = None) -> str:
    """Create the cluster CA in ``directory``; returns the certificate's path. ``passphrase``
    encrypts its key (then needed by every :func:`issue`).

    Raises:
        OperationError: a CA is there already (unless ``force``).
    """
    x509, hashes, _, ec, _, oid = _crypto()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key_path, cert_path = os.path.join(directory, CA_KEY), os.path.join(directory, CA_CERT)
    if not force and (os.path.exists(key_path) or os.path.exists(cert_path)):
        raise OperationError(f"{directory} holds a CA already; a new one is a rollover (docs/security.md)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(oid.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_private_key(key_path, key, passphrase)
    atomic_write(cert_path, _pem(cert))
    return cert_path


def issue(ca_directory: str, host: str, role: str, out_directory: str | None = None,
          names: Sequence[str] = (), days: int = HOST_DAYS, passphrase: bytes | None = None) -> tuple[str, str]:
    """Issue ``HOST.key`` and ``HOST.crt`` for ``role``; returns their paths.

    ``names`` are more DNS names or IP addresses the host is reached by (``host`` is always one).

    Raises:
        OperationError: the CA is missing or unreadable, or its key needs a passphrase that was
            not given or is wrong.
        UsageError: an unknown role.
    """
    x509, hashes, serialization, ec, eku, oid = _crypto()
    _check_role(role)
    key_path = os.path.join(ca_directory, CA_KEY)
    try:
        with open(key_path, "rb") as stream:
            pem = stream.read()
        with open(os.path.join(ca_directory, CA_CERT), "rb") as stream:
            ca_cert = x509.load_pem_x509_certificate(stream.read())
    except (OSError, ValueError) as exc:
        raise OperationError(f"{ca_directory}: no usable CA ({exc}); run walbops pki init first") from None
    try:
        ca_key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError:
        if passphrase:
            raise OperationError(f"{key_path} is not encrypted, yet a passphrase was given") from None
        raise OperationError(f"{key_path} is encrypted: give its passphrase in {PASSPHRASE_ENV}") from None
    except ValueError as exc:
        reason = "wrong passphrase" if passphrase else str(exc)
        raise OperationError(f"{key_path}: cannot load it ({reason})") from None
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[Any] = [x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role)]
    for name in dict.fromkeys([host, *names]):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(oid.COMMON_NAME, host),
                                     x509.NameAttribute(oid.ORGANIZATIONAL_UNIT_NAME, role)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([eku.SERVER_AUTH, eku.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = out_directory or ca_directory
    os.makedirs(out, exist_ok=True)
    key_path, cert_path = os.path.join(out, f"{host}.key"), os.path.join(out, f"{host}.crt")
    _write_private_key(key_path, key)
    atomic_write(cert_path, _pem(cert))
    return key_path, cert_path


def reissue_reason(ca_directory: str, cert_path: str, role: str, names: Sequence[str],
                   renew_within: float) -> str | None:
    """Why ``cert_path`` must be issued (again), or None when it is good: from this CA, for
    ``role`` and every one of ``names``, and valid for more than ``renew_within`` days."""
    if not os.path.exists(cert_path):
        return "missing"
    try:
        info = certificate_info(cert_path)
        ca = certificate_info(os.path.join(ca_directory, CA_CERT))
    except (OSError, BadField) as exc:
        return f"unreadable ({exc})"
    if info.issuer != ca.subject:
        return f"issued by {info.issuer}, not by {ca.subject}"
    if info.role != role:
        return f"for role {info.role}, not {role}"
    if not set(names) <= set(info.names):
        return f"does not name {', '.join(sorted(set(names) - set(info.names)))}"
    if info.days_left() <= renew_within:
        return f"expires in {info.days_left():.1f} days"
    return None


def bundle(out: str, ca_certificates: Sequence[str]) -> str:
    """Write the trust file of a rollover: every CA certificate of ``ca_certificates``, in order."""
    parts = []
    for path in ca_certificates:
        with open(path, "rb") as stream:
            parts.append(stream.read().strip() + b"\n")
    atomic_write(out, b"".join(parts))
    return out


def _load_certificate(pem: bytes, source: str) -> Any:
    """A PEM certificate; BadField naming ``source`` when it is not one."""
    x509, _, _, _, _, _ = _crypto()
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise BadField(f"not a PEM certificate ({exc})", source=source) from None


def certificate_info(path: str) -> CertificateInfo:
    """Read a PEM certificate.

    Raises:
        BadField: not a PEM certificate.
    """
    x509, _, _, _, _, _ = _crypto()
    with open(path, "rb") as stream:
        cert = _load_certificate(stream.read(), path)
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = alt.get_values_for_type(x509.UniformResourceIdentifier)
        names = tuple([*alt.get_values_for_type(x509.DNSName), *map(str, alt.get_values_for_type(x509.IPAddress))])
    except x509.ExtensionNotFound:
        uris, names = [], ()
    return CertificateInfo(path, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                           role_of_uris(list(uris)), cert.not_valid_after_utc, names)


def check_key_pair(cert_pem: bytes, key_pem: bytes, source: str) -> None:
    """Refuse a private key that is not the one of the certificate beside it (a host handed
    another host's key would fail every handshake, and only at the agent's next start).

    Raises:
        BadField: either is not PEM, or the key's public half is not the certificate's.
    """
    _, _, serialization, _, _, _ = _crypto()
    cert = _load_certificate(cert_pem, f"{source}.crt")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BadField(f"not an unencrypted PEM private key ({exc})", source=f"{source}.key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != cert.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise BadField(f"the key is not the one of {source}.crt ({cert.subject.rfc4514_string()})",
                       source=f"{source}.key")
