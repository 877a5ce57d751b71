"""``tamperscan retrain --now`` and ``tamperscan models list|promote|rollback``.

``retrain --now`` runs the same job serve runs nightly (the registry's run lock refuses it
while another run is going, in any process); it lowers its own CPU priority so a serve beside
it keeps scoring at full speed. A promotion made here is picked up by serve within
``[retrain] reload_interval_s``, and serve then re-scores the studies left ``not_scored`` for
want of a model. When a modality is skipped, every pool filter that removed something is
printed with the config key that moves it.

``retrain --bootstrap`` is the first-install path: the same run with ``quarantine_days = 0``
(the operator vouches for the trusted studies received so far), only for modalities that have
no production model yet; the promotion gate still applies.

Exit status: 0 trained (and, with --bootstrap, promoted); 1 the run failed; 2 usage,
configuration, or no database where the config points (never created here); 3 another run
holds the lock; 4 nothing was trained (or, with --bootstrap, nothing promoted): the lines
above say which filter or gate limit stopped it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from typing import Any

from storage.db import Database
from tamperscan.commands.service import (
    NoDatabase,
    add_config_option,
    existing_database,
    settings_from_args,
)
from tamperscan.config import Settings
from tamperscan.logs import setup_logging

EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_NOTHING = 1, 2, 3, 4


def _actor(args: argparse.Namespace) -> str:
    return args.actor or f"cli:{getpass.getuser()}"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "retrain",
        help="retrain the detectors now on the curated genuine pool",
        description="Run the scheduled retraining job now: select the genuine pool, fine-tune "
        "each detector, gate the candidates on held-out patients and tamper-lab attacks, "
        "promote those that pass. See [retrain] in config.toml.",
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument("--now", action="store_true", help="run the scheduled job now")
    when.add_argument(
        "--bootstrap",
        action="store_true",
        help="first install: train the first models now from the trusted studies received so "
        "far (quarantine_days = 0; modalities without a production model only)",
    )
    p.add_argument("--actor", help="name recorded in the audit trail (default cli:$USER)")
    add_config_option(p)
    p.set_defaults(handler=_retrain)

    m = subparsers.add_parser("models", help="the model registry: list, promote, roll back")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lst = msub.add_parser("list", help="every model version, newest first")
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--limit", type=int, default=50)
    add_config_option(lst)
    lst.set_defaults(handler=_list)
    pro = msub.add_parser("promote", help="make a candidate or retired version production")
    pro.add_argument("id", type=int)
    pro.add_argument("--reason", default="promoted by hand")
    pro.add_argument("--actor", help="name recorded in the audit trail (default cli:$USER)")
    add_config_option(pro)
    pro.set_defaults(handler=_promote)
    rb = msub.add_parser("rollback", help="put the previous production version back")
    rb.add_argument("modality", type=str.upper, choices=("CT", "MR"))
    rb.add_argument("detector", choices=("btd", "inpaint"))
    rb.add_argument("--actor", help="name recorded in the audit trail (default cli:$USER)")
    add_config_option(rb)
    rb.set_defaults(handler=_rollback)


def _bootstrap_settings(settings: Settings, db: Database) -> tuple[Any, list[str]]:
    """[retrain] for the first models: no quarantine, modalities without production only."""
    from storage.registry import production

    with db.reading() as session:
        todo = [
            m
            for m in settings.retrain.modalities
            if any(production(session, d, m) is None for d in settings.retrain.detectors)
        ]
    return settings.retrain.model_copy(update={"quarantine_days": 0.0, "modalities": todo}), todo


def _print_report(report: Any) -> int:
    """The run's summary, one line per modality/detector; returns how many were trained."""
    trained = 0
    print(f"run {report.run_id} {report.state} in {report.seconds:.0f} s")
    for modality, result in report.summary.items():
        if "skipped" in result:
            print(f"  {modality}: skipped: {result['skipped']}")
            for line in result.get("filters", []):
                print(f"    - {line}")
            continue
        for detector, outcome in result.items():
            if "skipped" in outcome:
                print(f"  {modality} {detector}: skipped: {outcome['skipped']}")
            else:
                trained += 1
                verdict = "promoted" if outcome["promoted"] else "rejected"
                print(
                    f"  {modality} {detector}: version {outcome['version']} {verdict}: "
                    f"{outcome['reason']}"
                )
    return trained


