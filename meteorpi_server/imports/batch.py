"""Protocol version 2: replication in batches (see docs/batch.rst).

One request tells the server a batch of entity ids (with their status ids and file ids
and md5s) and learns what it lacks; statuses and records then travel in bulk, each
record stored atomically (a savepoint each, one transaction per batch); file bytes go
through the resumable uploads. Every reply has a result per entity, so one bad entity
never fails its batch. No Flask here: the blueprint only parses and replies.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meteorpi_model import (
    CameraStatus,
    Event,
    FileRecord,
    ValidationError,
    files_of,
    parse_id,
    parse_md5,
)

from ..storage import store
from ..storage.db import Database
from ..storage.files import FileGroup, FileStore, Md5Mismatch
from ..storage.orm import EventRow, FileRecordRow
from .bundles import BundleEntry, read_bundle
from .receivers import DatabaseImportReceiver

log = logging.getLogger("meteorpi.batch")

ENTITY_TYPES = {"event": Event, "file": FileRecord}


class BatchError(ValueError):
    """A batch that is malformed as a whole (answered 400); per-entity problems are results."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


def batch_supported(receiver) -> bool:
    """Whether batches may be offered with this receiver.

    A batch stores records without calling the receiver per entity, so it is offered only
    when the receiver decides exactly as the default database receiver does. A subclass
    that overrides a decision keeps its rules by keeping exporters on the legacy protocol.
    """
    if not isinstance(receiver, DatabaseImportReceiver):
        return False
    decisions = ("receive_event", "receive_file_record", "receive_status", "receive_file_data")
    return all(getattr(type(receiver), name) is getattr(DatabaseImportReceiver, name)
               for name in decisions)


def _entries(document: Any, key: str, limit: int) -> list:
    if not isinstance(document, dict):
        raise BatchError("the request body must be a JSON object")
    entries = document.get(key)
    if not isinstance(entries, list):
        raise BatchError(f"'{key}' must be a list", key)
    if len(entries) > limit:
        raise BatchError(f"a batch holds at most {limit} entries; this one has {len(entries)}", key)
    return entries


def _result(entity_type: str, entity_id: str, state: str, **fields) -> dict:
    return {"type": entity_type, "id": entity_id, "state": state, **fields}


# Plan ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedEntity:
    entity_type: str
    entity_id: uuid.UUID
    status_ids: tuple[uuid.UUID, ...]  # its own, then those its files name
    files: tuple[tuple[uuid.UUID, str], ...]

    @classmethod
    def parse(cls, entry: Any, path: str) -> PlannedEntity:
        if not isinstance(entry, dict):
            raise ValidationError(path, "must be an object")
        entity_type = _entity_type(entry, path)
        entity_id = parse_id(entry.get("id"), f"{path}.id")
        status_ids = [parse_id(entry.get("status_id"), f"{path}.status_id")]
        if entity_type == "file":
            files = ((entity_id, parse_md5(entry.get("md5"), f"{path}.md5")),)
        else:
            listed = entry.get("files", [])
            if not isinstance(listed, list):
                raise ValidationError(f"{path}.files", "must be a list")
            files = []
            for index, item in enumerate(listed):
                item_path = f"{path}.files[{index}]"
                if not isinstance(item, dict):
                    raise ValidationError(item_path, "must be an object")
                files.append((parse_id(item.get("file_id"), f"{item_path}.file_id"),
                              parse_md5(item.get("md5"), f"{item_path}.md5")))
                # Optional: a file made under another status than its event's.
                if item.get("status_id") is not None:
                    status_ids.append(parse_id(item.get("status_id"), f"{item_path}.status_id"))
        return cls(entity_type, entity_id, tuple(dict.fromkeys(status_ids)), tuple(files))


