"""Secrets never land in tables: the retraining schedule's job store on PostgreSQL."""

from __future__ import annotations

from apscheduler.executors.debug import DebugExecutor
from sqlalchemy import text

from detector.settings import RetrainSettings
from storage.db import Database
from tamperscan.scheduler import RetrainScheduler
from tests.test_retrain import _ManualScheduler


def test_the_stored_schedule_does_not_carry_the_database_password(postgres_server: object) -> None:
    url = postgres_server.new_database()  # type: ignore[attr-defined]
    secret = "s3cret-Pa55word"
    db = Database(url.replace("postgres@", f"postgres:{secret}@"))  # trust auth ignores it
    db.migrate()
    runs: list[tuple[str, str | None]] = []
    scheduler = RetrainScheduler(
        db,
        RetrainSettings(cron="0 2 * * *"),
        lambda t, a: runs.append((t, a)),
        executor=DebugExecutor(),
        scheduler_class=_ManualScheduler,  # no thread: nothing runs unless the test ticks
    )
    scheduler.start()
    scheduler.run_now("admin", "alice")
    try:
        with db.reading() as session:
            rows = session.execute(text("SELECT id, job_state FROM apscheduler_jobs")).all()
        assert sorted(r.id for r in rows) == ["retrain", "retrain-now"]
        for row in rows:
            assert secret.encode() not in bytes(row.job_state)
        scheduler.scheduler.tick()  # type: ignore[attr-defined]
        assert runs == [("admin", "alice")]  # the stored job, password-free, finds its runner
    finally:
        scheduler.shutdown()
        db.dispose()


def test_migration_0006_removes_schedule_rows_written_before_it(postgres_server: object) -> None:
    from alembic import command
    from alembic.config import Config

    from storage.db import MIGRATIONS_DIR

    url = postgres_server.new_database(migrated=False)  # type: ignore[attr-defined]
    db = Database(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
        connection.execute(
            text("CREATE TABLE apscheduler_jobs (id VARCHAR(191) PRIMARY KEY, job_state BYTEA)")
        )
        connection.execute(text("INSERT INTO apscheduler_jobs VALUES ('retrain', 'pw=x')"))
    db.migrate()
    with db.reading() as session:
        assert session.execute(text("SELECT count(*) FROM apscheduler_jobs")).scalar() == 0
    db.dispose()
