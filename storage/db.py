"""Engine, sessions and migrations.

Two backends run the same code and the same migrations:

- SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL``, so a committed row
  survives a power cut, and every write transaction starts with ``BEGIN IMMEDIATE``: writers
  queue on the busy timeout instead of failing when a read transaction tries to upgrade.
  Read-only sessions (``Database.reading``) take no lock, so they never hold up ingest.
- PostgreSQL (``postgresql+psycopg://``) for several hosts: READ COMMITTED, and queue claims
  lock their rows with ``FOR UPDATE SKIP LOCKED`` (``skip_locked``) so concurrent workers
  never wait on, or take, the same row. Durability is the server's (``fsync``,
  ``synchronous_commit`` on: a commit returns after the WAL is flushed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x7A3D5C4E  # PostgreSQL advisory lock held while migrating
READ_ONLY = "tamperscan_read_only"  # execution option: a read transaction takes no write lock


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        readonly = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def skip_locked(session: Session, query: Select[Any]) -> Select[Any]:
    """``query`` with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; unchanged on SQLite, where the
    write transaction (``BEGIN IMMEDIATE``) already holds the only write lock."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query


def normalise_url(url: str) -> str:
    """``postgresql://`` (and ``postgres://``) mean psycopg 3, the driver TamperScan ships."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    is_sqlite = url.startswith("sqlite")
    kwargs: dict[str, Any] = {"pool_pre_ping": not is_sqlite}
    if is_sqlite:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (run at every start; a no-op when current)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Workers and receivers starting together: one migrates, the others wait for it.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """One engine and session factory for the whole process."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///") and ":memory:" not in url:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )

    @property
    def safe_url(self) -> str:
        """The URL with any password masked: the only form fit for logs and tables."""
        return self.engine.url.render_as_string(hide_password=True)

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction; it must not write. Loaded objects stay usable afterwards."""
        with self._read_sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
