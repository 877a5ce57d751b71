"""``tamperscan user add|passwd|remove|list``: who may log in to the admin web report.

Passwords are read with getpass (asked twice) or from standard input with --password-stdin,
never from the command line, where other users could read them in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from admin.auth import hash_password
from storage.db import Database
from storage.models import ROLES, utcnow
from storage.users import UserError, add_user, list_users, remove_user, set_password
from tamperscan.commands.service import (
    NoDatabase,
    add_config_option,
    existing_database,
    settings_from_args,
)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise UserError("the two passwords differ")
    return first


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _users(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.action == "add":  # the first admin may be added before serve's first start
        db = Database(settings.storage.resolved_database_url())
        db.migrate()
    else:
        try:
            db = existing_database(args, settings)
        except NoDatabase as exc:
            print(f"tamperscan: {exc}", file=sys.stderr)
            return 2
    try:
        if args.action == "list":
            with db.reading() as session:
                for user in list_users(session):
                    last = (
                        user.last_login_at.isoformat(timespec="seconds")
                        if user.last_login_at
                        else "never"
                    )
                    print(f"{user.username:<24} {user.role:<7} last login {last}")
            return 0
        now = utcnow()
        if args.action == "remove":
            with db.session() as session:
                remove_user(session, args.username, _actor())
            print(f"user {args.username} removed")
            return 0
        password_hash = hash_password(_read_password(args))
        with db.session() as session:
            if args.action == "add":
                add_user(session, args.username, password_hash, args.role, now, _actor())
                print(f"user {args.username} added as {args.role}")
            else:
                set_password(session, args.username, password_hash, now, _actor(), args.role)
                print(f"password of {args.username} changed; their sessions have ended")
        return 0
    except (UserError, ValueError) as exc:
        print(f"tamperscan user: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "user",
        help="Manage admin web report users (add, passwd, remove, list).",
        description="Users log in to the admin web report. Roles: viewer (sees everything) and "
        "admin (may also re-score, re-send reports, mark studies and regions). Passwords "
        "(10 characters or more) are stored as argon2 hashes.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (
        ("add", "Add a user (asks for the password)."),
        ("passwd", "Set a new password (and optionally role); ends the user's sessions."),
        ("remove", "Remove a user; their sessions end."),
        ("list", "List users and their last login."),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        add_config_option(action)
        if name != "list":
            action.add_argument("username")
        if name in ("add", "passwd"):
            action.add_argument(
                "--role",
                choices=ROLES,
                default="viewer" if name == "add" else None,
                help="viewer (default for add) or admin",
            )
            action.add_argument(
                "--password-stdin",
                action="store_true",
                help="read the password from the first line of standard input",
            )
        action.set_defaults(handler=_users)
