"""Export configurations and their persistent tasks (issue 3).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_config",
        sa.Column("config_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=False),
        sa.Column("target_url", sa.String(length=1024), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("password", sa.String(length=1024), nullable=False),
        sa.Column("export_type", sa.String(length=16), nullable=False),
        sa.Column("search", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("target_server_id", sa.Uuid(), nullable=True),
        sa.Column("target_checked_at", sa.BigInteger(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=2048), nullable=True),
        sa.Column("last_success_at", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.String(length=2048), nullable=True),
        sa.Column("last_error_at", sa.BigInteger(), nullable=True),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("config_id", name=op.f("pk_export_config")),
        sa.UniqueConstraint("name", name=op.f("uq_export_config_name")),
    )
    op.create_table(
        "export_task",
        sa.Column("config_id", sa.Uuid(), nullable=False),
        sa.Column("entity_id", sa.Uuid(), nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_time", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.String(length=2048), nullable=True),
        sa.ForeignKeyConstraint(["config_id"], ["export_config.config_id"],
                                name=op.f("fk_export_task_config_id_export_config"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("config_id", "entity_id", name=op.f("pk_export_task")),
    )
    op.create_index("ix_export_task_queue", "export_task",
                    ["config_id", "state", "attempts", "entity_time", "entity_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_export_task_queue", table_name="export_task")
    op.drop_table("export_task")
    op.drop_table("export_config")
