"""The import receiver contract: what the server does with what exporters send.

:class:`BaseImportReceiver` is the whole extension contract, for both protocols: every
override point is a method on it, documented here, with when it runs under the legacy
handshake (``legacy-1``, docs/protocol.rst) and under batches (``batch-2``,
docs/batch.rst). The default receiver,
:class:`~meteorpi_server.imports.database_receiver.DatabaseImportReceiver`, is written
against this contract as any user's receiver is, and the protocols use nothing else of
it. Choose the receiver class with the ``receiver`` setting (``module:Class``); both
classes are importable from :mod:`meteorpi_server.receiver`.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, ClassVar, Sequence

from meteorpi_model import FileRecord

from ..config import Config
from ..storage.db import Database
from ..storage.files import FileStore
from .handshake import ImportRequest, Reply

if TYPE_CHECKING:
    from .batch import PlannedEntity


@dataclass(frozen=True)
class ReceiverContext:
    """What a receiver may use: the settings, the database and the file store."""

    config: Config
    database: Database
    files: FileStore


@dataclass
class BatchPlan:
    """A receiver's answer to a batch plan (protocol v2): what it holds, what it needs.

    ``stored``: ids of the planned records held already (each is answered ``stored``, the
    rest ``missing``). ``need_statuses``: camera statuses to send before the records.
    ``need_files``: file id to md5 of the bytes to upload before the records.
    """

    stored: set[uuid.UUID] = field(default_factory=set)
    need_statuses: list[uuid.UUID] = field(default_factory=list)
    need_files: dict[uuid.UUID, str] = field(default_factory=dict)


class BundleWriter:
    """Takes the files of one bundle (protocol v2), one after another, for a receiver.

    :meth:`BaseImportReceiver.open_bundle` makes one per bundle. This default hands each
    file to the receiver's :meth:`~BaseImportReceiver.receive_file_data`, so a receiver
    that only overrides that takes bundles too.
    """

    def __init__(self, receiver: BaseImportReceiver, user: str):
        self.receiver, self.user = receiver, user

    def write(self, file_id: uuid.UUID, md5: str, content: BinaryIO) -> bool:
        """Receive one file's bytes (read ``content`` in pieces); whether they were kept
        (False: they did not match ``md5``)."""
        self.receiver.receive_file_data(file_id, md5, content, self.user)
        return self.receiver.has_file_data(file_id, md5)

    def close(self) -> None:
        """The bundle has ended (or its body broke off): make what was kept durable."""


class BaseImportReceiver:
    """Accepts everything and keeps nothing: every record is ``complete`` at once.

    Subclass it, or the default database receiver, and override what you need. Records
    reach a receiver as :class:`~meteorpi_server.imports.handshake.ImportRequest` objects
    (``entity`` is the parsed model object, ``user`` the authenticated exporter); a
    decision is one of the request's replies (``complete()``, ``need_status()``,
    ``need_file_data(file_id)``, ``continue_()``, ``failed(message)``) or None for the
    default. Receivers are built once per worker and shared by its threads: keep them
    thread-safe.

    Both protocols ask the same questions. The legacy handshake asks about one record at
    a time; a batch asks :meth:`receive_records` and :meth:`receive_statuses` about many
    at once, and those ask :meth:`receive_event`, :meth:`receive_file_record` and
    :meth:`receive_status` about each record, in order. So a receiver that overrides only
    the per-record methods decides alike under both protocols, and a record it refuses
    gets its own result in the batch without failing the others.
    """

    #: Whether exporters may send batches (protocol v2) to this receiver. Every receiver
    #: written against this contract can; set it to False only for one that truly cannot
    #: work in batches: ``GET /import`` then offers the legacy protocol alone, and the
    #: server logs that at start-up.
    batch_protocol: ClassVar[bool] = True

    def __init__(self, context: ReceiverContext):
        self.context = context

    # Records, one at a time -------------------------------------------------------

    def receive_event(self, request: ImportRequest) -> Reply | None:
        """An event, with its files and meta. None means ``complete``.

        Legacy: once for each ``event`` request (and each ``cached_entity`` that resolves
        to one). Batches: once for each event of ``/import/batch/records``, through
        :meth:`receive_records`.
        """
        return None

    def receive_file_record(self, request: ImportRequest) -> Reply | None:
        """A stand-alone file record. None means ``complete``. Asked as
        :meth:`receive_event` is, for ``file`` requests and batched file records."""
        return None

    def receive_status(self, request: ImportRequest) -> Reply | None:
        """A camera status. None means the status is taken.

        Legacy: a status is sent because an earlier reply asked for it, and None answers
        ``continue`` (the exporter goes back to the record that needed it). Batches: once
        for each status of ``/import/batch/statuses``, through :meth:`receive_statuses`;
        None is the result ``stored``, a ``failed`` reply the result ``failed``.
        """
        return None

    # Records, many at a time ------------------------------------------------------

    def receive_records(self, requests: Sequence[ImportRequest]) -> list[Reply | None]:
        """Events and file records, a reply for each, in order.

        Every record passes through here, under both protocols: a legacy request is a
        batch of one. This default asks :meth:`receive_event` or
        :meth:`receive_file_record` about each. Override it to decide on many records at
        once; one record's refusal must not fail the others.
        """
        return [self.receive_event(request) if request.entity_type == "event"
                else self.receive_file_record(request) for request in requests]

    def receive_statuses(self, requests: Sequence[ImportRequest]) -> list[Reply | None]:
        """Camera statuses, a reply for each, in order (a legacy ``status`` request is a
        batch of one). This default asks :meth:`receive_status` about each."""
        return [self.receive_status(request) for request in requests]

    def plan(self, entities: Sequence[PlannedEntity]) -> BatchPlan:
        """Batches only: which of the planned records are held, and what the others need
        (``/import/batch/plan``). Each entity names its type, id, statuses and files.

        The plan only saves round trips: whatever it leaves out, the records step still
        asks for, per record. This default holds nothing and asks for nothing in advance.
        """
        return BatchPlan()

    # File bytes -------------------------------------------------------------------

    def receive_file_data(self, file_id: uuid.UUID, md5: str, content: BinaryIO, user: str) -> None:
        """The bytes of one file, readable from ``content`` (a stream: read it in pieces).

        ``md5`` is the checksum the exporter claims; keep the bytes only if they match.
        Legacy: each ``/import/data/<id>/<md5>`` upload. Batches: each file of a bundle,
        through the default :class:`BundleWriter`. Nothing is returned: a bad upload shows
        up as the record needing its bytes again. Whatever is left unread is discarded.
        """
        return None

    def has_file_data(self, file_id: uuid.UUID, md5: str) -> bool:
        """Whether verified bytes with this md5 are already held for ``file_id``.

        Asked before and during a resumable upload (both protocols): True tells the
        exporter the upload is complete (its last reply may have been lost). The default
        holds nothing.
        """
        return False

    def receive_complete_upload(self, file_id: uuid.UUID, md5: str, path: Path, user: str) -> None:
        """A resumable upload (both protocols) is complete and its md5 verified; its bytes
        are at ``path``.

        The receiver may move the file away (``os.replace``) to keep it; whatever is still
        at ``path`` afterwards is deleted. The default streams it to
        :meth:`receive_file_data`, so a receiver that only overrides that still works.
        """
        with open(path, "rb") as content:
            self.receive_file_data(file_id, md5, content, user)

    def upload_failed(self, file_id: uuid.UUID, md5: str, user: str) -> None:
        """A resumable upload of ``file_id`` ended with bytes whose md5 is not ``md5``; they
        were discarded. The default database receiver counts these towards the
        ``upload_attempts`` rule. The default here does nothing."""
        return None

    def open_bundle(self, user: str) -> BundleWriter:
        """Batches only: a writer for the files of one bundle (``/import/batch/files``).
        The default hands each file to :meth:`receive_file_data`."""
        return BundleWriter(self, user)

    # After storing ----------------------------------------------------------------

    def file_stored(self, record: FileRecord, path: Path | None) -> None:
        """Called once a file record and its verified bytes are both stored.

        A place to start processing a new image or video. ``path`` is where the bytes
        are (read it, do not move it); None when the file store is a bucket (read them
        with ``self.files.open(record.file_id)``). Called after the storing transaction committed,
        once per file (for an event, once for each of its files), under both protocols;
        an exception here is logged and does not affect the import. Only receivers that
        store records call it (the database receiver does).
        """
        return None
