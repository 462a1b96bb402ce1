"""``walbops worker``: WalB's walb-worker for one archive, with retention (docs/worker.md)."""

from __future__ import annotations

import argparse
import logging
import sys

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
    log_file = args.log_file or config.log_file
    handler: logging.Handler = logging.StreamHandler(sys.stderr) if log_file == "-" else logging.FileHandler(log_file)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, handlers=[handler],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = Worker(config)
    return worker.run_once() if args.once else worker.run()
