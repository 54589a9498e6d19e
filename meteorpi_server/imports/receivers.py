"""Import receivers: what the server does with what exporters send.

:class:`BaseImportReceiver` is the whole extension contract; every override point is a
method on it, documented here. The default :class:`DatabaseImportReceiver` is written
against the same contract as any user's receiver. Choose the receiver class with the
``receiver`` setting (``module:Class``).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meteorpi_model import FileRecord, files_of

from ..config import Config
from ..storage import store
from ..storage.blobs import Blobs
from ..storage.db import Database
from ..storage.files import FileStore, Md5Mismatch
from .handshake import ImportRequest, Reply

log = logging.getLogger("meteorpi.import")


@dataclass(frozen=True)
class ReceiverContext:
    """What a receiver may use: the settings, the database and the file store."""

    config: Config
    database: Database
    files: FileStore


class BaseImportReceiver:
    """Accepts everything and keeps nothing: events and files are 'complete' at once.

    Subclass it and override any of the ``receive_*`` methods. Each gets an
    :class:`~meteorpi_server.imports.handshake.ImportRequest` whose ``entity`` is the parsed
    model object and whose ``user`` is the authenticated exporter, and returns a reply
    made with the request's methods (``complete()``, ``need_status()``,
    ``need_file_data(file_id)``, ``continue_()``, ``failed(message)``) or None for the
    default. Receivers are shared by the threads of a worker: keep them thread-safe.
    """

    def __init__(self, context: ReceiverContext):
        self.context = context

    def receive_event(self, request: ImportRequest) -> Reply | None:
        """An event, with its files and meta. None means ``complete``."""
        return None

    def receive_file_record(self, request: ImportRequest) -> Reply | None:
        """A stand-alone file record. None means ``complete``."""
        return None

    def receive_status(self, request: ImportRequest) -> Reply | None:
        """A camera status, sent because an earlier reply asked for it. None means
        ``continue``: the exporter goes back to the event or file that needed it."""
        return None

    def receive_file_data(self, file_id: uuid.UUID, md5: str, content: BinaryIO, user: str) -> None:
        """The bytes of one file, readable from ``content`` (a stream: read it in pieces).

        ``md5`` is the checksum the exporter claims; keep the bytes only if they match.
        The protocol always answers 'continue' after an upload, so there is nothing to
        return: the exporter asks again, and a bad upload shows up as another
        ``need_file_data``. Whatever is left unread is discarded.
        """
        return None

    def has_file_data(self, file_id: uuid.UUID, md5: str) -> bool:
        """Whether verified bytes with this md5 are already held for ``file_id``.

        Asked when an exporter resumes a chunked upload: True tells it the upload is
        complete (its last reply may have been lost). The default holds nothing.
        """
        return False

    def receive_complete_upload(self, file_id: uuid.UUID, md5: str, path: Path, user: str) -> None:
        """A resumable upload is complete and its md5 verified; its bytes are at ``path``.

        The receiver may move the file away (``os.replace``) to keep it; whatever is still
        at ``path`` afterwards is deleted. The default streams it to
        :meth:`receive_file_data`, so a receiver that only overrides that still works.
        """
        with open(path, "rb") as content:
            self.receive_file_data(file_id, md5, content, user)

    def file_stored(self, record: FileRecord, path: Path | None) -> None:
        """Called once a file record and its verified bytes are both stored.

        A place to start processing a new image or video. ``path`` is where the bytes
        are (read it, do not move it). Called after the storing transaction committed,
        once per file (for an event, once for each of its files); an exception here is
        logged and does not affect the import.
        """
        return None


class DatabaseImportReceiver(BaseImportReceiver):
    """Stores what it receives in the database and the file store (PROTOCOL.md's rules).

    An entity already stored is ``complete``; one whose camera status is unknown gets
    ``need_status``; one whose file bytes are missing gets ``need_file_data`` for the first
    missing file; otherwise it is stored in one transaction with its files and meta.
    """

    def __init__(self, context: ReceiverContext):
        super().__init__(context)
        self.database = context.database
        self.files = context.files
        self.config = context.config
        self.blobs = Blobs(context.database, context.files)

    # Entities --------------------------------------------------------------------

    def receive_event(self, request: ImportRequest) -> Reply | None:
        event = request.entity
        with self.database.read() as session:
            if store.has_event(session, event.event_id):
                return request.complete()
            status_ids = [event.status_id] + [record.status_id for record in event.files]
            missing_status = store.missing_statuses(session, status_ids)
            if missing_status:
                return request.need_status(missing_status[0])
            missing_data = store.files_missing_data(session, event.files)
        if missing_data:
            return self._need_file_data(request, missing_data[0])
        reply = self._store(request, lambda session: store.insert_event(session, event, request.source),
                            lambda session: store.has_event(session, event.event_id))
        if reply is _STORED:
            self.announce_stored_files(event.files)
        return reply

    def receive_file_record(self, request: ImportRequest) -> Reply | None:
        record = request.entity
        with self.database.read() as session:
            if store.has_file_record(session, record.file_id):
                return request.complete()
            if not store.has_status(session, record.status_id):
                return request.need_status()
            missing_data = store.files_missing_data(session, [record])
        if missing_data:
            return self._need_file_data(request, record.file_id)
        reply = self._store(request,
                            lambda session: store.insert_file_record(session, record, request.source),
                            lambda session: store.has_file_record(session, record.file_id))
        if reply is _STORED:
            self.announce_stored_files([record])
        return reply

    def receive_status(self, request: ImportRequest) -> Reply | None:
        status = request.entity
        with self.database.read() as session:
            if store.has_status(session, status.status_id):
                return None

        def insert(session: Session) -> list:
            store.insert_status(session, status, request.source)
            return []

        reply = self._store(request, insert,
                            lambda session: store.has_status(session, status.status_id))
        return None if reply.state == "complete" else reply

    def _store(self, request: ImportRequest, insert: Callable[[Session], list[uuid.UUID]],
               is_stored: Callable[[Session], bool]) -> Reply:
        """Run ``insert`` in one transaction; a concurrent identical import is not an error."""
        try:
            with self.database.write() as session:
                missing = insert(session)
                if missing:
                    raise _BytesMissing(missing[0])
        except _BytesMissing as missing:
            return self._need_file_data(request, missing.file_id)
        except IntegrityError as error:
            # Two exporters sending the same entity at once both pass the existence check;
            # the loser's insert fails on the primary key and finds the winner's row here.
            with self.database.read() as session:
                if is_stored(session):
                    return request.complete()
            log.warning("%s %s conflicts with stored records: %s", request.entity_type,
                        request.entity_id.hex, error.orig)
            return request.failed(
                f"{request.entity_type} {request.entity_id.hex} conflicts with records already "
                "stored (a file id in it may belong to another event or file record)")
        log.info("stored %s %s from %s", request.entity_type, request.entity_id.hex, request.user)
        return _STORED

    def _need_file_data(self, request: ImportRequest, file_id: uuid.UUID) -> Reply:
        """Ask for a file's bytes, or answer ``failed`` once uploads of it keep failing.

        Bytes held under another md5 than the record's count as a failed upload each time
        they are found here: they match the md5 in their upload URL, so they were stored,
        but they will never complete this record, and without counting them the exporter
        would be asked for them for ever.
        """
        expected = _record_md5(request, file_id)
        window_start = self._attempts_window_start()
        with self.database.read() as session:
            held = store.blob_md5(session, file_id)
        if held is not None and expected is not None and held != expected:
            log.warning("bytes held for file %s have md5 %s, its record says %s",
                        file_id.hex, held, expected)
            with self.database.write() as session:
                store.note_upload_failure(session, file_id, held, window_start)
        with self.database.read() as session:
            failures = store.recent_upload_failures(session, file_id, window_start)
        if failures >= self.config.upload_attempts:
            return request.failed(
                f"the bytes uploaded for file {file_id.hex} did not match the md5 of its record "
                f"{failures} times; check that file on the camera node (its bytes or its "
                "recorded md5 may be wrong). It will be asked for again after "
                f"{self.config.upload_attempts_window_seconds} s.")
        return request.need_file_data(file_id)

    # File data -------------------------------------------------------------------

    def receive_file_data(self, file_id: uuid.UUID, md5: str, content: BinaryIO, user: str) -> None:
        if self.has_file_data(file_id, md5):
            return  # not needed; Blobs.write would find that out again, after the upload
        try:
            stored = self.blobs.write(file_id, content, md5, self.config.max_upload_bytes)
        except Md5Mismatch as mismatch:
            log.warning("upload from %s discarded: %s", user, mismatch)
            with self.database.write() as session:
                store.note_upload_failure(session, file_id, md5, self._attempts_window_start())
            return
        if stored is not None:
            log.info("stored %d bytes for file %s from %s", stored.size, file_id.hex, user)

    def _attempts_window_start(self) -> int:
        """Failed uploads before this time (ms) no longer count towards upload_attempts."""
        return store.now_ms() - self.config.upload_attempts_window_seconds * 1000

    def has_file_data(self, file_id: uuid.UUID, md5: str) -> bool:
        with self.database.read() as session:
            return bool(store.file_data_held(session, {file_id: md5}))

    def receive_complete_upload(self, file_id: uuid.UUID, md5: str, path: Path, user: str) -> None:
        size = path.stat().st_size
        if self.blobs.adopt(file_id, md5, path, size):
            log.info("stored %d bytes for file %s from %s (resumable)", size, file_id.hex, user)

    def announce_stored_files(self, records) -> None:
        """Call :meth:`file_stored` for each newly stored record, shielding the caller
        from the hook's failures."""
        for record in records:
            try:
                self.file_stored(record, self.files.path_for(record.file_id))
            except Exception:  # a user's hook must not turn a stored import into a failure
                log.exception("file_stored hook failed for file %s", record.file_id.hex)


def _record_md5(request: ImportRequest, file_id: uuid.UUID) -> str | None:
    """The md5 the request's event or file record gives for ``file_id`` (None if absent)."""
    return next((record.md5 for record in files_of(request.entity)
                 if record.file_id == file_id), None)


# 'complete' because this request stored the entity (not because it was already there).
_STORED = Reply("complete")


class _BytesMissing(Exception):
    def __init__(self, file_id: uuid.UUID):
        self.file_id = file_id
