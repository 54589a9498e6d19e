"""Typed tables. The Alembic migrations in ``migrations/`` are the schema; these must match them.

Times are integer milliseconds since the epoch, as on the wire, so nothing is lost to
time-zone or precision conversions between databases.
"""
from __future__ import annotations

import uuid

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Provenance:
    """Who sent a record, from which server, and when it arrived.

    ``imported_by`` (the exporter's user here) is None for records made locally;
    ``origin_server`` is the sending server's id when its exporter announced one, so the
    record is never exported back to the server it came from.
    """

    imported_by: Mapped[str | None] = mapped_column(String(255))
    origin_server: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    received_at: Mapped[int] = mapped_column(BigInteger)


class CameraStatusRow(Provenance, Base):
    __tablename__ = "camera_status"

    status_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(255))
    valid_from: Mapped[int] = mapped_column(BigInteger)
    valid_to: Mapped[int | None] = mapped_column(BigInteger)
    software_version: Mapped[int] = mapped_column(Integer)
    lens: Mapped[str | None] = mapped_column(String(1024))
    sensor: Mapped[str | None] = mapped_column(String(1024))
    inst_url: Mapped[str | None] = mapped_column(String(1024))
    inst_name: Mapped[str | None] = mapped_column(String(1024))
    latitude: Mapped[float] = mapped_column(Float)
    longitude: Mapped[float] = mapped_column(Float)
    gps: Mapped[bool] = mapped_column(Boolean)
    location_error: Mapped[float] = mapped_column(Float)
    altitude: Mapped[float] = mapped_column(Float)
    azimuth: Mapped[float] = mapped_column(Float)
    orientation_error: Mapped[float] = mapped_column(Float)
    rotation: Mapped[float] = mapped_column(Float)
    width: Mapped[float] = mapped_column(Float)
    # Regions are only ever read whole with their status, so a JSON column beats two tables.
    regions: Mapped[list] = mapped_column(JSON)

    __table_args__ = (Index("ix_camera_status_camera_valid_from", "camera_id", "valid_from"),)


class MetaColumns:
    """One meta entry; exactly one value column is set, chosen by ``value_type``."""

    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(2048))
    value_type: Mapped[str] = mapped_column(String(16))
    string_value: Mapped[str | None] = mapped_column(String(1024))
    number_value: Mapped[float | None] = mapped_column(Float)
    # An int read back as an int: the wire keeps 3 and 3.0 apart, so we do too.
    number_is_int: Mapped[bool | None] = mapped_column(Boolean)
    date_value: Mapped[int | None] = mapped_column(BigInteger)


class EventRow(Provenance, Base):
    __tablename__ = "event"

    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(255))
    event_time: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(2048))
    status_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("camera_status.status_id"))

    files: Mapped[list[FileRecordRow]] = relationship(
        order_by="FileRecordRow.event_position", lazy="selectin")
    meta: Mapped[list[EventMetaRow]] = relationship(
        order_by="EventMetaRow.position", lazy="selectin", cascade="all, delete-orphan")

    # Searches read in (time, id) order, so the id completes each index that orders them.
    __table_args__ = (
        Index("ix_event_camera_time", "camera_id", "event_time", "event_id"),
        Index("ix_event_time", "event_time", "event_id"),
        Index("ix_event_type_time", "event_type", "event_time", "event_id"),
        Index("ix_event_status_id", "status_id"),
    )


class EventMetaRow(MetaColumns, Base):
    __tablename__ = "event_meta"

    event_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("event.event_id", ondelete="CASCADE"), primary_key=True)

    # For meta constraints that few records match. String values get a hash index on
    # PostgreSQL: a 1024-character value can pass the size limit of a B-tree entry there.
    __table_args__ = (
        Index("ix_event_meta_key_number", "key", "number_value"),
        Index("ix_event_meta_key_date", "key", "date_value"),
        Index("ix_event_meta_string_value", "string_value", postgresql_using="hash"),
    )


