"""Checked regions of each verdict, report deliveries, and fixed SR UIDs per verdict.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("verdict") as batch_op:
        batch_op.add_column(sa.Column("sr_series_uid", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sr_sop_instance_uid", sa.String(length=64), nullable=True))
    op.create_table(
        "region",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("verdict_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("radius_px", sa.Float(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("heatmap_path", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"]),
        sa.ForeignKeyConstraint(["verdict_id"], ["verdict.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("region") as batch_op:
        batch_op.create_index("ix_region_verdict_id", ["verdict_id"], unique=False)
        batch_op.create_index("ix_region_study_id", ["study_id"], unique=False)
        batch_op.create_index("ix_region_sop_instance_uid", ["sop_instance_uid"], unique=False)
    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("verdict_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["verdict_id"], ["verdict.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("verdict_id", "destination", name="uq_delivery_verdict_destination"),
    )
    with op.batch_alter_table("delivery") as batch_op:
        batch_op.create_index("ix_delivery_verdict_id", ["verdict_id"], unique=False)
        batch_op.create_index("ix_delivery_state_next", ["state", "next_attempt_at"], unique=False)


def downgrade() -> None:
    op.drop_table("delivery")
    op.drop_table("region")
    with op.batch_alter_table("verdict") as batch_op:
        batch_op.drop_column("sr_sop_instance_uid")
        batch_op.drop_column("sr_series_uid")