class BatchImporter:
    """The server side of protocol v2 over the database and the file store."""

    def __init__(self, database: Database, receiver: DatabaseImportReceiver, uploads,
                 files: FileStore, max_entities: int, upload_attempts: int,
                 upload_attempts_window_seconds: int, max_file_bytes: int):
        self.database = database
        self.receiver = receiver
        self.uploads = uploads
        self.files = files
        self.blobs = receiver.blobs
        self.max_entities = max_entities
        self.upload_attempts = upload_attempts
        self.attempts_window_ms = upload_attempts_window_seconds * 1000
        self.max_file_bytes = max_file_bytes

    def plan(self, document: Any) -> dict:
        """Which of the listed entities are stored, and what the rest still need."""
        results: list[dict | PlannedEntity] = []
        for index, entry in enumerate(_entries(document, "entities", self.max_entities)):
            try:
                results.append(PlannedEntity.parse(entry, f"entities[{index}]"))
            except ValidationError as error:
                results.append(_result(_text(entry, "type"), _text(entry, "id"), "invalid",
                                       message=str(error), field=error.path))
        planned = [entity for entity in results if isinstance(entity, PlannedEntity)]
        with self.database.read() as session:
            stored = _stored_ids(session, [(entity.entity_type, entity.entity_id)
                                           for entity in planned])
            waiting = [entity for entity in planned if entity.entity_id not in stored]
            statuses = store.missing_statuses(
                session, [status_id for entity in waiting for status_id in entity.status_ids])
            wanted_files = {file_id: md5 for entity in waiting for file_id, md5 in entity.files}
            held = store.blob_md5s(session, wanted_files)
        results = [_result(entity.entity_type, entity.entity_id.hex,
                           "stored" if entity.entity_id in stored else "missing")
                   if isinstance(entity, PlannedEntity) else entity for entity in results]
        files = []
        for file_id, md5 in wanted_files.items():
            if held.get(file_id) == md5:
                continue
            # Not held (the query above said so): only a partial upload can be there.
            files.append({"file_id": file_id.hex, "md5": md5,
                          "offset": self.uploads.partial_offset(file_id, md5)})
        return {"entities": results, "need_statuses": [status_id.hex for status_id in statuses],
                "need_files": files}

    # Statuses --------------------------------------------------------------------

    def store_statuses(self, document: Any, source: store.Source) -> dict:
        """Store each new status; a status already held is simply 'stored'."""
        results: list[dict | CameraStatus] = []
        for index, entry in enumerate(_entries(document, "statuses", self.max_entities)):
            try:
                results.append(CameraStatus.from_dict(entry, f"statuses[{index}]"))
            except ValidationError as error:
                results.append(_result("status", _text(entry, "status_id"), "invalid",
                                       message=str(error), field=error.path))
        parsed = {status.status_id: status for status in results if isinstance(status, CameraStatus)}
        with self.database.write() as session:
            # In camera lock order, whatever the request's: two exporters sending the same
            # statuses in different orders would otherwise wait for each other for ever.
            # Oldest first within a camera, so the intervals close as they go.
            for status_id in sorted(store.missing_statuses(session, parsed),
                                    key=lambda status_id: _status_order(parsed[status_id])):
                try:
                    with session.begin_nested():
                        store.insert_status(session, parsed[status_id], source)
                except IntegrityError:
                    # Another exporter (the node's other configuration, say) stored it
                    # since we looked: it is stored, once. Anything else is a real error.
                    if not store.has_status(session, status_id):
                        raise
        return {"results": [_result("status", status.status_id.hex, "stored")
                            if isinstance(status, CameraStatus) else status
                            for status in results]}

    # File bytes in bundles ---------------------------------------------------------

    def store_files(self, stream, user: str) -> dict:
        """Store each file of a bundle (``bundles.read_bundle``) whose bytes match its md5.

        Each file is streamed to disk and its md5 checked on its own, as for any upload;
        what a bundle saves is a round trip per file, an fsync per file and per directory
        (the files are made durable together, ``files.FileGroup``) and a commit per file
        (the blobs are recorded in one transaction). All of it happens before the reply.
        Files verified before a broken or cut body are kept and recorded: they are whole,
        and the exporter's next plan will not ask for them again.
        """
        results, group = [], self.files.group()
        try:
            for entry in read_bundle(stream, self.max_entities):
                results.append(self._store_bundle_entry(entry, user, group))
        finally:
            self._commit_bundle(group, user)
        return {"results": results}

    def _store_bundle_entry(self, entry: BundleEntry, user: str, group: FileGroup) -> dict:
        if entry.invalid is not None:
            entry.skip()
            return _result("file_data", "", "invalid", message=str(entry.invalid),
                           field=entry.invalid.path)
        file_id_text = entry.file_id.hex
        if entry.size > self.max_file_bytes:
            entry.skip()
            return _result("file_data", file_id_text, "too_large",
                           message=f"the file is larger than this server's limit of "
                                   f"{self.max_file_bytes} bytes")
        try:
            group.write(entry.file_id, entry.content, entry.md5)
        except Md5Mismatch as mismatch:
            with self.database.write() as session:
                store.note_upload_failure(session, entry.file_id, entry.md5,
                                         store.now_ms() - self.attempts_window_ms)
            log.warning("bundled upload from %s discarded: %s", user, mismatch)
            return _result("file_data", file_id_text, "md5_mismatch",
                           message=f"{mismatch}; the bytes were discarded: check the file on "
                                   "the node and send it again")
        return _result("file_data", file_id_text, "stored")

    def _commit_bundle(self, group: FileGroup, user: str) -> None:
        """Move the bundle's verified files into place and record them, all but those whose
        bytes are held already (looked up for the whole bundle at once): bytes a stored
        record relies on are never replaced."""
        stored = self.blobs.commit_group(group)
        if stored:
            log.info("stored %d files (%d bytes) from a bundle from %s", len(stored),
                     sum(f.size for f in stored), user)

    # Records ---------------------------------------------------------------------

    def store_records(self, document: Any, source: store.Source) -> dict:
        """Store each record whose status and file bytes are all held, atomically each.

        One transaction for the batch. What every record needs is looked up for the whole
        batch at once, and the records that have it are inserted together, a few
        statements for all of them, in a savepoint. Should that fail (a record stored by
        another exporter a moment ago, a file id claimed twice), each is stored again in
        a savepoint of its own, so one bad record never takes the others with it.
        """
        results: dict[int, dict] = {}
        parsed: list[tuple[int, Event | FileRecord]] = []
        for index, entry in enumerate(_entries(document, "entities", self.max_entities)):
            try:
                parsed.append((index, _parse_record(entry, f"entities[{index}]")))
            except ValidationError as error:
                results[index] = _result(_text(entry, "type"), _entity_id_text(entry), "invalid",
                                         message=str(error), field=error.path)
        with self.database.write() as session:
            ready = self._ready_records(session, parsed, results)
            stored_now = self._insert_ready(session, ready, source, results)
        # After the commit, so the hook only ever sees records that are really stored.
        self.receiver.announce_stored_files(
            [record for entity in stored_now for record in files_of(entity)])
        return {"results": [results[index] for index in sorted(results)]}

    def _ready_records(self, session: Session, parsed: list[tuple[int, Event | FileRecord]],
                       results: dict[int, dict]) -> list[tuple[int, Event | FileRecord]]:
        """The records that can be stored now; a result for each of the others."""
        entities = [entity for _, entity in parsed]
        stored = _stored_ids(session, [(entity.ENTITY_TYPE, entity.id) for entity in entities])
        missing_statuses = set(store.missing_statuses(
            session, {status_id for entity in entities for status_id in _statuses_of(entity)}))
        waiting = [entity for entity in entities if entity.id not in stored
                   and not missing_statuses.intersection(_statuses_of(entity))]
        missing_files = set(store.claim_blobs(
            session, [record for entity in waiting for record in files_of(entity)]))
        ready = []
        for index, entity in parsed:
            entity_type, entity_id = entity.ENTITY_TYPE, entity.id.hex
            lacking_status = [status_id for status_id in _statuses_of(entity)
                              if status_id in missing_statuses]
            lacking_file = [record.file_id for record in files_of(entity)
                            if record.file_id in missing_files]
            if entity.id in stored:
                results[index] = _result(entity_type, entity_id, "complete")
            elif lacking_status:
                results[index] = _result(entity_type, entity_id, "need_status",
                                         status_id=lacking_status[0].hex)
            elif lacking_file:
                results[index] = self._need_file_data(session, entity_type, entity_id,
                                                      lacking_file[0])
            else:
                ready.append((index, entity))
        return ready

    def _insert_ready(self, session: Session, ready: list[tuple[int, Event | FileRecord]],
                      source: store.Source, results: dict[int, dict]) -> list[Event | FileRecord]:
        """Insert the ready records, together if possible; return those stored now."""
        try:
            with session.begin_nested():
                store.insert_records(session, [entity for _, entity in ready], source)
        except IntegrityError:
            stored_now = []
            for index, entity in ready:
                results[index], stored = self._store_one(session, entity, source)
                if stored:
                    stored_now.append(entity)
            return stored_now
        for index, entity in ready:
            results[index] = _result(entity.ENTITY_TYPE, entity.id.hex, "complete")
        return [entity for _, entity in ready]

    def _store_one(self, session: Session, entity: Event | FileRecord,
                   source: store.Source) -> tuple[dict, bool]:
        """The entity's result, and whether this call stored it."""
        entity_type, entity_id = entity.ENTITY_TYPE, entity.id.hex
        if _is_stored(session, entity):
            return _result(entity_type, entity_id, "complete"), False
        missing_status = store.missing_statuses(session, _statuses_of(entity))
        if missing_status:
            return _result(entity_type, entity_id, "need_status",
                           status_id=missing_status[0].hex), False
        try:
            with session.begin_nested():
                if isinstance(entity, Event):
                    missing = store.insert_event(session, entity, source)
                else:
                    missing = store.insert_file_record(session, entity, source)
                if missing:
                    raise _BytesMissing(missing[0])
        except _BytesMissing as gap:
            return self._need_file_data(session, entity_type, entity_id, gap.file_id), False
        except IntegrityError:
            if _is_stored(session, entity):  # another exporter stored it a moment ago
                return _result(entity_type, entity_id, "complete"), False
            return _result(entity_type, entity_id, "failed",
                           message=f"{entity_type} {entity_id} conflicts with records already "
                                   "stored (a file id in it may belong to another record)"), False
        return _result(entity_type, entity_id, "complete"), True

    def _need_file_data(self, session: Session, entity_type: str, entity_id: str,
                        file_id: uuid.UUID) -> dict:
        failures = store.recent_upload_failures(session, file_id,
                                                store.now_ms() - self.attempts_window_ms)
        if failures >= self.upload_attempts:
            return _result(entity_type, entity_id, "failed",
                           message=f"the bytes uploaded for file {file_id.hex} did not match "
                                   f"their md5 {failures} times; check that file on the node")
        return _result(entity_type, entity_id, "need_file_data", file_id=file_id.hex)


