"""``tamperscan user``: add, passwd, remove, list; passwords only hashed, sessions end on change."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import select

from admin.auth import verify_password
from storage.db import Database
from storage.models import AuditEvent, User
from tamperscan.cli import main
from tests.dicom_helpers import write_config


def _run(config: Path, monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["user", *args[:1], "--config", str(config), *args[1:]])


def test_user_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    config = write_config(tmp_path / "config.toml", 0, tmp_path / "data")
    pw = "correct horse battery\n"
    assert (
        _run(config, monkeypatch, "add", "alice", "--role", "admin", "--password-stdin", stdin=pw)
        == 0
    )
    assert _run(config, monkeypatch, "add", "alice", "--password-stdin", stdin=pw) == 1
    assert "exists already" in capsys.readouterr().err
    assert _run(config, monkeypatch, "add", "bob", "--password-stdin", stdin="short\n") == 1
    assert "too short" in capsys.readouterr().err
    assert _run(config, monkeypatch, "add", "../x", "--password-stdin", stdin=pw) == 1
    db = Database(f"sqlite:///{tmp_path / 'data' / 'tamperscan.db'}")
    with db.reading() as session:
        user = session.scalars(select(User)).one()
    assert user.role == "admin" and user.password_hash.startswith("$argon2id$")
    assert "correct horse" not in user.password_hash
    assert verify_password(user.password_hash, "correct horse battery")
    assert (
        _run(
            config,
            monkeypatch,
            "passwd",
            "alice",
            "--role",
            "viewer",
            "--password-stdin",
            stdin="another good password\n",
        )
        == 0
    )
    with db.reading() as session:
        user = session.scalars(select(User)).one()
    assert user.role == "viewer" and verify_password(user.password_hash, "another good password")
    capsys.readouterr()
    assert _run(config, monkeypatch, "list") == 0
    assert "alice" in capsys.readouterr().out
    assert _run(config, monkeypatch, "remove", "alice") == 0
    assert _run(config, monkeypatch, "remove", "alice") == 1
    with db.reading() as session:
        actions = [e.action for e in session.scalars(select(AuditEvent)).all()]
    db.dispose()
    assert actions == ["user.add", "user.passwd", "user.remove"]


def test_password_is_never_an_argument() -> None:
    from tamperscan.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["user", "add", "alice", "--password", "x"])


def test_changed_password_ends_sessions(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from admin.auth import hash_password
    from storage.models import utcnow
    from storage.users import set_password
    from tamperscan.service import Service
    from tests.admin_helpers import add_test_users
    from tests.conftest import make_settings
    from tests.test_admin_routes import login

    service = Service(make_settings(tmp_path))
    service.settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    service.db.migrate()
    add_test_users(service.db)
    client = TestClient(service.app)
    login(client, "victor")
    assert client.get("/api/studies").status_code == 200
    with service.db.session() as session:
        set_password(session, "victor", hash_password("a brand new password"), utcnow(), "test")
    assert client.get("/api/studies").status_code == 401
    key = service.settings.storage.data_dir / "admin" / "session.key"
    assert key.stat().st_mode & 0o777 == 0o600
    service.db.dispose()
