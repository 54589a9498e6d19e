"""The node's own records as the handshake driver reads them: entities, statuses, bytes."""
from __future__ import annotations

import uuid
from typing import BinaryIO, Collection

from sqlalchemy import func, or_, select

from meteorpi_model import CameraStatus, Event, FileRecord, files_of

from ..storage import store
from ..storage.db import Database
from ..storage.files import FileStore
from ..storage.orm import ExportTaskRow, FileRecordRow
from .tasks import PENDING


class StoreSource:
    """An :class:`~meteorpi_server.exporter.handshake.EntitySource` over this node's
    database and file store."""

    def __init__(self, database: Database, files: FileStore):
        self.database = database
        self.files = files

    def status(self, status_id: uuid.UUID) -> CameraStatus | None:
        with self.database.read() as session:
            return store.get_status(session, status_id)

    def open_file(self, record: FileRecord) -> BinaryIO | None:
        try:
            return self.files.open(record.file_id)
        except FileNotFoundError:
            return None

    def entity(self, entity_type: str, entity_id: uuid.UUID) -> Event | FileRecord | None:
        """The event or stand-alone file a task names, or None if it is gone."""
        with self.database.read() as session:
            if entity_type == "event":
                return store.get_event(session, entity_id)
            return store.get_file_record(session, entity_id)

    def entities(self, wanted: Collection[tuple[str, uuid.UUID]]) -> dict[uuid.UUID, Event | FileRecord]:
        """The events and stand-alone files named by (type, id) pairs that are still here,
        by id, loaded in one transaction with a few queries a type."""
        event_ids = [entity_id for entity_type, entity_id in wanted if entity_type == "event"]
        file_ids = [entity_id for entity_type, entity_id in wanted if entity_type != "event"]
        with self.database.read() as session:
            found: dict[uuid.UUID, Event | FileRecord] = {}
            if event_ids:
                found.update(store.get_events(session, event_ids))
            if file_ids:
                found.update(store.get_file_records(session, file_ids))
            return found


def pending_bytes(database: Database, config_id: uuid.UUID, due_by: int | None = None) -> int:
    """Bytes of the files of a configuration's pending tasks (due by ``due_by``, if given),
    for a progress bar's total."""
    pending = (select(ExportTaskRow.entity_id)
               .where(ExportTaskRow.config_id == config_id, ExportTaskRow.state == PENDING))
    if due_by is not None:
        pending = pending.where(ExportTaskRow.next_attempt_at <= due_by)
    with database.read() as session:
        return session.scalar(
            select(func.coalesce(func.sum(FileRecordRow.file_size), 0))
            .where(or_(FileRecordRow.event_id.in_(pending), FileRecordRow.file_id.in_(pending))))


def entity_bytes(entity: Event | FileRecord) -> int:
    return sum(record.file_size for record in files_of(entity))
