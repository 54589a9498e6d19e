"""The import decisions, written once for both protocols.

Whether an event or file record is stored, needs a camera status, needs file bytes or is
refused is decided here, from what the server holds (a :class:`Holdings`), whichever
protocol brought the record: the legacy handshake asks about one record at a time, a
protocol v2 batch about many, and both get the same answers with the same messages.
"""
from __future__ import annotations

import uuid
from typing import Protocol

from meteorpi_model import Event, FileRecord, files_of

from .handshake import ImportRequest, Reply


class Holdings(Protocol):
    """What the server holds that an import decision depends on."""

    def is_stored(self, entity: Event | FileRecord) -> bool:
        """Whether the record itself is stored already."""

    def missing_status(self, entity: Event | FileRecord) -> uuid.UUID | None:
        """The first camera status the record (or one of its files) names that is not held."""

    def missing_bytes(self, entity: Event | FileRecord) -> FileRecord | None:
        """The first of the record's files whose verified bytes (with its md5) are not held."""

    def failed_uploads(self, record: FileRecord) -> int:
        """How many uploads of ``record``'s bytes failed their md5 check lately."""

    def forget_failed_uploads(self, file_id: uuid.UUID) -> None:
        """Start counting failed uploads of ``file_id`` afresh."""


def decide(request: ImportRequest, holdings: Holdings, upload_attempts: int) -> Reply | None:
    """The reply for an event or file record, or None when it can be stored now.

    In order: stored already, ``complete``; a camera status unknown, ``need_status``; some
    file's bytes missing, ``need_file_data`` for the first (or ``failed``, see
    :func:`bytes_missing`).
    """
    entity = request.entity
    if holdings.is_stored(entity):
        return request.complete()
    status_id = holdings.missing_status(entity)
    if status_id is not None:
        return request.need_status(status_id)
    record = holdings.missing_bytes(entity)
    if record is not None:
        return bytes_missing(request, record, holdings, upload_attempts)
    return None


def bytes_missing(request: ImportRequest, record: FileRecord, holdings: Holdings,
                  upload_attempts: int) -> Reply:
    """Ask for ``record``'s bytes, or answer ``failed`` once their uploads keep failing.

    After ``upload_attempts`` failed uploads the answer is ``failed``, once: it ends this
    exchange, so a node whose file is broken does not upload it for ever, and the count
    starts afresh, so the next exchange asks for the bytes again and a node that has
    mended its file can deliver it.
    """
    failures = holdings.failed_uploads(record)
    if failures < upload_attempts:
        return request.need_file_data(record.file_id)
    holdings.forget_failed_uploads(record.file_id)
    return request.failed(
        f"the bytes uploaded for file {record.file_id.hex} did not match the md5 of its "
        f"record {failures} times; check that file on the camera node (its bytes or its "
        "recorded md5 may be wrong). The next exchange asks for it again.")


def conflict(request: ImportRequest) -> Reply:
    """The reply for a record that cannot be stored beside those already held."""
    why = "" if request.entity_type == "status" else (
        " (a file id in it may belong to another event or file record)")
    return request.failed(f"{request.entity_type} {request.entity_id.hex} conflicts with "
                          f"records already stored{why}")


def statuses_of(entity: Event | FileRecord) -> list[uuid.UUID]:
    """The statuses a record needs: its own, then those its files name, once each."""
    return list(dict.fromkeys([entity.status_id] + [record.status_id for record in files_of(entity)]))
