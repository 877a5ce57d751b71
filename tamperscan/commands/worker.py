"""``tamperscan worker``: scoring and delivery against the shared database and data folder."""

from __future__ import annotations

import argparse
import sys

from tamperscan.commands.service import add_config_option, settings_from_args
from tamperscan.config import ConfigError
from tamperscan.logs import setup_logging


def _worker(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"tamperscan: refusing to start: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging.level, settings.logging.format)
    from tamperscan.worker_process import WorkerProcess  # heavy imports only when working

    try:
        WorkerProcess(settings).run_until_signalled()
    except OSError as exc:  # the data folder is not mounted, a model file is missing
        print(f"tamperscan: cannot work: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a checkpoint of the wrong layout or modality
        print(f"tamperscan: refusing to start: {exc}", file=sys.stderr)
        return 2
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser(
        "worker",
        help="run scoring workers and report delivery only (no receiver), e.g. on a GPU host",
        description="Score queued studies and send their reports, against the database and "
        "data folder serve uses ([storage] database_url and data_dir: PostgreSQL and a folder "
        "every host mounts at the same path). Runs [worker] concurrency jobs at a time; start "
        "one per GPU. Stops cleanly on SIGTERM/SIGINT; a job it was running is taken over by "
        "another worker after [worker] lease_s.",
    )
    add_config_option(worker)
    worker.set_defaults(handler=_worker)
