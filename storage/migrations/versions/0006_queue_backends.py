"""Drop scheduler rows that may carry the database password.

Before this revision the retraining schedule's stored job (APScheduler's own table
``apscheduler_jobs``, not part of the models) named the raw database URL, password included.
The job is re-added at every start under a password-masked name, so deleting the stored rows
loses nothing but the secret. The state enums introduced with this revision keep their stored
values, so no data changes otherwise.

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


def upgrade() -> None:
    bind = op.get_bind()
    if sa.inspect(bind).has_table("apscheduler_jobs"):
        op.execute("DELETE FROM apscheduler_jobs")


def downgrade() -> None:
    pass  # nothing to restore: the schedule is re-added at the next start
