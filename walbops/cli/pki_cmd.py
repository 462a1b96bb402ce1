"""``walbops pki``: the cluster CA and the hosts' certificates (docs/security.md)."""

from __future__ import annotations

import argparse
import os

from .. import pki
from ..errors import UsageError
from ..net.messages import ROLES
from ._common import add_json_flag, emit


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("pki", help="the cluster CA and host certificates for TLS mode",
                                epilog=f"{pki.PASSPHRASE_ENV}: the CA key's passphrase (init encrypts the key "
                                       "with it; issue needs it then)")
    sub = group.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create the cluster CA in DIR (once; keep DIR off the hosts)")
    init.add_argument("dir")
    init.add_argument("--name", default="walbops cluster CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=pki.CA_DAYS, help="lifetime [days]")
    init.add_argument("--force", action="store_true", help="replace an existing CA (a rollover: see the docs)")
    add_json_flag(init)
    init.set_defaults(handler=cmd_init)

    issue = sub.add_parser("issue", help="issue HOST.key and HOST.crt for a role (or several), signed by the CA "
                                         "in DIR")
    issue.add_argument("dir", help="the CA directory")
    issue.add_argument("host", help="the host's name (the certificate's CN and first subjectAltName)")
    issue.add_argument("--role", required=True, choices=ROLES, action="append", dest="roles",
                       help="the role (repeatable: one certificate each, in --out with {role} in it)")
    issue.add_argument("--name", action="append", default=[], dest="names",
                       help="another DNS name or IP address the host is reached by (repeatable)")
    issue.add_argument("--out", help="where the key and certificate go (default: DIR); {role} stands for the role, "
                                     "which several roles need")
    issue.add_argument("--days", type=int, default=pki.HOST_DAYS, help="lifetime [days]")
    issue.add_argument("--renew-within", type=float, default=30.0,
                       help="keep a valid certificate of this CA, role and names unless it expires within "
                            "this many days [days]")
    add_json_flag(issue)
    issue.set_defaults(handler=cmd_issue)

    bundle = sub.add_parser("bundle", help="write the trust file of a rollover: several CA certificates")
    bundle.add_argument("out")
    bundle.add_argument("ca_certs", nargs="+", metavar="CA_CERT")
    add_json_flag(bundle)
    bundle.set_defaults(handler=cmd_bundle)

    show = sub.add_parser("show", help="subject, role, issuer and expiry of a certificate")
    show.add_argument("cert")
    add_json_flag(show)
    show.set_defaults(handler=cmd_show)


def cmd_init(args: argparse.Namespace) -> int:
    cert = os.path.join(args.dir, pki.CA_CERT)
    changed = args.force or not os.path.exists(cert)
    if changed:
        pki.init_ca(args.dir, args.name, args.days, force=args.force, passphrase=pki.ca_passphrase())
    emit({"changed": changed, **pki.certificate_info(cert).as_dict()}, args.json)
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    """One certificate per role, each kept or (re)issued as :func:`pki.reissue_reason` says; one
    process for all of a host's roles (the roles issue every host's on every run)."""
    out = args.out or args.dir
    roles = list(dict.fromkeys(args.roles))
    if len(roles) > 1 and "{role}" not in out:
        raise UsageError(f"--out {out} must contain {{role}} when several roles are issued at once")
    passphrase = pki.ca_passphrase()
    results = []
    for role in roles:
        directory = out.replace("{role}", role)
        cert = os.path.join(directory, f"{args.host}.crt")
        reason = pki.reissue_reason(args.dir, cert, role, [args.host, *args.names], args.renew_within)
        if reason is not None:
            pki.issue(args.dir, args.host, role, directory, args.names, args.days, passphrase)
        results.append({"changed": reason is not None, "reason": reason, **pki.certificate_info(cert).as_dict()})
    # One role: that certificate's fields at the top level, as before several could be asked for.
    summary = results[0] if len(results) == 1 else {}
    emit({**summary, "changed": any(result["changed"] for result in results), "certificates": results}, args.json)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    pki.bundle(args.out, args.ca_certs)
    emit({"path": os.path.abspath(args.out), "cas": len(args.ca_certs)}, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    emit(pki.certificate_info(args.cert).as_dict(), args.json)
    return 0
