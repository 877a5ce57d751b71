"""Admin web report: users, marks on studies and regions, admin-requested regions, list indexes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "mark",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("region_id", sa.Integer(), nullable=True),
        sa.Column("study_version", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["region_id"], ["region.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("mark") as batch_op:
        batch_op.create_index("ix_mark_study_id", ["study_id"], unique=False)
        batch_op.create_index("ix_mark_region_id", ["region_id"], unique=False)
    op.create_table(
        "requested_region",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("radius_px", sa.Float(), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("requested_region") as batch_op:
        batch_op.create_index("ix_requested_region_study_id", ["study_id"], unique=False)
    op.create_index("ix_instance_calling_ae", "instance", ["calling_ae"], unique=False)
    op.create_index("ix_series_modality", "series", ["modality"], unique=False)
    op.create_index("ix_study_patient_id", "study", ["patient_id"], unique=False)
    op.create_index("ix_verdict_outcome", "verdict", ["outcome"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_verdict_outcome", table_name="verdict")
    op.drop_index("ix_study_patient_id", table_name="study")
    op.drop_index("ix_series_modality", table_name="series")
    op.drop_index("ix_instance_calling_ae", table_name="instance")
    op.drop_table("requested_region")
    op.drop_table("mark")
    op.drop_table("app_user")
