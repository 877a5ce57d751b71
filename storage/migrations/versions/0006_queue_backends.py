"""Drop scheduler rows that may carry the database password; indexes for the studies list.

Before this revision the retraining schedule's stored job (APScheduler's own table
``apscheduler_jobs``, not part of the models) named the raw database URL, password included.
The job is re-added at every start under a password-masked name, so deleting the stored rows
loses nothing but the secret. The state enums introduced with this revision keep their stored
values, so no data changes otherwise.

Two composite indexes make the filtered studies list and its count index-only lookups on
both backends: current verdicts by outcome, series by modality with their study. On
PostgreSQL, trigram indexes make the studies list's patient search (ID prefix, name
substring) an index lookup instead of a scan of every study. They need the ``pg_trgm``
extension (trusted since PostgreSQL 13: the database owner may create it); where it cannot be
created the indexes are left out and the search still works, only slower.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


TRIGRAM_INDEXES = {
    "ix_study_patient_id_trgm": "patient_id",
    "ix_study_patient_name_trgm": "patient_name",
}


def upgrade() -> None:
    bind = op.get_bind()
    if sa.inspect(bind).has_table("apscheduler_jobs"):
        op.execute("DELETE FROM apscheduler_jobs")
    current = sa.text("is_current")
    with op.batch_alter_table("verdict") as batch_op:
        batch_op.create_index(
            "ix_verdict_current_outcome",
            ["outcome", "study_id"],
            postgresql_where=current,
            sqlite_where=current,
        )
    with op.batch_alter_table("series") as batch_op:
        batch_op.create_index("ix_series_modality_study", ["modality", "study_id"])
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a savepoint: a refused extension must not end the migration
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError:
        return
    for name, column in TRIGRAM_INDEXES.items():
        bind.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS {name} ON study USING gin ({column} gin_trgm_ops)"
        )


def downgrade() -> None:
    # The scheduler rows need no restoring: the schedule is re-added at the next start.
    if op.get_bind().dialect.name == "postgresql":
        for name in TRIGRAM_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_index("ix_series_modality_study")
    with op.batch_alter_table("verdict") as batch_op:
        batch_op.drop_index("ix_verdict_current_outcome")
