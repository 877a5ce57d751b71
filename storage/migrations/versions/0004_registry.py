"""Scheduled retraining: training runs, the model registry, and the run lock row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("budget", sa.JSON(), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("training_run") as batch_op:
        batch_op.create_index("ix_training_run_state", ["state"], unique=False)
        batch_op.create_index("ix_training_run_started_at", ["started_at"], unique=False)
    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("detector", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("checkpoint_path", sa.String(length=512), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("promoted_at", sa.DateTime(), nullable=True),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["parent_id"], ["model_version.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["training_run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_version") as batch_op:
        batch_op.create_index("ix_model_version_run_id", ["run_id"], unique=False)
        batch_op.create_index(
            "ix_model_version_slot", ["detector", "modality", "state"], unique=False
        )
    lock = op.create_table(
        "retrain_lock",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("acquired_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["training_run.id"]),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(lock, [{"name": "retrain"}])


def downgrade() -> None:
    op.drop_table("retrain_lock")
    op.drop_table("model_version")
    op.drop_table("training_run")
