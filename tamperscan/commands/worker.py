"""``tamperscan worker``: scoring and delivery against the shared database and data folder."""

from __future__ import annotations

import argparse

from tamperscan.commands.service import Runnable, add_config_option, run_long_process
from tamperscan.config import Settings


def _worker(args: argparse.Namespace) -> int:
    def build(settings: Settings) -> Runnable:
        from tamperscan.worker_process import WorkerProcess  # heavy imports only when working

        return WorkerProcess(settings)

    return run_long_process(args, build, "work")


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
