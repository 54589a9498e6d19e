"""Reads and writes of records, taking a SQLAlchemy session (no Flask here).

Functions that write expect to run inside one transaction (``Database.write()``), so a
record and everything it needs are stored together or not at all.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Collection, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from meteorpi_model import (
    CameraStatus,
    Event,
    FileRecord,
    Location,
    Meta,
    NSString,
    Orientation,
    Point,
)

from . import feed
from .orm import (
    CameraStatusRow,
    EventMetaRow,
    EventRow,
    FileMetaRow,
    FileRecordRow,
    ServerInfoRow,
    StoredBlobRow,
    UploadFailureRow,
)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Source:
    """Where a record came from: the exporter's user here and its server, or local."""

    user: str | None = None
    origin_server: uuid.UUID | None = None


LOCAL = Source()


def server_id(session: Session) -> uuid.UUID:
    """This server's identity (made by the migration, shared by every host on the database)."""
    return uuid.UUID(session.scalar(select(ServerInfoRow.value).where(ServerInfoRow.name == "server_id")))


def upsert(session: Session, table, values: dict | list[dict], key: Sequence[str],
           update_columns: Sequence[str]):
    """INSERT, or UPDATE ``update_columns`` when a row with the same ``key`` exists
    (nothing, when there are none).

    ``values`` is one row, or a list of rows sent as one executemany.
    """
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    statement = insert(table)
    if update_columns:
        statement = statement.on_conflict_do_update(
            index_elements=list(key),
            set_={column: getattr(statement.excluded, column) for column in update_columns})
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(key))
    if isinstance(values, dict):
        session.execute(statement.values(**values))
    elif values:
        session.execute(statement, values)


# Existence checks ------------------------------------------------------------------

def has_status(session: Session, status_id: uuid.UUID) -> bool:
    return session.scalar(select(exists().where(CameraStatusRow.status_id == status_id)))


def has_event(session: Session, event_id: uuid.UUID) -> bool:
    return session.scalar(select(exists().where(EventRow.event_id == event_id)))


def has_file_record(session: Session, file_id: uuid.UUID) -> bool:
    return session.scalar(select(exists().where(FileRecordRow.file_id == file_id)))


