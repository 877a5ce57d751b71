"""Regions know their slice (index, position, instance number) and their 3-D finding.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("region") as batch_op:
        batch_op.add_column(sa.Column("slice_index", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("z_mm", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("instance_number", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("finding", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("region") as batch_op:
        batch_op.drop_column("finding")
        batch_op.drop_column("instance_number")
        batch_op.drop_column("z_mm")
        batch_op.drop_column("slice_index")