def _retrain(args: argparse.Namespace) -> int:
    if not (args.now or args.bootstrap):
        print(
            "tamperscan: retrain: give --now (run the scheduled job now) or --bootstrap (first "
            "models of a new installation); serve runs the schedule, [retrain] cron",
            file=sys.stderr,
        )
        return EXIT_USAGE
    settings = settings_from_args(args)
    setup_logging(settings.logging.level, settings.logging.format)
    from detector.retrain import RetrainBusy, Retrainer

    try:
        os.nice(10)  # serve's scoring, if it runs beside us, wins the CPU
    except OSError:
        logging.getLogger(__name__).warning("could not lower the CPU priority")
    try:  # nothing to train on without a database: never create an empty one here
        db = existing_database(args, settings)
    except NoDatabase as exc:
        print(f"tamperscan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    retrain = settings.retrain
    if args.bootstrap:
        retrain, todo = _bootstrap_settings(settings, db)
        if not todo:
            db.dispose()
            print(
                "every configured modality already has production models: nothing to "
                "bootstrap (tamperscan retrain --now retrains them)"
            )
            return 0
    try:
        report = Retrainer(db, settings.storage.data_dir, retrain).run("cli", _actor(args))
    except RetrainBusy as exc:
        print(f"tamperscan: {exc}", file=sys.stderr)
        return EXIT_BUSY
    finally:
        db.dispose()
    trained = _print_report(report)
    if report.error:
        print(f"tamperscan: retraining failed: {report.error}", file=sys.stderr)
        return EXIT_FAILED
    if not trained:
        print("tamperscan: nothing was trained (see the reasons above)", file=sys.stderr)
        return EXIT_NOTHING
    if args.bootstrap and not report.promoted:
        print(
            "tamperscan: no candidate passed the promotion gate (see the reasons above; "
            "README 'First models' explains the gate's limits)",
            file=sys.stderr,
        )
        return EXIT_NOTHING
    return 0


def _existing(args: argparse.Namespace) -> Database | None:
    try:
        return existing_database(args, settings_from_args(args))
    except NoDatabase as exc:
        print(f"tamperscan: {exc}", file=sys.stderr)
        return None


def _list(args: argparse.Namespace) -> int:
    from storage.registry import list_versions

    db = _existing(args)
    if db is None:
        return EXIT_USAGE
    with db.reading() as session:
        versions = list_versions(session, args.limit)
    db.dispose()
    rows = [
        {
            "id": v.id,
            "detector": v.detector,
            "modality": v.modality,
            "state": v.state,
            "created_at": v.created_at.isoformat(),
            "promoted_at": v.promoted_at.isoformat() if v.promoted_at else None,
            "run": v.run_id,
            "parent": v.parent_id,
            "auc": ((v.metrics or {}).get("gate") or {}).get("auc"),
            "false_alarm_rate": ((v.metrics or {}).get("gate") or {}).get("false_alarm_rate"),
            "checkpoint": v.checkpoint_path,
            "sha256": v.sha256,
            "reason": v.reason,
        }
        for v in versions
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no model versions yet (tamperscan retrain --now trains the first ones)")
        return 0
    for r in rows:
        auc = "-" if r["auc"] is None else f"{r['auc']:.3f}"
        far = "-" if r["false_alarm_rate"] is None else f"{r['false_alarm_rate']:.3f}"
        print(
            f"{r['id']:>4}  {r['modality']:<2} {r['detector']:<7} {r['state']:<10} "
            f"AUC {auc:<5} FA {far:<5} {r['created_at'][:19]}  {r['reason'] or ''}"
        )
    return 0


def _promote(args: argparse.Namespace) -> int:
    from storage.models import utcnow
    from storage.registry import RegistryError, promote

    db = _existing(args)
    if db is None:
        return EXIT_USAGE
    try:
        with db.session() as session:
            version = promote(session, args.id, _actor(args), utcnow(), args.reason)
            print(f"version {version.id} ({version.modality} {version.detector}) is production")
    except RegistryError as exc:
        print(f"tamperscan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        db.dispose()
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from storage.models import utcnow
    from storage.registry import RegistryError, rollback

    db = _existing(args)
    if db is None:
        return EXIT_USAGE
    try:
        with db.session() as session:
            version = rollback(session, args.modality, args.detector, _actor(args), utcnow())
            print(f"version {version.id} ({args.modality} {args.detector}) is production again")
    except RegistryError as exc:
        print(f"tamperscan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        db.dispose()
    return 0
