"""What a server sent and received: counters on each export configuration, and the
activity of each user that imports here (issue 13).

``export_config`` gains ``entities_sent``, ``files_sent`` and ``bytes_sent``, which the
exporter adds to in the transaction that records what the target confirmed; they start
at 0 (what was sent before the upgrade is not known).

``node_activity`` holds, per importing user, its first and last import, the server id it
last announced, its totals and its last problem; ``node_activity_hour`` what it sent in
each hour, for the last day's figures (older hours are pruned as new ones begin).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_config") as batch_op:
        batch_op.add_column(sa.Column("entities_sent", sa.BigInteger(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("files_sent", sa.BigInteger(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("bytes_sent", sa.BigInteger(), nullable=False,
                                      server_default="0"))
    op.create_table(
        "node_activity",
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("origin_server", sa.Uuid(), nullable=True),
        sa.Column("first_import_at", sa.BigInteger(), nullable=False),
        sa.Column("last_import_at", sa.BigInteger(), nullable=False),
        sa.Column("entities_total", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("problem_kind", sa.String(length=32), nullable=True),
        sa.Column("problem_message", sa.String(length=2048), nullable=True),
        sa.Column("problem_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("user_name", name=op.f("pk_node_activity")),
    )
    op.create_table(
        "node_activity_hour",
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("hour_start", sa.BigInteger(), nullable=False),
        sa.Column("entities", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("user_name", "hour_start", name=op.f("pk_node_activity_hour")),
    )
    op.create_index("ix_node_activity_hour_hour_start", "node_activity_hour", ["hour_start"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_node_activity_hour_hour_start", table_name="node_activity_hour")
    op.drop_table("node_activity_hour")
    op.drop_table("node_activity")
    with op.batch_alter_table("export_config") as batch_op:
        batch_op.drop_column("bytes_sent")
        batch_op.drop_column("files_sent")
        batch_op.drop_column("entities_sent")
