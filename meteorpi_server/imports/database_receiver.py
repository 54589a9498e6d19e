"""The default receiver: records in the database, file bytes in the file store.

It implements :class:`~meteorpi_server.imports.receivers.BaseImportReceiver` and nothing
else, so a subclass can override any hook and both protocols honour it. Its records go
through one path whichever protocol brought them (a legacy request is a batch of one):

1. :meth:`DatabaseImportReceiver.receive_records` reads, for the whole batch at once,
   what the decisions need (:class:`_Holdings`);
2. it asks ``receive_event`` / ``receive_file_record`` about each record, as the contract
   says; this class's own versions apply :func:`decisions.decide` and, for a record that
   can be stored, put it aside and answer ``complete``;
3. the records put aside whose ``complete`` came back unchanged (a subclass may refuse a
   record after asking this class) are stored in one transaction, a few statements for
   all of them, each still atomic: should the bulk insert fail, each is stored in a
   savepoint of its own and a conflicting one alone is answered ``failed``.

The batch in progress is found through a context variable, so the per-record hooks keep
the contract's signatures.
"""
from __future__ import annotations

import contextvars
import logging
import uuid
from collections import defaultdict
from pathlib import Path
from typing import BinaryIO, Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meteorpi_model import CameraStatus, Event, FileRecord, files_of

from .. import protocol
from ..storage import store
from ..storage.blobs import Blobs
from ..storage.files import Md5Mismatch
from . import decisions
from .handshake import ImportRequest, Reply
from .receivers import BaseImportReceiver, BatchPlan, BundleWriter, ReceiverContext

log = logging.getLogger("meteorpi.import")

_record_batch: contextvars.ContextVar[_RecordBatch | None] = contextvars.ContextVar(
    "meteorpi_record_batch", default=None)
_status_batch: contextvars.ContextVar[_StatusBatch | None] = contextvars.ContextVar(
    "meteorpi_status_batch", default=None)