class FileRecordRow(Provenance, Base):
    __tablename__ = "file_record"

    file_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(255))
    mime_type: Mapped[str] = mapped_column(String(255))
    semantic_type: Mapped[str] = mapped_column(String(2048))
    file_time: Mapped[int] = mapped_column(BigInteger)
    file_size: Mapped[int] = mapped_column(BigInteger)
    status_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("camera_status.status_id"))
    md5: Mapped[str | None] = mapped_column(String(32))
    file_name: Mapped[str | None] = mapped_column(String(255))
    # A file inside an event keeps its place in the event's list; stand-alone files have neither.
    event_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("event.event_id", ondelete="CASCADE"))
    event_position: Mapped[int | None] = mapped_column(Integer)

    meta: Mapped[list[FileMetaRow]] = relationship(
        order_by="FileMetaRow.position", lazy="selectin", cascade="all, delete-orphan")

    __table_args__ = (
        UniqueConstraint("event_id", "event_position"),
        Index("ix_file_record_camera_time", "camera_id", "file_time", "file_id"),
        Index("ix_file_record_time", "file_time", "file_id"),
        Index("ix_file_record_status_id", "status_id"),
        # File searches by type ("every all-sky video") stay index walks, newest first.
        Index("ix_file_record_semantic_time", "semantic_type", "file_time", "file_id"),
        Index("ix_file_record_mime_time", "mime_type", "file_time", "file_id"),
    )


class FileMetaRow(MetaColumns, Base):
    __tablename__ = "file_meta"

    file_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("file_record.file_id", ondelete="CASCADE"), primary_key=True)

    __table_args__ = (
        Index("ix_file_meta_key_number", "key", "number_value"),
        Index("ix_file_meta_key_date", "key", "date_value"),
        Index("ix_file_meta_string_value", "string_value", postgresql_using="hash"),
    )


class StoredBlobRow(Base):
    """Bytes held in the file store, verified against ``md5``.

    Bytes arrive before their file record (the protocol uploads them while the record
    waits in the import cache), so this table has no foreign key to ``file_record``: a
    row without a record is data waiting for it, and is removed once it has waited
    longer than ``orphan_data_seconds``.
    """

    __tablename__ = "stored_blob"

    file_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    md5: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    # Refreshed whenever an import relies on the blob, so the orphan sweep spares it.
    touched_at: Mapped[int] = mapped_column(BigInteger, index=True)


class ResumableUploadRow(Base):
    """A resumable upload into a bucket, shared by every host (``imports/shared_uploads.py``).

    ``offset`` bytes are held: in ``parts`` (JSON: [{"PartNumber": n, "ETag": e}, ...]) of the
    multipart upload ``upload_id`` at the file's key, then ``tail_size`` bytes in the tail
    object of that many parts (under S3's 5 MiB part minimum, waiting for more).
    ``md5_state`` is the whole file's md5 so far (``md5_state.ResumableMd5``), so any host
    can take the next chunk and the last one can verify the file before publishing it.
    """

    __tablename__ = "resumable_upload"

    file_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    md5: Mapped[str] = mapped_column(String(32), primary_key=True)
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger)
    upload_id: Mapped[str | None] = mapped_column(String(1024))
    parts: Mapped[str] = mapped_column(Text)
    tail_size: Mapped[int] = mapped_column(BigInteger)
    md5_state: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[int] = mapped_column(BigInteger, index=True)


class UploadFailureRow(Base):
    """Uploads whose bytes did not match their md5, counted to stop an endless retry loop."""

    __tablename__ = "upload_failure"

    file_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[int] = mapped_column(BigInteger)
    last_failed_at: Mapped[int] = mapped_column(BigInteger)
    last_md5: Mapped[str] = mapped_column(String(32))


class UserRow(Base):
    __tablename__ = "app_user"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(BigInteger)

    roles: Mapped[list[UserRoleRow]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="UserRoleRow.role")


class UserRoleRow(Base):
    __tablename__ = "user_role"

    user_name: Mapped[str] = mapped_column(
        ForeignKey("app_user.name", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)


class ServerInfoRow(Base):
    """Facts about this server kept with its data; ``server_id`` is made by the migration,
    so every host sharing one database is the same server to its peers."""

    __tablename__ = "server_info"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024))


