"""Recording a camera's own records on its node: what the camera software (and
``meteorpi demo-data``) calls to store statuses, events and files locally.

Bytes go into the file store first, verified against their md5, and are indexed as a
blob (``blobs.py``); then the record and its meta are stored in one transaction as local
records (no importing user, no origin server), which the exporter later sends on. A
failure leaves no record, at worst bytes no record claims, which ``meteorpi files gc``
removes.
"""
from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path
from typing import Mapping

from sqlalchemy.orm import Session

from meteorpi_model import CameraStatus, Event, FileRecord, md5_file

from ..storage import store
from ..storage.blobs import Blobs
from ..storage.db import Database
from ..storage.files import FileStore, Md5Mismatch, StoredFile


class RecordingError(ValueError):
    """A record cannot be stored as given; the message says why."""


class Recorder:
    """Stores a node's own records in ``database`` and their bytes in ``files``."""

    def __init__(self, database: Database, files: FileStore):
        self.database = database
        self.files = files
        self.blobs = Blobs(database, files)

    def record_status(self, status: CameraStatus) -> None:
        """Store a camera status (raises RecordingError if that status id is taken).

        The camera's current status ends where the new one begins, in the same
        transaction, so a camera has one current status at a time; a status recorded
        late ends where the next one begins (``store.insert_status``).
        """
        with self.database.write() as session:
            if store.has_status(session, status.status_id):
                raise RecordingError(f"status {status.status_id.hex} is already recorded")
            store.insert_status(session, status, store.LOCAL)

    def record_file(self, record: FileRecord, path: str | os.PathLike) -> FileRecord:
        """Store a stand-alone file and its bytes from ``path``; returns the record as
        stored (with its md5 filled in if it had none)."""
        record = self._store_bytes(record, Path(path))
        with self.database.write() as session:
            if store.has_file_record(session, record.file_id):
                raise RecordingError(f"file {record.file_id.hex} is already recorded")
            self._check_status(session, record.status_id)
            _expect_stored(store.insert_file_record(session, record, store.LOCAL))
        return record

    def record_event(self, event: Event, paths: Mapping[uuid.UUID, str | os.PathLike]) -> Event:
        """Store an event with its files, whose bytes are read from ``paths`` (by file id);
        returns the event as stored (with missing md5s filled in)."""
        missing = [record.file_id.hex for record in event.files if record.file_id not in paths]
        if missing:
            raise RecordingError(f"no bytes given for file(s) {', '.join(missing)} of event "
                                 f"{event.event_id.hex}")
        files = [self._store_bytes(record, Path(paths[record.file_id])) for record in event.files]
        event = dataclasses.replace(event, files=files)
        with self.database.write() as session:
            if store.has_event(session, event.event_id):
                raise RecordingError(f"event {event.event_id.hex} is already recorded")
            for status_id in {event.status_id, *(record.status_id for record in files)}:
                self._check_status(session, status_id)
            _expect_stored(store.insert_event(session, event, store.LOCAL))
        return event

    def _store_bytes(self, record: FileRecord, path: Path) -> FileRecord:
        if not path.is_file():
            raise RecordingError(f"the bytes of file {record.file_id.hex} should be at {path}, "
                                 "which is not a file")
        md5 = record.md5 or md5_file(path)
        try:
            with open(path, "rb") as source:
                stored = self.blobs.write(record.file_id, source, md5)
        except Md5Mismatch as error:
            raise RecordingError(f"{path}: {error}") from None
        if stored is None:  # these very bytes are held already (an earlier attempt)
            stored = StoredFile(record.file_id, md5, path.stat().st_size)
        if record.file_size not in (0, stored.size):
            raise RecordingError(f"file {record.file_id.hex} says it has {record.file_size} "
                                 f"bytes, but {path} has {stored.size}")
        return dataclasses.replace(record, md5=stored.md5, file_size=stored.size)

    def _check_status(self, session: Session, status_id: uuid.UUID) -> None:
        if not store.has_status(session, status_id):
            raise RecordingError(f"status {status_id.hex} is not recorded; record the "
                                 "camera's status before its events and files")


def _expect_stored(missing: list[uuid.UUID]) -> None:
    # The bytes were stored a moment ago, and the orphan sweep leaves them for a day.
    if missing:
        raise RecordingError(f"bytes of {', '.join(file_id.hex for file_id in missing)} "
                             "vanished while recording")