class DatabaseImportReceiver(BaseImportReceiver):
    """Stores what it receives in the database and the file store.

    An event or file record already stored is ``complete``; one whose camera status is
    unknown gets ``need_status``; one whose file bytes are missing gets
    ``need_file_data`` for the first missing file (``failed`` once its uploads failed
    the md5 check ``upload_attempts`` times); otherwise it is stored in one transaction
    with its files and meta. Under protocol v2 a ``complete`` from this class for a new
    record means it passed those checks and is written with its batch; the rare record
    that then conflicts with one stored meanwhile is answered ``failed``.
    """

    def __init__(self, context: ReceiverContext):
        super().__init__(context)
        self.database = context.database
        self.files = context.files
        self.config = context.config
        self.blobs = Blobs(context.database, context.files)

    # Records ---------------------------------------------------------------------

    def receive_records(self, requests: Sequence[ImportRequest]) -> list[Reply | None]:
        return _ask(_record_batch, _RecordBatch(self, requests), super().receive_records)

    def receive_event(self, request: ImportRequest) -> Reply | None:
        return self._decide(request)

    def receive_file_record(self, request: ImportRequest) -> Reply | None:
        return self._decide(request)

    def _decide(self, request: ImportRequest) -> Reply | None:
        batch = _record_batch.get()
        if batch is None or not batch.includes(request):
            # Asked outside receive_records (or about a record it was not given): a batch
            # of its own, so what the decision needs is read for this record too.
            return self.receive_records([request])[0]
        return batch.admit(request)

    # Statuses --------------------------------------------------------------------

    def receive_statuses(self, requests: Sequence[ImportRequest]) -> list[Reply | None]:
        return _ask(_status_batch, _StatusBatch(self, requests), super().receive_statuses)

    def receive_status(self, request: ImportRequest) -> Reply | None:
        batch = _status_batch.get()
        if batch is None or not batch.includes(request):
            return self.receive_statuses([request])[0]
        return batch.admit(request)

    # Plans -----------------------------------------------------------------------

    def plan(self, entities) -> BatchPlan:
        with self.database.read() as session:
            stored = store.stored_record_ids(
                session, [entity.entity_id for entity in entities if entity.entity_type == "event"],
                [entity.entity_id for entity in entities if entity.entity_type == "file"])
            waiting = [entity for entity in entities if entity.entity_id not in stored]
            statuses = store.missing_statuses(
                session, [status_id for entity in waiting for status_id in entity.status_ids])
            wanted = {file_id: md5 for entity in waiting for file_id, md5 in entity.files}
            held = store.blob_md5s(session, wanted)
        return BatchPlan(stored, statuses,
                         {file_id: md5 for file_id, md5 in wanted.items() if held.get(file_id) != md5})

    # File bytes ------------------------------------------------------------------

    def receive_file_data(self, file_id: uuid.UUID, md5: str, content: BinaryIO, user: str) -> None:
        if self.has_file_data(file_id, md5):
            return  # not needed; Blobs.write would find that out again, after the upload
        try:
            stored = self.blobs.write(file_id, content, md5, self.config.max_upload_bytes)
        except Md5Mismatch as mismatch:
            log.warning("upload from %s discarded: %s", user, mismatch)
            self._count_failed_upload(file_id, md5)
            return
        if stored is not None:
            log.info("stored %d bytes for file %s from %s", stored.size, file_id.hex, user)

    def has_file_data(self, file_id: uuid.UUID, md5: str) -> bool:
        with self.database.read() as session:
            return bool(store.file_data_held(session, {file_id: md5}))

    def receive_complete_upload(self, file_id: uuid.UUID, md5: str, path: Path, user: str) -> None:
        size = path.stat().st_size
        if self.blobs.adopt(file_id, md5, path, size):
            log.info("stored %d bytes for file %s from %s (resumable)", size, file_id.hex, user)

    def receive_complete_pending(self, file_id: uuid.UUID, md5: str, pending, user: str) -> bool:
        """Store a finished resumable upload that waits, verified, in the bucket (see
        ``shared_uploads``); False if its bytes were not needed."""
        return self.blobs.publish(pending)

    def upload_failed(self, file_id: uuid.UUID, md5: str, user: str) -> None:
        self._count_failed_upload(file_id, md5)

    # This class's own failures are counted here, not through upload_failed, so a subclass
    # that overrides that hook (to be told of resumable failures) keeps the count right.
    def _count_failed_upload(self, file_id: uuid.UUID, md5: str) -> None:
        with self.database.write() as session:
            store.note_upload_failure(session, file_id, md5, self._attempts_window_start())

    def open_bundle(self, user: str) -> BundleWriter:
        return _BundleWriter(self, user)

    def _attempts_window_start(self) -> int:
        """Failed uploads before this time (ms) no longer count towards upload_attempts."""
        return store.now_ms() - self.config.upload_attempts_window_seconds * 1000

    def _announce_stored_files(self, records: Sequence[FileRecord]) -> None:
        """Call :meth:`file_stored` for each newly stored record, shielding the import
        from the hook's failures."""
        for record in records:
            try:
                self.file_stored(record, self.files.path_for(record.file_id)
                                 if self.files.kind == "local" else None)
            except Exception:  # a user's hook must not turn a stored import into a failure
                log.exception("file_stored hook failed for file %s", record.file_id.hex)


class _Holdings:
    """What the store holds for a batch's records (:class:`decisions.Holdings`), read at
    once; failed uploads are counted and read only for records whose bytes are missing,
    which a batch rarely has."""

    def __init__(self, receiver: DatabaseImportReceiver, entities: Sequence[Event | FileRecord]):
        self.receiver = receiver
        with receiver.database.read() as session:
            self.stored = store.stored_record_ids(
                session, [entity.id for entity in entities if isinstance(entity, Event)],
                [entity.id for entity in entities if isinstance(entity, FileRecord)])
            waiting = [entity for entity in entities if entity.id not in self.stored]
            self.missing_statuses = set(store.missing_statuses(
                session, {status_id for entity in waiting for status_id in decisions.statuses_of(entity)}))
            self.blobs = store.blobs_held(
                session, {record.file_id for entity in waiting for record in files_of(entity)})
        self._counted: set[uuid.UUID] = set()

    def is_stored(self, entity: Event | FileRecord) -> bool:
        return entity.id in self.stored

    def missing_status(self, entity: Event | FileRecord) -> uuid.UUID | None:
        return next((status_id for status_id in decisions.statuses_of(entity)
                     if status_id in self.missing_statuses), None)

    def missing_bytes(self, entity: Event | FileRecord) -> FileRecord | None:
        return next((record for record in files_of(entity)
                     if not store.blob_matches(record, self.blobs.get(record.file_id))), None)

    def failed_uploads(self, record: FileRecord) -> int:
        """Bytes held under another md5 than the record's count as a failed upload each
        time they are found: they matched the md5 of their upload, so they were stored,
        but they will never complete this record."""
        receiver = self.receiver
        held = self.blobs.get(record.file_id)
        if (held is not None and record.md5 is not None and held[0] != record.md5
                and record.file_id not in self._counted):
            log.warning("bytes held for file %s have md5 %s, its record says %s",
                        record.file_id.hex, held[0], record.md5)
            receiver._count_failed_upload(record.file_id, held[0])
            self._counted.add(record.file_id)
        with receiver.database.read() as session:
            return store.recent_upload_failures(session, record.file_id,
                                                receiver._attempts_window_start())

    def forget_failed_uploads(self, file_id: uuid.UUID) -> None:
        with self.receiver.database.write() as session:
            store.reset_upload_failures(session, file_id)


