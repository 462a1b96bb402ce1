"""What a process proves itself with: the cluster key, or a TLS certificate that names its role.

Key mode (the all-in-one demo, and tests that need it) authenticates with the cluster key and
sends frames in the clear. TLS mode wraps every connection in TLS 1.3 with certificates on both
sides, signed by the cluster CA (:mod:`walbops.pki`): frames are encrypted and integrity-checked,
and a peer's role is the one its certificate names, not the one it says (docs/protocol.md §4.6).
The handshake of section 4 still runs inside TLS, for ids and versions, with the public key
:data:`TLS_MODE_KEY`: in TLS mode its proofs carry no secret, the certificates do.
"""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass
from typing import Any

from ..errors import AuthenticationError, UsageError
from .auth import Keys
from .messages import ROLES

TLS_MODE_KEY = bytes(32)  # the handshake's key in TLS mode: public on purpose (see above)
ROLE_URI_PREFIX = "urn:walbops:role:"  # walbops.pki writes the role as this subjectAltName URI


@dataclass(frozen=True)
class TlsFiles:
    """A process's certificate and key, and the CA bundle it trusts (two CAs during a rollover)."""

    cert: str
    key: str
    ca: str

    def check(self) -> "TlsFiles":
        """Raises UsageError naming a file that is missing or unreadable."""
        for what, path in (("tls_cert", self.cert), ("tls_key", self.key), ("tls_ca", self.ca)):
            if not os.access(path, os.R_OK):
                raise UsageError(f"{what} {path}: not a readable file")
        return self


@dataclass(frozen=True)
class Credentials:
    """The cluster key or a role key file's keys (key mode), or TLS files (TLS mode)."""

    key: bytes | Keys = TLS_MODE_KEY
    tls: TlsFiles | None = None

    @property
    def mode(self) -> str:
        return "tls" if self.tls is not None else "key"

    def server_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else _context(self.tls, server=True)

    def client_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else _context(self.tls, server=False)


Secret = bytes | Keys | Credentials  # what connections take: a bare key or Keys is key mode


def credentials(secret: Secret) -> Credentials:
    return secret if isinstance(secret, Credentials) else Credentials(secret)


@functools.lru_cache(maxsize=16)
def _context(files: TlsFiles, server: bool) -> ssl.SSLContext:
    """A TLS 1.3 context that presents ``files.cert`` and requires a peer certificate from ``files.ca``.

    Raises:
        UsageError: a file cannot be loaded (named, with OpenSSL's reason).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = not server  # a client checks the server's name or address
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"tls_cert {files.cert} / tls_key {files.key}: cannot load them ({exc})") from None
    try:
        context.load_verify_locations(cafile=files.ca)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"tls_ca {files.ca}: cannot load it ({exc})") from None
    return context


def certified_role(ssl_object: Any) -> str:
    """The role the peer's verified certificate names.

    Raises:
        AuthenticationError: the certificate names no role, or more than one.
    """
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    role = role_of_uris([value for kind, value in (cert or {}).get("subjectAltName", ()) if kind == "URI"])
    if role is None:
        raise AuthenticationError("the peer's certificate names no walbops role (urn:walbops:role:ROLE), "
                                  "or more than one")
    return role


def role_of_uris(uris: list[str]) -> str | None:
    """The walbops role among a certificate's subjectAltName URIs (None if it names none, two, or
    one walbops does not know)."""
    roles = {uri[len(ROLE_URI_PREFIX):] for uri in uris if uri.startswith(ROLE_URI_PREFIX)}
    role = roles.pop() if len(roles) == 1 else None
    return role if role in ROLES else None


def tls_failure(where: str, exc: ssl.SSLError | OSError) -> AuthenticationError:
    """A failed TLS handshake, said the way an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return AuthenticationError(f"{where}: TLS: the certificate does not verify: {exc.verify_message}")
    reason = getattr(exc, "reason", None) or str(exc)
    return AuthenticationError(f"{where}: TLS handshake failed: {reason}")
