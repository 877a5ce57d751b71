"""``tamperscan demo`` at CI size: every study it sends ends with a verdict, and it says where
the admin report is and how to log in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.db import Database
from storage.models import Study, Verdict
from storage.users import get_user
from tamperscan.cli import main

pytestmark = pytest.mark.slow
OUTCOMES = ("clean", "suspicious", "tampered")


def test_demo_sends_genuine_and_tampered_studies_and_gets_a_verdict_for_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--dir",
            str(root),
            "--train-studies",
            "3",
            "--slices",
            "6",
            "--image-size",
            "128",
            "--genuine",
            "1",
            "--minutes",
            "0.4",
            "--model-size",
            "tiny",
            "--timeout",
            "120",
            "--exit",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [line for line in out.splitlines() if line.startswith("LAB-CT-")]
    assert len(rows) == 5  # four attacks placed among five studies
    verdicts = [next(w for w in row.split() if w in OUTCOMES) for row in rows]
    assert "genuine" in out and any(" injection" in row for row in rows), out
    login = re.search(r"admin report: http://127\.0\.0\.1:(\d+)/  login: demo / (\S+)", out)
    assert login is not None, out

    db = Database(f"sqlite:///{root / 'data' / 'tamperscan.db'}")
    with db.reading() as session:
        outcomes = session.scalars(
            select(Verdict.outcome).join(Study).where(Verdict.is_current.is_(True))
        ).all()
        assert sorted(outcomes) == sorted(verdicts)
        assert get_user(session, "demo") is not None
    db.dispose()
    assert main(["status", "--config", str(root / "config.toml")]) == 0