def _ask(current: contextvars.ContextVar, batch: _Batch, ask) -> list[Reply | None]:
    """``ask`` the receiver about ``batch``'s requests, with ``batch`` as ``current``,
    then store what it admitted; the final replies."""
    token = current.set(batch)
    try:
        replies = ask(batch.requests)
    finally:
        current.reset(token)
    return batch.store(list(replies))


class _Batch:
    """Requests the receiver is being asked about, and the replies that admitted some of
    them to be stored; a subclass's ``store(replies)`` stores those and returns the
    final replies."""

    def __init__(self, receiver: DatabaseImportReceiver, requests: Sequence[ImportRequest]):
        self.receiver = receiver
        self.requests = list(requests)
        self._ids = {id(request) for request in self.requests}  # the list keeps them alive
        self._admitted: dict[int, Reply] = {}

    def includes(self, request: ImportRequest) -> bool:
        return id(request) in self._ids

    def _admit(self, request: ImportRequest, state: str) -> Reply:
        # A reply of its own, so _passed_on can tell whether the receiver passed it on.
        reply = self._admitted[id(request)] = Reply(state)
        return reply

    def _passed_on(self, replies: list[Reply | None]) -> list[tuple[int, ImportRequest]]:
        """The admitted requests whose reply came back unchanged: a receiver may still
        refuse a record after asking this class about it."""
        return [(index, request) for index, request in enumerate(self.requests)
                if replies[index] is not None and replies[index] is self._admitted.get(id(request))]


class _RecordBatch(_Batch):
    """The records of one :meth:`DatabaseImportReceiver.receive_records` call."""

    def __init__(self, receiver: DatabaseImportReceiver, requests: Sequence[ImportRequest]):
        super().__init__(receiver, requests)
        self.holdings = _Holdings(receiver, [request.entity for request in self.requests])

    def admit(self, request: ImportRequest) -> Reply | None:
        reply = decisions.decide(request, self.holdings, self.receiver.config.upload_attempts)
        return reply if reply is not None else self._admit(request, protocol.COMPLETE)

    def store(self, replies: list[Reply | None]) -> list[Reply | None]:
        """Store the records passed on; the final replies."""
        ready = self._passed_on(replies)
        if not ready:
            return replies
        with self.receiver.database.write() as session:
            missing = set(store.claim_blobs(
                session, [record for _, request in ready for record in files_of(request.entity)]))
            insertable = []
            for index, request in ready:
                gone = next((record for record in files_of(request.entity)
                             if record.file_id in missing), None)
                if gone is None:
                    insertable.append((index, request))
                else:  # swept since the holdings were read: not a failed upload
                    replies[index] = request.need_file_data(gone.file_id)
            stored_now = self._insert(session, insertable, replies)
        for request in stored_now:
            log.info("stored %s %s from %s", request.entity_type, request.entity_id.hex, request.user)
        # After the commit, so the hook only ever sees records that are really stored.
        self.receiver._announce_stored_files(
            [record for request in stored_now for record in files_of(request.entity)])
        return replies

    def _insert(self, session: Session, ready: list[tuple[int, ImportRequest]],
                replies: list[Reply | None]) -> list[ImportRequest]:
        """Insert the ready records, together if possible; return those stored now."""
        by_source = defaultdict(list)
        for _, request in ready:
            by_source[request.source].append(request.entity)
        try:
            with session.begin_nested():
                for source, entities in by_source.items():
                    store.insert_records(session, entities, source)
        except IntegrityError:
            stored_now = []
            for index, request in ready:
                replies[index], stored = self._store_one(session, request)
                if stored:
                    stored_now.append(request)
            return stored_now
        return [request for _, request in ready]

    def _store_one(self, session: Session, request: ImportRequest) -> tuple[Reply, bool]:
        """The record's reply, and whether this call stored it."""
        entity = request.entity
        if _is_stored(session, entity):
            return request.complete(), False
        missing_status = store.missing_statuses(session, decisions.statuses_of(entity))
        if missing_status:
            return request.need_status(missing_status[0]), False
        try:
            with session.begin_nested():
                if isinstance(entity, Event):
                    missing = store.insert_event(session, entity, request.source)
                else:
                    missing = store.insert_file_record(session, entity, request.source)
                if missing:
                    raise _BytesMissing(missing[0])
        except _BytesMissing as gap:
            return request.need_file_data(gap.file_id), False
        except IntegrityError as error:
            if _is_stored(session, entity):  # another exporter stored it a moment ago
                return request.complete(), False
            log.warning("%s %s conflicts with stored records: %s", request.entity_type,
                        request.entity_id.hex, error.orig)
            return decisions.conflict(request), False
        return request.complete(), True


