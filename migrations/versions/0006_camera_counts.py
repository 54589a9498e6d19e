"""Each camera's numbers of events and files, kept as records are stored.

GET /cameras counted them per request, which grows with the tables (a quarter of a
second at a million events). The counts of the records already stored are filled in
here; from now on the transaction that stores a record adds it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("camera") as batch_op:
        batch_op.add_column(sa.Column("event_count", sa.BigInteger(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("file_count", sa.BigInteger(), nullable=False,
                                      server_default="0"))
    op.execute("""
        UPDATE camera SET
            event_count = (SELECT COUNT(*) FROM event
                            WHERE event.camera_id = camera.camera_id),
            file_count = (SELECT COUNT(*) FROM file_record
                           WHERE file_record.camera_id = camera.camera_id)
    """)


def downgrade() -> None:
    with op.batch_alter_table("camera") as batch_op:
        batch_op.drop_column("file_count")
        batch_op.drop_column("event_count")
