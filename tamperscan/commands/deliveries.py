"""``tamperscan deliveries``: reports on their way to the PACS; resend the failed ones."""

from __future__ import annotations

import argparse
import json
import sys

from storage.deliveries import list_deliveries, resend
from storage.models import utcnow
from tamperscan.commands.service import (
    NoDatabase,
    add_config_option,
    existing_database,
    settings_from_args,
)


def _deliveries(args: argparse.Namespace) -> int:
    try:
        db = existing_database(args, settings_from_args(args))
    except NoDatabase as exc:
        print(f"tamperscan: {exc}", file=sys.stderr)
        return 2
    try:
        if args.resend or args.resend_failed:
            with db.session() as session:
                count = resend(session, utcnow(), args.resend, all_failed=args.resend_failed)
            print(f"{count} deliveries queued again")
            return 0
        with db.reading() as session:
            rows = [
                {
                    "id": d.id,
                    "verdict_id": d.verdict_id,
                    "destination": d.destination,
                    "state": d.state,
                    "attempts": d.attempts,
                    "next_attempt_at": d.next_attempt_at.isoformat(),
                    "last_error": d.last_error,
                }
                for d in list_deliveries(session, args.state, args.limit)
            ]
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            error = f"  {r['last_error']}" if r["last_error"] else ""
            print(
                f"{r['id']:>6}  verdict {r['verdict_id']:<6} {r['destination']:<16} "
                f"{r['state']:<9} attempts {r['attempts']}{error}"
            )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "deliveries",
        help="List report deliveries to the PACS; resend failed ones.",
        description="Reports wait in a queue per destination; after [delivery] max_attempts "
        "they show as failed. --resend-failed (or --resend ID...) queues them again; the same "
        "SR UIDs are sent, so the PACS keeps one copy.",
    )
    add_config_option(parser)
    parser.add_argument("--state", choices=["pending", "delivered", "failed"], default=None)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--resend", type=int, nargs="+", default=[], metavar="ID")
    parser.add_argument("--resend-failed", action="store_true")
    parser.set_defaults(handler=_deliveries)
