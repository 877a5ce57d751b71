"""Fixtures: an in-process service on a free loopback port, with a throwaway data folder.

On CI (``CI`` set to anything but empty, ``0`` or ``false``) a skipped test is a failed test:
a peer that ``.ci/system-deps`` should have installed (Orthanc, DCMTK, dicom3tools, chromium)
being absent must turn the run red, not shrink it quietly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tamperscan.config import Settings, load_config
from tamperscan.service import Service
from tests.dicom_helpers import write_config


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and on_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped on CI (CI={os.environ['CI']}), which runs every test: {reason}"


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    path = write_config(tmp_path / "config.toml", 0, tmp_path / "data", **sections)
    return load_config(path, environ={})


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Any]:
    """Start in-process services (port 0 = any free port); all are stopped at the end."""
    started: list[Service] = []

    def start(**sections: dict[str, Any]) -> Service:
        service = Service(make_settings(tmp_path, **sections))
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def service(service_factory: Any) -> Service:
    return service_factory()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the whole session (see tests/pg_helpers.py)."""
    from tests.pg_helpers import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The index database of a test, once on SQLite and once on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'tamperscan.db'}"
    return str(request.getfixturevalue("postgres_server").new_database())
