"""Indexes for file searches by semantic type and MIME type (issue 5).

Without them a search for a rare file type reads every file row in time order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_file_record_semantic_time", "file_record",
                    ["semantic_type", "file_time", "file_id"])
    op.create_index("ix_file_record_mime_time", "file_record",
                    ["mime_type", "file_time", "file_id"])


def downgrade() -> None:
    op.drop_index("ix_file_record_mime_time", table_name="file_record")
    op.drop_index("ix_file_record_semantic_time", table_name="file_record")
