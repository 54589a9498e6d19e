"""Resumable uploads into a bucket, shared by every host (issue 16).

``resumable_upload`` holds each unfinished upload's multipart upload id, its parts, the
bytes waiting in its tail object, and the md5 state so far, so a chunk may land on any
host and a restart of every host loses no acknowledged chunk.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resumable_upload",
        sa.Column("file_id", sa.Uuid(), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("upload_id", sa.String(length=1024), nullable=True),
        sa.Column("parts", sa.Text(), nullable=False),
        sa.Column("tail_size", sa.BigInteger(), nullable=False),
        sa.Column("md5_state", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "md5", name=op.f("pk_resumable_upload")),
    )
    op.create_index(op.f("ix_resumable_upload_updated_at"), "resumable_upload", ["updated_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_resumable_upload_updated_at"), table_name="resumable_upload")
    op.drop_table("resumable_upload")
