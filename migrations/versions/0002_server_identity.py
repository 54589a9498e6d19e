"""Server identity, and the origin server of each imported record.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RECORD_TABLES = ("camera_status", "event", "file_record")


def upgrade() -> None:
    server_info = op.create_table(
        "server_info",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_info")),
    )
    op.bulk_insert(server_info, [{"name": "server_id", "value": uuid.uuid4().hex}])
    for table in RECORD_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("origin_server", sa.Uuid(), nullable=True))


def downgrade() -> None:
    for table in RECORD_TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("origin_server")
    op.drop_table("server_info")
