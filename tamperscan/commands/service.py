"""``tamperscan serve`` and ``tamperscan status``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from storage.db import Database
from storage.queries import list_studies
from tamperscan.config import ConfigError, Settings, load_config
from tamperscan.logs import setup_logging


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config.toml to use (default: $TAMPERSCAN_CONFIG, else ./config.toml when present, "
        "else the built-in defaults). Any key can be overridden by an environment variable "
        "TAMPERSCAN_<SECTION>__<KEY>, e.g. TAMPERSCAN_SCP__PORT=104.",
    )


EXIT_NO_DATABASE = 2


def config_path_from_args(args: argparse.Namespace) -> Path | None:
    """The config file a command reads: --config, $TAMPERSCAN_CONFIG, ./config.toml, or None."""
    path: Path | None = args.config
    if path is None and os.environ.get("TAMPERSCAN_CONFIG"):
        path = Path(os.environ["TAMPERSCAN_CONFIG"])
    if path is None and Path("config.toml").is_file():
        path = Path("config.toml")
    return path


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_config(config_path_from_args(args))


class NoDatabase(RuntimeError):
    """A read-only command found no database; the message names the config it looked at."""


def existing_database(args: argparse.Namespace, settings: Settings) -> Database:
    """The configured database, migrated, but never created: read-only commands must not
    leave an empty database behind (and report "no studies") when pointed at the wrong place.
    """
    url = settings.storage.resolved_database_url()
    if url.startswith("sqlite:///"):
        file = Path(url.removeprefix("sqlite:///"))
        if not file.is_file():
            path = config_path_from_args(args)
            where = f"config {path.resolve()}" if path else "the built-in defaults (no config)"
            raise NoDatabase(
                f"no database at {file} (from {where}, [storage] data_dir = "
                f"{settings.storage.data_dir}); run this command where config.toml is, or pass "
                f"--config / set TAMPERSCAN_CONFIG; 'tamperscan serve' creates the database"
            )
    db = Database(url)
    db.migrate()
    return db


class Runnable(Protocol):
    """A long-running process object (``Service``, ``WorkerProcess``)."""

    def run_until_signalled(self) -> None: ...


def run_long_process(
    args: argparse.Namespace, build: Callable[[Settings], Runnable], verb: str
) -> int:
    """Load the config, set up logging, run ``build(settings)`` until SIGTERM/SIGINT.

    Shared by ``serve`` and ``worker``: the same refusals and exit codes for both.
    """
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"tamperscan: refusing to start: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging.level, settings.logging.format)
    try:
        build(settings).run_until_signalled()
    except OSError as exc:  # e.g. the port is taken, the data folder or a model file is missing
        print(f"tamperscan: cannot {verb}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a checkpoint of the wrong layout or modality
        print(f"tamperscan: refusing to start: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    def build(settings: Settings) -> Runnable:
        from tamperscan.service import Service  # heavy imports only when serving

        return Service(settings)

    return run_long_process(args, build, "serve")


def _status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        db = existing_database(args, settings)
    except NoDatabase as exc:
        print(f"tamperscan: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    with db.reading() as session:
        studies = list_studies(session, limit=args.limit)
    db.dispose()
    if args.json:
        print(json.dumps([s.as_dict() for s in studies], indent=2))
        return 0
    if not studies:
        print("no studies received yet")
        return 0
    header = ("STUDY UID", "PATIENT", "MOD", "SER", "INST", "STATE", "VER", "VERDICT")
    rows = [
        (
            s.study_uid,
            s.patient_id or "",
            "/".join(s.modalities),
            str(s.series),
            str(s.instances),
            s.state,
            str(s.version),
            (s.verdict or "-") + (f" ({s.verdict_reason})" if s.verdict_reason else ""),
        )
        for s in studies
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1])
    return 0


def _echo(args: argparse.Namespace) -> int:
    from scp.echo import echo

    settings = settings_from_args(args)
    host = args.host or (
        "127.0.0.1" if settings.scp.host in ("0.0.0.0", "::") else settings.scp.host
    )
    port = args.port or settings.scp.port
    called = args.aec or settings.scp.ae_title
    result = echo(host, port, called, calling_aet=args.aet, timeout=args.timeout)
    print(result.detail, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the DICOM receiver, study assembly and scoring workers",
        description="Receive studies over DICOM C-STORE, decide when each study is complete, "
        "score it and record the verdict. Stops cleanly on SIGTERM/SIGINT.",
    )
    add_config_option(serve)
    serve.set_defaults(handler=_serve)

    status = sub.add_parser(
        "status",
        help="list received studies, their state and current verdict",
        description="List studies newest first: instance counts, state "
        "(receiving, queued, scoring, done, failed), version and current verdict. Refuses "
        "(exit 2) when the configured database does not exist.",
    )
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--limit", type=int, default=100, help="at most this many studies")
    status.set_defaults(handler=_status)

    echo = sub.add_parser(
        "echo",
        help="send a C-ECHO to the service (or any DICOM node): a health check",
        description="Open an association and send C-ECHO. Exit status 0 when the node answers "
        "success, 1 otherwise. Without --host/--port/--aec it checks this service's own SCP.",
    )
    add_config_option(echo)
    echo.add_argument("--host", help="node to check (default: this service)")
    echo.add_argument("--port", type=int, help="its DICOM port (default: [scp] port)")
    echo.add_argument("--aec", help="its AE title (default: [scp] ae_title)")
    echo.add_argument("--aet", default="HEALTHCHECK", help="our calling AE title")
    echo.add_argument("--timeout", type=float, default=10, help="seconds to wait")
    echo.set_defaults(handler=_echo)
