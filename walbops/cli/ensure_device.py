"""``walbops ensure ldev|device|agent``: a host's log devices, walb devices and agent processes."""

from __future__ import annotations

import argparse

from ..converge import AGENT_TIMEOUT
from ..device.policy import OverflowPolicy
from ..net.messages import HOST_TYPES
from ._common import add_ensure_flags, report


def register_ldev(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ldev", help="a formatted log device (formatted once; again only with --force)")
    parser.add_argument("ldev", help="log device (block device or file)")
    parser.add_argument("ddev", help="data device it logs for (block device or file)")
    parser.add_argument("--name", help="device name stored in the super sector when formatting")
    parser.add_argument("--pbs", type=int, choices=(512, 4096), help="physical block size (default: the ldev's)")
    parser.add_argument("--force", action="store_true", help="format even a formatted ldev (its logs are lost)")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_ldev)


def cmd_ldev(args: argparse.Namespace) -> int:
    from ..converge.ldev import ensure_ldev

    return report(ensure_ldev(args.ldev, args.ddev, args.name, args.pbs, args.force, args.check), args.json)


def register_device(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("device", help="a running walb device /dev/walbops/NAME (present|absent)")
    parser.add_argument("name")
    parser.add_argument("--ldev", help="formatted log device (needed for present)")
    parser.add_argument("--ddev", help="data device (needed for present)")
    parser.add_argument("--state", choices=("present", "absent"), default="present")
    parser.add_argument("--overflow", choices=[str(policy) for policy in OverflowPolicy],
                        help="when the ring is full (set at creation; default overwrite)")
    parser.add_argument("--checkpoint-interval-ms", type=int, help="checkpoint interval (default 10000) [ms]")
    parser.add_argument("--flush-interval-ms", type=int,
                        help="longest time a write waits to become permanent (set at creation; default 100) [ms]")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help="serve Prometheus metrics there (empty: none); a running device changes at once")
    parser.add_argument("--force", action="store_true", help="absent: stop it even if mounted or open")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_device)


def cmd_device(args: argparse.Namespace) -> int:
    from ..converge.device import ensure_device

    outcome = ensure_device(args.name, args.state, args.ldev, args.ddev, args.overflow, args.checkpoint_interval_ms,
                            args.flush_interval_ms, args.force, args.check, metrics_listen=args.metrics_listen)
    return report(outcome, args.json)


def register_agent(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("agent", help="an agent process kept by a pidfile (started|stopped|restarted)")
    parser.add_argument("role", choices=(*HOST_TYPES, "worker"))
    parser.add_argument("--config", required=True, help="the agent's YAML configuration")
    parser.add_argument("--pidfile", required=True, help="file naming the agent's pid")
    parser.add_argument("--state", choices=("started", "stopped", "restarted"), default="started")
    parser.add_argument("--timeout", type=float, default=AGENT_TIMEOUT,
                        help=f"longest wait for the agent to answer, or to exit before SIGKILL "
                             f"(default {AGENT_TIMEOUT:g}) [s]")
    add_ensure_flags(parser)
    parser.set_defaults(handler=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    from ..converge.agent import ensure_agent

    return report(ensure_agent(args.role, args.config, args.pidfile, args.state, args.timeout, args.check), args.json)
