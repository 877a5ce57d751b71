"""Admin report speed with many studies: median latency of the studies list and a detail page.

Fills a temporary SQLite database (or, with ``--postgres``, a throwaway PostgreSQL cluster
started from Debian's server binaries as tests/pg_helpers.py does; or ``--database-url``, an
empty database of your own) with N studies (default 100,000; two series, 3 instances,
one current verdict each, every 50th flagged with regions) using bulk inserts, then serves
the pages through the real app (session cookie, login, templates) with FastAPI's TestClient.
Baseline, measured in the same run: the same page of the list fetched directly through
SQLAlchemy (``storage.admin_views.list_studies_page``) without HTTP or rendering.

    .venv/bin/python benchmarks/admin_pages.py [--studies 100000] [--repeat 50]
        [--postgres | --database-url postgresql+psycopg://user:pw@host/empty_db]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event, insert  # noqa: E402

from admin.auth import hash_password  # noqa: E402
from admin.http import create_app  # noqa: E402
from admin.report import AdminReport  # noqa: E402
from admin.settings import AdminSettings  # noqa: E402
from storage import admin_views as q  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.models import Instance, Region, Series, Study, Verdict, utcnow  # noqa: E402
from storage.users import add_user  # noqa: E402


def fill(db: Database, n: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    outcomes = ["clean", "clean", "clean", "not_scored", "suspicious"]
    chunk = 10_000
    with db.engine.begin() as conn:
        for base in range(0, n, chunk):
            ids = range(base + 1, min(n, base + chunk) + 1)
            conn.execute(
                insert(Study),
                [
                    {
                        "id": i,
                        "study_uid": f"1.2.826.0.1.{i}",
                        "patient_id": f"P{i % 20000:06d}",
                        "patient_name": f"DOE^PATIENT{i % 20000}",
                        "study_date": "20260101",
                        "state": "done",
                        "version": 1,
                        "first_received_at": start + timedelta(minutes=i),
                        "last_received_at": start + timedelta(minutes=i),
                    }
                    for i in ids
                ],
            )
            conn.execute(
                insert(Series),
                [
                    {
                        "id": 2 * i + k,
                        "study_id": i,
                        "series_uid": f"1.2.826.0.2.{i}.{k}",
                        "modality": "CT" if i % 3 else "MR",
                        "series_number": k + 1,
                    }
                    for i in ids
                    for k in (0, 1)
                ],
            )
            conn.execute(
                insert(Instance),
                [
                    {
                        "study_id": i,
                        "series_id": 2 * i + (j % 2),
                        "sop_instance_uid": f"1.2.826.0.3.{i}.{j}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "instance_number": j,
                        "file_path": f"x/{i}/{j}.dcm",
                        "size_bytes": 1000,
                        "sha256": "0" * 64,
                        "calling_ae": f"CT{i % 7:02d}",
                        "received_at": start + timedelta(minutes=i),
                    }
                    for i in ids
                    for j in range(3)
                ],
            )
            conn.execute(
                insert(Verdict),
                [
                    {
                        "id": i,
                        "study_id": i,
                        "study_version": 1,
                        "outcome": "tampered" if i % 50 == 0 else outcomes[i % 5],
                        "reason": "bench",
                        "score": 0.5,
                        "is_current": True,
                        "created_at": start + timedelta(minutes=i),
                    }
                    for i in ids
                ],
            )
            conn.execute(
                insert(Region),
                [
                    {
                        "verdict_id": i,
                        "study_id": i,
                        "series_uid": f"1.2.826.0.2.{i}.0",
                        "sop_instance_uid": f"1.2.826.0.3.{i}.{j}",
                        "x": 10 * j,
                        "y": 10,
                        "radius_px": 5.0,
                        "source": "proposal",
                        "scores": {"inpaint": {"raw": 1.0, "p": 0.001, "model": "m"}},
                        "p_value": 0.001 * (j + 1),
                        "flagged": j == 0,
                    }
                    for i in ids
                    if i % 50 == 0
                    for j in range(20)
                ],
            )


class SqlTimer:
    """Milliseconds spent inside the database driver (statement execution), summed."""

    def __init__(self, db: Database) -> None:
        self.ms = 0.0
        event.listen(db.engine, "before_cursor_execute", self._before)
        event.listen(db.engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, params, context, many) -> None:  # noqa: ANN001
        context._bench_t = time.perf_counter()

    def _after(self, conn, cursor, statement, params, context, many) -> None:  # noqa: ANN001
        self.ms += (time.perf_counter() - context._bench_t) * 1000


def median_ms(fn, repeat: int, sql: SqlTimer) -> tuple[float, float]:  # noqa: ANN001
    """Median wall time of ``fn`` and the median time its SQL statements took."""
    fn()  # warm-up
    times, sql_times = [], []
    for _ in range(repeat):
        sql.ms = 0.0
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
        sql_times.append(sql.ms)
    return statistics.median(times), statistics.median(sql_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL cluster")
    backend.add_argument("--database-url", help="an empty database to fill (it is not dropped)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tamperscan-bench-"))
    server = None
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    if args.postgres:
        from tests.pg_helpers import PostgresServer

        server = PostgresServer()
        server.start()
        url = server.new_database(migrated=False)
    db = Database(url)
    db.migrate()
    print(f"database: {db.engine.dialect.name}")
    t = time.perf_counter()
    fill(db, args.studies)
    if db.engine.dialect.name == "postgresql":  # what autovacuum does soon after a bulk load
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    print(f"inserted {args.studies} studies in {time.perf_counter() - t:.1f} s")
    with db.session() as session:
        add_user(session, "bench", hash_password("bench-password"), "viewer", utcnow(), "bench")
    app = create_app()
    report = AdminReport(db, tmp, AdminSettings())
    report.install(app)
    client = TestClient(app)
    login = client.get("/login").text
    token = login.split('name="csrf_token" value="')[1].split('"')[0]
    client.post(
        "/login", data={"username": "bench", "password": "bench-password", "csrf_token": token}
    )

    def direct() -> None:
        with db.reading() as session:
            q.list_studies_page(session, q.StudyFilter())

    def page(url: str):  # noqa: ANN202
        def get() -> None:
            response = client.get(url)
            assert response.status_code == 200, (url, response.status_code)

        return get

    flagged = (args.studies // 50) * 50 or 1
    sql = SqlTimer(db)
    pages = {
        "baseline: list query via SQLAlchemy, no HTTP/rendering": direct,
        "GET /studies (page 1, 50 rows)": page("/studies"),
        "GET /studies?verdict=tampered&modality=CT": page("/studies?verdict=tampered&modality=CT"),
        "GET /studies?patient=P0012&page=3": page("/studies?patient=P0012&page=3"),
        "GET /api/studies": page("/api/studies"),
        f"GET /studies/{flagged} (flagged, 20 regions)": page(f"/studies/{flagged}"),
    }
    results = {name: median_ms(fn, args.repeat, sql) for name, fn in pages.items()}
    baseline = next(iter(results.values()))[0]
    for name, (ms, sql_ms) in results.items():
        print(
            f"{name:<58} median {ms:7.1f} ms (SQL {sql_ms:6.1f} ms)   "
            f"{ms / baseline:5.1f}x baseline"
        )
    db.dispose()
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
