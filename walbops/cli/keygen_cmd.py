"""``walbops keygen``: write a new cluster key file, or a role key file derived from one
(docs/protocol.md §4.1, §4.7)."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError
from ..net.auth import Keys, load_key, write_key, write_keys
from ..net.messages import HOST_TYPES, ROLES
from ._common import add_json_flag, emit


def register(commands: argparse._SubParsersAction) -> None:
    keygen = commands.add_parser(
        "keygen", help="write a new random cluster key file, or a role key file derived from it (mode 0600)",
        description="Without --from: a new random cluster key. With --from CLUSTER_KEY --role ROLE: the key "
                    "file of a process that may act only as ROLE (repeat --role for several); with --id, "
                    "the key file of the agent with that id, which also accepts exactly the roles that "
                    "may call its kinds (docs/protocol.md 4.7). The same inputs always give the same file.")
    keygen.add_argument("path", help="key file to create")
    keygen.add_argument("--from", dest="cluster_key", metavar="CLUSTER_KEY",
                        help="derive a role key file from this cluster key file")
    keygen.add_argument("--role", action="append", choices=ROLES, default=[],
                        help="a role the holder acts as (with --from; repeatable)")
    keygen.add_argument("--id", dest="agent_id", metavar="ID",
                        help="the agents' id (with --from and agent roles: the key file of the agents of those "
                             "kinds on one host)")
    keygen.add_argument("--force", action="store_true", help="replace the file if it exists")
    add_json_flag(keygen)
    keygen.set_defaults(handler=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    # No key is ever printed: they are secrets, and output ends up in logs.
    path = os.path.abspath(args.path)
    result: dict[str, object] = {"path": path, "mode": "0600"}
    if args.cluster_key is None:
        if args.role or args.agent_id:
            raise UsageError("--role and --id derive a role key file: give the cluster key with --from")
        write_key(args.path, force=args.force)
    else:
        keys = role_keys(load_key(args.cluster_key), args.role, args.agent_id)
        write_keys(args.path, keys, force=args.force)
        result.update(roles=[role for role, _ in keys.roles], id=keys.agent_id,
                      accepts=[role for role, _ in keys.accepts])
    emit(result, args.json, human=lambda shown: shown["path"])
    return 0


def role_keys(cluster_key: bytes, roles: list[str], agent_id: str | None) -> Keys:
    """The role key file ``keygen --from`` writes.

    Raises:
        UsageError: no role, or an --id without an agent role among ``roles``.
    """
    if not roles:
        raise UsageError("--from needs at least one --role")
    if agent_id is not None and not set(roles) & set(HOST_TYPES):
        raise UsageError(f"--id names an agent: give its kind ({', '.join(HOST_TYPES)}) with --role")
    return Keys.issue(cluster_key, tuple(dict.fromkeys(roles)), agent_id)