def stored_record_ids(session: Session, event_ids: Collection[uuid.UUID],
                      file_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these events and stand-alone file records are stored, in a query a kind."""
    stored = set()
    if event_ids:
        stored |= set(session.scalars(select(EventRow.event_id).where(EventRow.event_id.in_(list(event_ids)))))
    if file_ids:
        stored |= set(session.scalars(
            select(FileRecordRow.file_id).where(FileRecordRow.file_id.in_(list(file_ids)))))
    return stored


def file_data_held(session: Session, files: Mapping[uuid.UUID, str]) -> set[uuid.UUID]:
    """Which of ``files`` (id: md5) must not get new bytes: a stored record relies on the
    bytes held for the id, or verified bytes with that md5 wait for their record."""
    if not files:
        return set()
    ids = list(files)
    held = set(session.scalars(select(FileRecordRow.file_id).where(FileRecordRow.file_id.in_(ids))))
    return held | {file_id for file_id, md5 in blob_md5s(session, ids).items() if files[file_id] == md5}


def missing_statuses(session: Session, status_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
    """The ids among ``status_ids`` not stored, in the order given."""
    wanted = list(dict.fromkeys(status_ids))
    found = set(session.scalars(
        select(CameraStatusRow.status_id).where(CameraStatusRow.status_id.in_(wanted))))
    return [status_id for status_id in wanted if status_id not in found]


# Blobs: verified bytes in the file store -------------------------------------------

def blob_matches(record: FileRecord, blob: tuple[str, int] | None) -> bool:
    """Whether the bytes held (md5, size; None for none) are the ones ``record`` names."""
    if blob is None:
        return False
    md5, size = blob
    if record.md5 is not None:
        return record.md5 == md5
    # Without an md5 the size is all a record says of its bytes (0: not known yet).
    return record.file_size in (0, size)


def blob_md5s(session: Session, file_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The md5 of the verified bytes held for each of ``file_ids`` that has any."""
    return {file_id: md5 for file_id, (md5, _) in blobs_held(session, file_ids).items()}


def blobs_held(session: Session, file_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
    """The (md5, size) of the verified bytes held for each of ``file_ids`` that has any."""
    file_ids = list(file_ids)
    if not file_ids:
        return {}
    rows = session.execute(select(StoredBlobRow.file_id, StoredBlobRow.md5, StoredBlobRow.size)
                           .where(StoredBlobRow.file_id.in_(file_ids)))
    return {file_id: (md5, size) for file_id, md5, size in rows}


def files_missing_data(session: Session, records: Sequence[FileRecord]) -> list[uuid.UUID]:
    """Ids of the records whose verified bytes are not (or not with that md5) in the store."""
    stored = blobs_held(session, [record.file_id for record in records])
    return [record.file_id for record in records
            if not blob_matches(record, stored.get(record.file_id))]


def release_blobs(session: Session, files: Mapping[uuid.UUID, str]) -> set[uuid.UUID]:
    """Prepare to put new bytes (id: md5) at their final paths; return the ids to skip.

    Skipped are the ids :func:`file_data_held` names (a stored record relies on their
    bytes, or the same bytes are held). The blob rows of the others are deleted, so no
    record can claim the bytes about to be replaced. The rows are locked first, in id
    order: a record being stored holds them (:func:`claim_blobs`) until it commits, and
    is then seen here.
    """
    ids = sorted(files)
    if not ids:
        return set()
    session.execute(select(StoredBlobRow.file_id).where(StoredBlobRow.file_id.in_(ids))
                    .order_by(StoredBlobRow.file_id).with_for_update())
    keep = file_data_held(session, files)
    replace = [file_id for file_id in ids if file_id not in keep]
    if replace:
        session.execute(delete(StoredBlobRow).where(StoredBlobRow.file_id.in_(replace)))
    return keep


def record_blobs(session: Session, blobs: Sequence[tuple[uuid.UUID, str, int]]) -> None:
    """Note verified bytes for each (file id, md5, size); earlier failed uploads of
    those files are forgotten. Two statements, however many."""
    if not blobs:
        return
    now = now_ms()
    upsert(session, StoredBlobRow,
           [dict(file_id=file_id, md5=md5, size=size, touched_at=now) for file_id, md5, size in blobs],
           key=["file_id"], update_columns=["md5", "size", "touched_at"])
    session.execute(delete(UploadFailureRow)
                    .where(UploadFailureRow.file_id.in_([file_id for file_id, _, _ in blobs])))


def claim_blobs(session: Session, records: Sequence[FileRecord]) -> list[uuid.UUID]:
    """Refresh the blobs ``records`` rely on, inside the storing transaction.

    The update takes the rows' write locks, so the orphan sweep (which deletes only rows
    it finds untouched) either ran before, and the claim sees the blob gone, or runs
    after and sees it fresh. Returns the ids whose bytes turned out to be missing.
    """
    if not records:
        return []
    ids = sorted({record.file_id for record in records})
    # Locked in id order, as release_blobs locks them, so the two never deadlock.
    session.execute(select(StoredBlobRow.file_id).where(StoredBlobRow.file_id.in_(ids))
                    .order_by(StoredBlobRow.file_id).with_for_update())
    session.execute(update(StoredBlobRow).where(StoredBlobRow.file_id.in_(ids))
                    .values(touched_at=now_ms()))
    return files_missing_data(session, records)


def orphan_blob_ids(session: Session, older_than_ms: int) -> list[uuid.UUID]:
    """Blobs no file record uses, untouched since ``older_than_ms``: candidates for
    :func:`delete_orphan_blobs`, which checks again under the placement lock."""
    return list(session.scalars(select(StoredBlobRow.file_id).where(
        StoredBlobRow.touched_at < older_than_ms, _unclaimed())))


def delete_orphan_blobs(session: Session, file_ids: Collection[uuid.UUID],
                        older_than_ms: int) -> list[uuid.UUID]:
    """Delete the rows of those of ``file_ids`` that are still orphans; return their ids.

    The caller removes the files from the store after committing.
    """
    if not file_ids:
        return []
    statement = (delete(StoredBlobRow)
                 .where(StoredBlobRow.file_id.in_(list(file_ids)),
                        StoredBlobRow.touched_at < older_than_ms, _unclaimed())
                 .returning(StoredBlobRow.file_id))
    return list(session.scalars(statement))


def _unclaimed():
    return ~exists().where(FileRecordRow.file_id == StoredBlobRow.file_id)


def known_blob_ids(session: Session, file_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    return set(session.scalars(
        select(StoredBlobRow.file_id).where(StoredBlobRow.file_id.in_(list(file_ids)))))


# Upload failures -------------------------------------------------------------------

def note_upload_failure(session: Session, file_id: uuid.UUID, md5: str,
                        window_start_ms: int) -> None:
    """Count a failed upload of ``file_id``. Failures before ``window_start_ms`` no longer
    count (see :func:`recent_upload_failures`), so a failure after them starts afresh."""
    now = now_ms()
    row = None
    while row is None:
        # The row is made first if need be, so that two failures at once both lock it and
        # count, rather than both inserting it. A good upload committed in between
        # deletes it: then it is made again, and this failure is the first.
        upsert(session, UploadFailureRow, dict(file_id=file_id, attempts=0, first_failed_at=now,
                                               last_failed_at=now, last_md5=md5),
               key=["file_id"], update_columns=[])
        row = session.get(UploadFailureRow, file_id, with_for_update=True, populate_existing=True)
    if row.attempts == 0:
        row.attempts = 1
    elif row.last_failed_at < window_start_ms:
        row.attempts, row.first_failed_at, row.last_failed_at, row.last_md5 = 1, now, now, md5
    else:
        row.attempts += 1
        row.last_failed_at = now
        row.last_md5 = md5


def recent_upload_failures(session: Session, file_id: uuid.UUID, since_ms: int) -> int:
    row = session.get(UploadFailureRow, file_id)
    if row is None or row.last_failed_at < since_ms:
        return 0
    return row.attempts


def reset_upload_failures(session: Session, file_id: uuid.UUID) -> None:
    session.execute(delete(UploadFailureRow).where(UploadFailureRow.file_id == file_id))


# Model <-> rows --------------------------------------------------------------------

def _meta_columns(meta: Meta, position: int) -> dict:
    columns = dict(position=position, key=str(meta.key), value_type=meta.type)
    if meta.type == "string":
        columns["string_value"] = meta.value
    elif meta.type == "number":
        columns["number_value"] = float(meta.value)
        columns["number_is_int"] = isinstance(meta.value, int)
    else:
        columns["date_value"] = meta.value
    return columns


def _meta_from_row(row) -> Meta:
    key = NSString.parse(row.key)
    if row.value_type == "string":
        return Meta(key, "string", row.string_value)
    if row.value_type == "number":
        value = int(row.number_value) if row.number_is_int else row.number_value
        return Meta(key, "number", value)
    return Meta(key, "date", row.date_value)


def _provenance(source: Source, received_at: int) -> dict:
    return dict(imported_by=source.user, origin_server=source.origin_server, received_at=received_at)


def _status_row(status: CameraStatus, source: Source, received_at: int) -> CameraStatusRow:
    return CameraStatusRow(
        status_id=status.status_id, camera_id=status.camera_id,
        valid_from=status.valid_from, valid_to=status.valid_to,
        software_version=status.software_version, lens=status.lens, sensor=status.sensor,
        inst_url=status.inst_url, inst_name=status.inst_name,
        latitude=status.location.lat, longitude=status.location.long,
        gps=status.location.gps, location_error=status.location.error,
        altitude=status.orientation.alt, azimuth=status.orientation.az,
        orientation_error=status.orientation.error, rotation=status.orientation.rot,
        width=status.orientation.width,
        regions=[[{"x": point.x, "y": point.y} for point in region] for region in status.regions],
        **_provenance(source, received_at))


def status_from_row(row: CameraStatusRow) -> CameraStatus:
    return CameraStatus(
        camera_id=row.camera_id, status_id=row.status_id, valid_from=row.valid_from,
        valid_to=row.valid_to, software_version=row.software_version, lens=row.lens,
        sensor=row.sensor, inst_url=row.inst_url, inst_name=row.inst_name,
        location=Location(lat=row.latitude, long=row.longitude, gps=row.gps,
                          error=row.location_error),
        orientation=Orientation(alt=row.altitude, az=row.azimuth, error=row.orientation_error,
                                rot=row.rotation, width=row.width),
        regions=[[Point(point["x"], point["y"]) for point in region] for region in row.regions])


def _file_values(record: FileRecord, source: Source, received_at: int,
                 event_id: uuid.UUID | None = None, position: int | None = None) -> dict:
    return dict(
        file_id=record.file_id, camera_id=record.camera_id, mime_type=record.mime_type,
        semantic_type=str(record.semantic_type), file_time=record.file_time,
        file_size=record.file_size, status_id=record.status_id, md5=record.md5,
        file_name=record.file_name, event_id=event_id, event_position=position,
        **_provenance(source, received_at))


_NO_META_VALUE = dict(string_value=None, number_value=None, number_is_int=None, date_value=None)


def _meta_values(owner_column: str, owner_id: uuid.UUID, metas) -> list[dict]:
    # Every row names every column: an executemany takes its columns from the first row.
    return [{owner_column: owner_id, **_NO_META_VALUE, **_meta_columns(meta, index)}
            for index, meta in enumerate(metas)]


def _insert_rows(session: Session, table, rows: list[dict]) -> None:
    """Core inserts (one executemany a table), not ORM units of work: storing a batch of
    records is a few statements a record, and the ORM would cost several times that."""
    if rows:
        session.execute(insert(table), rows)


def file_record_from_row(row: FileRecordRow) -> FileRecord:
    return _file_record(row, row.meta)


def event_from_row(row: EventRow) -> Event:
    return _event(row, [file_record_from_row(file_row) for file_row in row.files], row.meta)


def _file_record(row, meta_rows) -> FileRecord:
    """A file record from its row and its meta rows (ORM objects or Core rows alike)."""
    return FileRecord(
        file_id=row.file_id, camera_id=row.camera_id, mime_type=row.mime_type,
        semantic_type=NSString.parse(row.semantic_type), file_time=row.file_time,
        file_size=row.file_size, status_id=row.status_id, md5=row.md5,
        file_name=row.file_name, meta=[_meta_from_row(meta) for meta in meta_rows])


def _event(row, files: list[FileRecord], meta_rows) -> Event:
    return Event(
        event_id=row.event_id, camera_id=row.camera_id, event_time=row.event_time,
        event_type=NSString.parse(row.event_type), status_id=row.status_id,
        files=files, meta=[_meta_from_row(meta) for meta in meta_rows])


# Writes ----------------------------------------------------------------------------

def insert_status(session: Session, status: CameraStatus, source: Source = LOCAL) -> None:
    """Store a new camera status; a camera has one status in force at a time.

    Intervals never overlap: a status of the camera from before ``status`` that would
    still be in force when ``status`` begins ends there, and ``status`` ends where the
    camera's next status begins, if that is before its own end. A node ends each status
    where the next begins, so a server ends up with the node's intervals whatever order
    the statuses arrive in, though the protocol never sends a status again once its end
    is known. An end the node gave earlier than that (the camera was off) is kept.

    Writers of one camera's statuses take turns (see :func:`lock_camera_statuses`), or
    two at once would each keep theirs in force.
    """
    lock_camera_statuses(session, status.camera_id)
    received_at = now_ms()
    session.execute(update(CameraStatusRow)
                    .where(CameraStatusRow.camera_id == status.camera_id,
                           CameraStatusRow.valid_from <= status.valid_from,
                           or_(CameraStatusRow.valid_to.is_(None),
                               CameraStatusRow.valid_to > status.valid_from))
                    .values(valid_to=status.valid_from))
    next_from = session.scalar(select(func.min(CameraStatusRow.valid_from)).where(
        CameraStatusRow.camera_id == status.camera_id,
        CameraStatusRow.valid_from > status.valid_from))
    if next_from is not None and (status.valid_to is None or status.valid_to > next_from):
        status = dataclasses.replace(status, valid_to=next_from)
    session.add(_status_row(status, source, received_at))
    session.flush()
    feed.record_arrival(session, "status", status.status_id, status.camera_id,
                        status.valid_from, received_at)


# pg_advisory_xact_lock(class, key) keys: this class is camera statuses; the key a hash of
# the camera id. Locks on other rows (the camera registry's) are taken at commit by every
# writer, so a lock of their own keeps status writers from waiting on those in a cycle.
_STATUS_LOCK_CLASS = 0x6D70  # "mp"


def status_lock_key(camera_id: str) -> int:
    """The advisory lock key of a camera's statuses (a signed 32-bit hash of its id)."""
    digest = hashlib.blake2b(camera_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_camera_statuses(session: Session, camera_id: str) -> None:
    """Wait until no other transaction is writing ``camera_id``'s statuses; held until
    this one ends. A transaction writing several cameras' statuses must take the locks
    in :func:`status_lock_key` order. SQLite needs none: it runs one writer at a time."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_STATUS_LOCK_CLASS,
                                                          status_lock_key(camera_id))))


def insert_event(session: Session, event: Event, source: Source = LOCAL) -> list[uuid.UUID]:
    """Store ``event`` with its files and meta, unless some file's bytes are missing.

    Returns the ids of files whose bytes are missing (nothing is stored then).
    """
    missing = claim_blobs(session, event.files)
    if not missing:
        insert_records(session, [event], source)
    return missing


def insert_file_record(session: Session, record: FileRecord,
                       source: Source = LOCAL) -> list[uuid.UUID]:
    """Store a stand-alone file record; returns ``[file_id]`` if its bytes are missing."""
    missing = claim_blobs(session, [record])
    if not missing:
        insert_records(session, [record], source)
    return missing


def insert_records(session: Session, records: Sequence[Event | FileRecord],
                   source: Source = LOCAL) -> None:
    """Store events (with their files and meta) and stand-alone file records, a few
    statements for all of them.

    The caller has checked what they need: their statuses are stored and
    :func:`claim_blobs` found their files' bytes. A record already stored raises
    IntegrityError, and nothing of the call is then stored.
    """
    received_at = now_ms()
    # In id order: two batches holding the same records in different orders would
    # otherwise each wait on a key the other inserted (a deadlock on PostgreSQL).
    events = sorted((record for record in records if isinstance(record, Event)),
                    key=lambda event: event.event_id)
    standalone = sorted((record for record in records if isinstance(record, FileRecord)),
                        key=lambda record: record.file_id)
    files = [_file_values(record, source, received_at, event.event_id, position)
             for event in events for position, record in enumerate(event.files)]
    files += [_file_values(record, source, received_at) for record in standalone]
    all_files = [record for event in events for record in event.files] + standalone
    # Parents first: the foreign keys point at them.
    _insert_rows(session, EventRow.__table__, [dict(
        event_id=event.event_id, camera_id=event.camera_id, event_time=event.event_time,
        event_type=str(event.event_type), status_id=event.status_id,
        **_provenance(source, received_at)) for event in events])
    _insert_rows(session, EventMetaRow.__table__,
                 [row for event in events for row in _meta_values("event_id", event.event_id, event.meta)])
    _insert_rows(session, FileRecordRow.__table__, files)
    _insert_rows(session, FileMetaRow.__table__,
                 [row for record in all_files for row in _meta_values("file_id", record.file_id, record.meta)])
    # An event's files are part of its change, not changes of their own.
    feed.record_arrivals(session, [
        feed.Arrival("event", event.event_id, event.camera_id, event.event_time,
                     tuple(record.camera_id for record in event.files)) for event in events
    ] + [feed.Arrival("file", record.file_id, record.camera_id, record.file_time)
         for record in standalone], received_at)


# Reads -----------------------------------------------------------------------------

def get_status(session: Session, status_id: uuid.UUID) -> CameraStatus | None:
    row = session.get(CameraStatusRow, status_id)
    return None if row is None else status_from_row(row)


def get_event(session: Session, event_id: uuid.UUID) -> Event | None:
    row = session.get(EventRow, event_id)
    return None if row is None else event_from_row(row)


def get_file_record(session: Session, file_id: uuid.UUID) -> FileRecord | None:
    row = session.get(FileRecordRow, file_id)
    return None if row is None else file_record_from_row(row)


def get_events(session: Session, event_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Event]:
    """The stored ones of ``event_ids``, by id, loaded together for an exporter's batch.

    Core queries (the events, their meta, their files and the files' meta), not the ORM:
    for a batch of 500 events the ORM's identity map and instrumented collections cost
    three times the queries themselves.
    """
    events, meta, file_rows = [], defaultdict(list), []
    for ids in in_slices(event_ids):
        events += session.execute(select(EventRow.__table__).where(EventRow.event_id.in_(ids))).all()
        for row in session.execute(select(EventMetaRow.__table__).where(EventMetaRow.event_id.in_(ids))
                                   .order_by(EventMetaRow.event_id, EventMetaRow.position)):
            meta[row.event_id].append(row)
        file_rows += session.execute(
            select(FileRecordRow.__table__).where(FileRecordRow.event_id.in_(ids))
            .order_by(FileRecordRow.event_id, FileRecordRow.event_position)).all()
    files = defaultdict(list)
    for row, record in zip(file_rows, _file_records(session, file_rows)):
        files[row.event_id].append(record)
    return {row.event_id: _event(row, files[row.event_id], meta[row.event_id]) for row in events}


def get_file_records(session: Session, file_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, FileRecord]:
    """The stored ones of ``file_ids``, by id, loaded together (see :func:`get_events`)."""
    rows = []
    for ids in in_slices(file_ids):
        rows += session.execute(select(FileRecordRow.__table__)
                                .where(FileRecordRow.file_id.in_(ids))).all()
    return {record.file_id: record for record in _file_records(session, rows)}


def _file_records(session: Session, rows) -> list[FileRecord]:
    """File records of Core ``rows`` (in their order), with their meta."""
    meta = defaultdict(list)
    for ids in in_slices([row.file_id for row in rows]):
        for row in session.execute(select(FileMetaRow.__table__).where(FileMetaRow.file_id.in_(ids))
                                   .order_by(FileMetaRow.file_id, FileMetaRow.position)):
            meta[row.file_id].append(row)
    return [_file_record(row, meta[row.file_id]) for row in rows]


def in_slices(ids: Collection[uuid.UUID], size: int = 1000) -> Iterator[list[uuid.UUID]]:
    """``ids`` in lists of ``size``, one per query: an IN list then stays well within
    SQLite's limit of bound parameters."""
    ids = list(ids)
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def count_rows(session: Session) -> dict[str, int]:
    """How many rows each record table holds (for tests, status pages and benchmarks)."""
    tables = {"statuses": CameraStatusRow, "events": EventRow, "files": FileRecordRow,
              "blobs": StoredBlobRow}
    return {name: session.scalar(select(func.count()).select_from(table))
            for name, table in tables.items()}
