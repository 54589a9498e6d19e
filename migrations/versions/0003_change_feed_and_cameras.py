"""Change feed sequence numbers, camera registry and search indexes (issue 5).

Records already stored get sequence numbers in the order they arrived (received_at,
then statuses before events before stand-alone files, then id), and every camera they
name gets a registry row with the times its records arrived.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# (table, index, columns before, columns after) for indexes that gain the record id, so
# searches ordered by (time, id) read them in order.
WIDENED_INDEXES = (
    ("event", "ix_event_camera_time", ["camera_id", "event_time"],
     ["camera_id", "event_time", "event_id"]),
    ("event", "ix_event_time", ["event_time"], ["event_time", "event_id"]),
    ("file_record", "ix_file_record_camera_time", ["camera_id", "file_time"],
     ["camera_id", "file_time", "file_id"]),
)

# (table, index, columns, options). String values are hashed on PostgreSQL, where a
# long value can pass the size limit of a B-tree entry.
HASHED = {"postgresql_using": "hash"}
NEW_INDEXES = (
    ("event", "ix_event_type_time", ["event_type", "event_time", "event_id"], {}),
    ("event", "ix_event_status_id", ["status_id"], {}),
    ("event_meta", "ix_event_meta_key_number", ["key", "number_value"], {}),
    ("event_meta", "ix_event_meta_key_date", ["key", "date_value"], {}),
    ("event_meta", "ix_event_meta_string_value", ["string_value"], HASHED),
    ("file_record", "ix_file_record_time", ["file_time", "file_id"], {}),
    ("file_record", "ix_file_record_status_id", ["status_id"], {}),
    ("file_meta", "ix_file_meta_key_number", ["key", "number_value"], {}),
    ("file_meta", "ix_file_meta_key_date", ["key", "date_value"], {}),
    ("file_meta", "ix_file_meta_string_value", ["string_value"], HASHED),
)

# Every stored record as (type, rank, id, camera, own time, arrival time); files inside
# events belong to their event's change.
ARRIVALS = """
    SELECT 'status' AS entity_type, 0 AS type_rank, status_id AS entity_id, camera_id,
           valid_from AS entity_time, received_at FROM camera_status
    UNION ALL
    SELECT 'event', 1, event_id, camera_id, event_time, received_at FROM event
    UNION ALL
    SELECT 'file', 2, file_id, camera_id, file_time, received_at FROM file_record
     WHERE event_id IS NULL
"""

# Cameras are named by statuses, events and all files (an event's files may name another).
CAMERA_SIGHTINGS = """
    SELECT camera_id, received_at FROM camera_status
    UNION ALL SELECT camera_id, received_at FROM event
    UNION ALL SELECT camera_id, received_at FROM file_record
"""


def upgrade() -> None:
    op.create_table(
        "camera",
        sa.Column("camera_id", sa.String(length=255), nullable=False),
        sa.Column("first_seen", sa.BigInteger(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("camera_id", name=op.f("pk_camera")),
    )
    op.create_table(
        "change",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.Uuid(), nullable=False),
        sa.Column("camera_id", sa.String(length=255), nullable=False),
        sa.Column("entity_time", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_change")),
    )
    with op.batch_alter_table("change") as batch_op:
        batch_op.create_index("ix_change_camera_sequence", ["camera_id", "sequence"], unique=False)
    op.create_table(
        "feed_counter",
        sa.Column("counter_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("counter_id", name=op.f("pk_feed_counter")),
    )

    for table, name, _, after in WIDENED_INDEXES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(name)
            batch_op.create_index(name, after, unique=False)
    for table, name, columns, options in NEW_INDEXES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.create_index(name, columns, unique=False, **options)

    _backfill()


def _backfill() -> None:
    op.execute(f"""
        INSERT INTO change (sequence, entity_type, entity_id, camera_id, entity_time, recorded_at)
        SELECT ROW_NUMBER() OVER (ORDER BY received_at, type_rank, entity_id),
               entity_type, entity_id, camera_id, entity_time, received_at
          FROM ({ARRIVALS}) AS arrivals
    """)
    op.execute("""
        INSERT INTO feed_counter (counter_id, value)
        SELECT 1, COALESCE(MAX(sequence), 0) FROM change
    """)
    op.execute(f"""
        INSERT INTO camera (camera_id, first_seen, last_seen, meta)
        SELECT camera_id, MIN(received_at), MAX(received_at), '{{}}'
          FROM ({CAMERA_SIGHTINGS}) AS sightings
         GROUP BY camera_id
    """)


def downgrade() -> None:
    for table, name, _, _ in reversed(NEW_INDEXES):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(name)
    for table, name, before, _ in reversed(WIDENED_INDEXES):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(name)
            batch_op.create_index(name, before, unique=False)
    op.drop_table("feed_counter")
    with op.batch_alter_table("change") as batch_op:
        batch_op.drop_index("ix_change_camera_sequence")
    op.drop_table("change")
    op.drop_table("camera")