class _BytesMissing(Exception):
    def __init__(self, file_id: uuid.UUID):
        self.file_id = file_id


def _text(entry: Any, key: str) -> str:
    value = entry.get(key) if isinstance(entry, dict) else None
    return value if isinstance(value, str) else ""


def _entity_id_text(entry: Any) -> str:
    if not isinstance(entry, dict):
        return ""
    body = entry.get(_text(entry, "type"))
    return _text(body, "event_id") or _text(body, "file_id")


def _parse_record(entry: Any, path: str) -> Event | FileRecord:
    if not isinstance(entry, dict):
        raise ValidationError(path, "must be an object")
    entity_type = _entity_type(entry, path)
    return ENTITY_TYPES[entity_type].from_dict(entry.get(entity_type), f"{path}.{entity_type}")


def _entity_type(entry: dict, path: str) -> str:
    entity_type = entry.get("type")
    if not isinstance(entity_type, str) or entity_type not in ENTITY_TYPES:
        raise ValidationError(f"{path}.type", "must be 'event' or 'file'")
    return entity_type


def _is_stored(session: Session, entity: Event | FileRecord) -> bool:
    if isinstance(entity, Event):
        return store.has_event(session, entity.event_id)
    return store.has_file_record(session, entity.file_id)


def _statuses_of(entity: Event | FileRecord) -> list[uuid.UUID]:
    """The statuses a record needs: its own, and those its files name, once each."""
    return list(dict.fromkeys([entity.status_id] + [record.status_id for record in files_of(entity)]))


def _stored_ids(session: Session, typed_ids: Iterable[tuple[str, uuid.UUID]]) -> set[uuid.UUID]:
    """Which of these (entity type, id) are stored, in one query a type."""
    typed_ids = list(typed_ids)
    events = [entity_id for entity_type, entity_id in typed_ids if entity_type == "event"]
    files = [entity_id for entity_type, entity_id in typed_ids if entity_type == "file"]
    stored = set()
    if events:
        stored |= set(session.scalars(select(EventRow.event_id).where(EventRow.event_id.in_(events))))
    if files:
        stored |= set(session.scalars(
            select(FileRecordRow.file_id).where(FileRecordRow.file_id.in_(files))))
    return stored


def _status_order(status: CameraStatus) -> tuple:
    return (store.status_lock_key(status.camera_id), status.camera_id, status.valid_from,
            status.status_id)
