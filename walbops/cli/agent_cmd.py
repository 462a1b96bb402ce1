"""``walbops agent storage|proxy|archive``: run an agent in the foreground."""

from __future__ import annotations

import argparse

from .. import logs
from ..agents import config as agent_config


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("agent", help="run the storage, proxy or archive agent")
    sub = group.add_subparsers(dest="role", required=True, metavar="ROLE")
    for role in agent_config.ROLES:
        parser = sub.add_parser(role, help=f"the {role} agent")
        agent_config.add_flags(parser, role)
        parser.set_defaults(handler=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    config = agent_config.from_args(args.role, args)
    logs.request_id_var.set(None)  # an agent serves many commands: each request brings its own id
    logs.configure(config.log_path(), config.debug, config.log_level, config.log_format)
    from ..agents._server import run  # imported late: the agents pull in asyncio servers and stores

    if args.role == "archive":
        from ..agents.archive import ArchiveAgent

        return run(ArchiveAgent(config))
    if args.role == "proxy":
        from ..agents.proxy import ProxyAgent

        return run(ProxyAgent(config))
    from ..agents.storage import StorageAgent

    return run(StorageAgent(config))