class CameraRow(Base):
    """A camera this server has heard of, kept up to date by every record stored about it.

    ``first_seen`` and ``last_seen`` are when records about it arrived here (ms), not the
    records' own times; ``meta`` is free-form JSON that camera admins attach.
    """

    __tablename__ = "camera"

    camera_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    first_seen: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict] = mapped_column(JSON)
    # Its events, and its files (inside events or not), counted as they are stored (by
    # feed.py's commit hook), so that listing cameras need not count the big tables.
    event_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    file_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ChangeRow(Base):
    """One stored record in the change feed, numbered in commit order.

    ``entity_time`` is the record's own time (an event's or file's time, a status's
    valid_from); ``recorded_at`` is when it was stored here.
    """

    __tablename__ = "change"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entity_type: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    camera_id: Mapped[str] = mapped_column(String(255))
    entity_time: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_change_camera_sequence", "camera_id", "sequence"),)


class FeedCounterRow(Base):
    """The single row holding the last sequence number given to a change.

    Writers increment it in the transaction that stores their record; its row lock makes
    them take numbers in the order they commit (see :mod:`meteorpi_server.storage.feed`).
    """

    __tablename__ = "feed_counter"

    counter_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger)


class ExportConfigRow(Base):
    """An export configuration (see :class:`meteorpi_model.ExportConfiguration`) and the
    state of its target: failures in a row, when to try next, why it was disabled."""

    __tablename__ = "export_config"

    config_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(1024))
    target_url: Mapped[str] = mapped_column(String(1024))
    user_id: Mapped[str] = mapped_column(String(255))
    # Sent to the target as HTTP Basic credentials, so it cannot be kept as a hash.
    password: Mapped[str] = mapped_column(String(1024))
    export_type: Mapped[str] = mapped_column(String(16))
    search: Mapped[dict] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Learned from the target's GET /import; records that came from it are not sent back.
    target_server_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Set once the target has been asked who it is; nothing is marked before that.
    target_checked_at: Mapped[int | None] = mapped_column(BigInteger)
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    disabled_reason: Mapped[str | None] = mapped_column(String(2048))
    last_success_at: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(String(2048))
    last_error_at: Mapped[int | None] = mapped_column(BigInteger)
    # Which exporter process works on this configuration, so two never send the same tasks.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    # What the target confirmed over the configuration's life (entities answered complete,
    # and the files and bytes uploaded for them), added in the transaction that records it.
    entities_sent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    files_sent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (UniqueConstraint("name"),)


class ExportTaskRow(Base):
    """One entity to send to one configuration's target; ``state`` is pending, done or failed."""

    __tablename__ = "export_task"

    config_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("export_config.config_id", ondelete="CASCADE"), primary_key=True)
    entity_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(16))
    # The event's or file's own time: tasks go out in the order the camera made them.
    entity_time: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(String(2048))

    __table_args__ = (
        # The runner's queue, read in this order, and the backlog counts by state.
        Index("ix_export_task_queue", "config_id", "state", "attempts", "entity_time", "entity_id"),
    )


class NodeActivityRow(Base):
    """A user that imports here (a camera node's login): when it first and last imported,
    the server id it last announced (``Meteorpi-Origin``; None from a legacy exporter),
    its totals, and the last problem it met (a refusal, an md5 mismatch). Kept by
    :mod:`meteorpi_server.storage.node_activity`; no foreign key, so the history stays
    when the user is removed."""

    __tablename__ = "node_activity"

    user_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    origin_server: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    first_import_at: Mapped[int] = mapped_column(BigInteger)
    last_import_at: Mapped[int] = mapped_column(BigInteger)
    entities_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    problem_kind: Mapped[str | None] = mapped_column(String(32))
    problem_message: Mapped[str | None] = mapped_column(String(2048))
    problem_at: Mapped[int | None] = mapped_column(BigInteger)


class NodeActivityHourRow(Base):
    """What one importing user sent in one hour (``hour_start``, ms, a multiple of an
    hour): the last 24 hours are summed from these; older ones are pruned."""

    __tablename__ = "node_activity_hour"

    user_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    hour_start: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    entities: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
