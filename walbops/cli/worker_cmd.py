"""``walbops worker``: WalB's walb-worker for one archive, with retention (docs/worker.md)."""

from __future__ import annotations

import argparse

from .. import logs
from ..worker import Worker, WorkerConfig


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("worker", help="apply, merge and prune an archive's volumes by policy (walb-worker)")
    parser.add_argument("--config", "-c", required=True, help="worker YAML configuration (docs/worker.md)")
    parser.add_argument("--log-file", help="log here instead of the config's log_file (- for stderr)")
    parser.add_argument("--once", action="store_true", help="start what is due now, wait for it and exit")
    parser.add_argument("--debug", action="store_true", help="debug logging")
    parser.set_defaults(handler=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    config = WorkerConfig.load(args.config)
    logs.request_id_var.set(None)  # each task it starts gets an id of its own
    logs.configure(args.log_file or config.log_file, args.debug)
    worker = Worker(config)
    return worker.run_once() if args.once else worker.run()