class _StatusBatch(_Batch):
    """The statuses of one :meth:`DatabaseImportReceiver.receive_statuses` call."""

    def __init__(self, receiver: DatabaseImportReceiver, requests: Sequence[ImportRequest]):
        super().__init__(receiver, requests)
        with receiver.database.read() as session:
            self.missing = set(store.missing_statuses(
                session, [request.entity_id for request in self.requests]))

    def admit(self, request: ImportRequest) -> Reply | None:
        if request.entity_id not in self.missing:
            return None  # held already: taken, once
        return self._admit(request, protocol.CONTINUE)

    def store(self, replies: list[Reply | None]) -> list[Reply | None]:
        """Store the statuses passed on, each once; the final replies."""
        # One of each: the same status twice in a request is stored once.
        ready = {request.entity_id: (index, request) for index, request in self._passed_on(replies)}
        if not ready:
            return replies
        with self.receiver.database.write() as session:
            # In camera lock order, whatever the request's: two exporters sending the same
            # statuses in different orders would otherwise wait for each other for ever.
            # Oldest first within a camera, so the intervals close as they go.
            for index, request in sorted(ready.values(), key=lambda item: _status_order(item[1].entity)):
                try:
                    with session.begin_nested():
                        store.insert_status(session, request.entity, request.source)
                except IntegrityError:
                    # Another exporter (the node's other configuration, say) stored it
                    # since we looked: it is stored, once.
                    if not store.has_status(session, request.entity_id):
                        replies[index] = decisions.conflict(request)
        return replies


class _BundleWriter(BundleWriter):
    """Writes a bundle's files beside their final paths and moves them into place
    together (``files.FileGroup``: one fsync per file, one per directory), recording them
    in one transaction; a file already held is left as it is."""

    def __init__(self, receiver: DatabaseImportReceiver, user: str):
        super().__init__(receiver, user)
        self.group = receiver.files.group()

    def write(self, file_id: uuid.UUID, md5: str, content: BinaryIO) -> bool:
        try:
            self.group.write(file_id, content, md5)
        except Md5Mismatch as mismatch:
            log.warning("bundled upload from %s discarded: %s", self.user, mismatch)
            self.receiver._count_failed_upload(file_id, md5)
            return False
        return True

    def close(self) -> None:
        stored = self.receiver.blobs.commit_group(self.group)
        if stored:
            log.info("stored %d files (%d bytes) from a bundle from %s", len(stored),
                     sum(f.size for f in stored), self.user)


class _BytesMissing(Exception):
    def __init__(self, file_id: uuid.UUID):
        self.file_id = file_id


def _is_stored(session: Session, entity: Event | FileRecord) -> bool:
    if isinstance(entity, Event):
        return store.has_event(session, entity.event_id)
    return store.has_file_record(session, entity.file_id)


def _status_order(status: CameraStatus) -> tuple:
    return (store.status_lock_key(status.camera_id), status.camera_id, status.valid_from,
            status.status_id)
