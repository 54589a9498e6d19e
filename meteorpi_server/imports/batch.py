"""Protocol v2: replication in batches (see docs/batch.rst).

One request tells the server a batch of entity ids (with their status ids and file ids
and md5s) and learns what it lacks; statuses and records then travel in bulk, file
bytes in bundles or through the resumable uploads. Every reply has a result per entity,
so one bad entity never fails its batch. This module speaks the protocol and nothing
else: what is held, stored or refused is the receiver's to say, through the hooks of
:class:`~meteorpi_server.imports.receivers.BaseImportReceiver`. No Flask here either:
the blueprint only parses and replies.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from meteorpi_model import (
    CameraStatus,
    Event,
    FileRecord,
    ValidationError,
    parse_id,
    parse_md5,
)

from .. import protocol
from .bundles import BundleEntry, read_bundle
from .activity import BATCH, ImportActivity
from .handshake import ImportRequest, Reply
from .receivers import BaseImportReceiver, BundleWriter

ENTITY_TYPES = {"event": Event, "file": FileRecord}


class BatchError(ValueError):
    """A batch that is malformed as a whole (answered 400); per-entity problems are results."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field




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
    """One entity of a plan request: what it is, and the statuses and files it needs."""

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
    """The server side of protocol v2, over a receiver and the resumable uploads."""

    def __init__(self, receiver: BaseImportReceiver, uploads, max_entities: int,
                 max_file_bytes: int, activity: ImportActivity | None = None):
        self.receiver = receiver
        self.uploads = uploads
        self.max_entities = max_entities
        self.max_file_bytes = max_file_bytes
        self.activity = activity or ImportActivity()

    def _report(self, request: str, results: list[dict], user: str | None = None,
                origin_server: uuid.UUID | None = None) -> None:
        self.activity.batch_size(request, len(results))
        self.activity.replied(BATCH, request, user, origin_server,
                              [(result["type"], result["state"], result.get("message"))
                               for result in results])

    def plan(self, document: Any) -> dict:
        """Which of the listed entities are stored, and what the rest still need."""
        results: list[dict | PlannedEntity] = []
        for index, entry in enumerate(_entries(document, "entities", self.max_entities)):
            try:
                results.append(PlannedEntity.parse(entry, f"entities[{index}]"))
            except ValidationError as error:
                results.append(_result(_text(entry, "type"), _text(entry, "id"), protocol.INVALID,
                                       message=str(error), field=error.path))
        plan = self.receiver.plan([entity for entity in results if isinstance(entity, PlannedEntity)])
        results = [_result(entity.entity_type, entity.entity_id.hex,
                           protocol.STORED if entity.entity_id in plan.stored else protocol.MISSING)
                   if isinstance(entity, PlannedEntity) else entity for entity in results]
        # Not held (the receiver said so): only a partial upload can be there.
        files = [{"file_id": file_id.hex, "md5": md5,
                  "offset": self.uploads.partial_offset(file_id, md5)}
                 for file_id, md5 in plan.need_files.items()]
        self._report("plan", results)
        return {"entities": results,
                "need_statuses": [status_id.hex for status_id in plan.need_statuses],
                "need_files": files}

    # Statuses --------------------------------------------------------------------

    def store_statuses(self, document: Any, user: str, origin_server: uuid.UUID | None) -> dict:
        """Hand each status to the receiver; one it takes (or held already) is 'stored'."""
        results: list[dict | ImportRequest] = []
        for index, entry in enumerate(_entries(document, "statuses", self.max_entities)):
            try:
                status = CameraStatus.from_dict(entry, f"statuses[{index}]")
            except ValidationError as error:
                results.append(_result("status", _text(entry, "status_id"), protocol.INVALID,
                                       message=str(error), field=error.path))
            else:
                results.append(ImportRequest("status", status.status_id, status, user, origin_server))
        requests = [request for request in results if isinstance(request, ImportRequest)]
        replies = iter(self.receiver.receive_statuses(requests))
        results = [_status_result(request, next(replies))
                   if isinstance(request, ImportRequest) else request for request in results]
        self._report("statuses", results, user, origin_server)
        return {"results": results}

    # File bytes in bundles ---------------------------------------------------------

    def store_files(self, stream, user: str, origin_server: uuid.UUID | None = None) -> dict:
        """Hand each file of a bundle (``bundles.read_bundle``) to the receiver's writer.

        Each file is streamed and its md5 checked on its own, as for any upload; what a
        bundle saves is a round trip per file, and whatever the writer shares between its
        files (the database receiver's: an fsync per file and a commit). All of it
        happens before the reply. Files kept before a broken or cut body stay kept: they
        are whole, and the exporter's next plan will not ask for them again.
        """
        results, writer = [], self.receiver.open_bundle(user)
        kept, discarded = [], []
        try:
            for entry in read_bundle(stream, self.max_entities):
                results.append(self._store_bundle_entry(entry, writer))
                state = results[-1]["state"]
                if state in (protocol.STORED, protocol.MD5_MISMATCH):
                    self.activity.bytes_received("bundle", entry.size)
                    if state == protocol.STORED:
                        kept.append(entry.size)
                    else:
                        discarded.append(entry.file_id)
        finally:
            writer.close()
            # Files kept before a broken body are reported too: they are stored.
            self.activity.files_received("bundle", user, origin_server, kept, discarded)
        self._report("files", results)
        return {"results": results}

    def _store_bundle_entry(self, entry: BundleEntry, writer: BundleWriter) -> dict:
        if entry.invalid is not None:
            entry.skip()
            return _result("file_data", "", protocol.INVALID, message=str(entry.invalid),
                           field=entry.invalid.path)
        file_id_text = entry.file_id.hex
        if entry.size > self.max_file_bytes:
            entry.skip()
            return _result("file_data", file_id_text, protocol.TOO_LARGE,
                           message=f"the file is larger than this server's limit of "
                                   f"{self.max_file_bytes} bytes")
        if not writer.write(entry.file_id, entry.md5, entry.content):
            return _result("file_data", file_id_text, protocol.MD5_MISMATCH,
                           message=f"the bytes sent do not have the md5 {entry.md5} and were "
                                   "discarded: check the file on the node and send it again")
        return _result("file_data", file_id_text, protocol.STORED)

    # Records ---------------------------------------------------------------------

    def store_records(self, document: Any, user: str, origin_server: uuid.UUID | None) -> dict:
        """Hand the batch's events and file records to the receiver; a result for each,
        in request order (see :meth:`BaseImportReceiver.receive_records`)."""
        results: list[dict | ImportRequest] = []
        for index, entry in enumerate(_entries(document, "entities", self.max_entities)):
            try:
                entity = _parse_record(entry, f"entities[{index}]")
            except ValidationError as error:
                results.append(_result(_text(entry, "type"), _entity_id_text(entry), protocol.INVALID,
                                       message=str(error), field=error.path))
            else:
                results.append(ImportRequest(entity.ENTITY_TYPE, entity.id, entity, user,
                                             origin_server))
        requests = [request for request in results if isinstance(request, ImportRequest)]
        replies = iter(self.receiver.receive_records(requests))
        results = [_record_result(request, next(replies))
                   if isinstance(request, ImportRequest) else request for request in results]
        self._report("records", results, user, origin_server)
        return {"results": results}


# The replies a batch result carries as they are; another (the legacy handshake's
# 'continue') cannot be followed in a batch.
_RECORD_STATES = protocol.RECORD_STATES - {protocol.INVALID}


def _record_result(request: ImportRequest, reply: Reply | None) -> dict:
    state = protocol.COMPLETE if reply is None else reply.state
    if state in _RECORD_STATES:
        return _result(request.entity_type, request.entity_id.hex, state,
                       **({} if reply is None else reply.fields))
    return _result(request.entity_type, request.entity_id.hex, protocol.FAILED,
                   message=f"the receiver answered '{state}', which a batch cannot follow; "
                           "the next exchange sends the record again")


def _status_result(request: ImportRequest, reply: Reply | None) -> dict:
    if reply is None or reply.state in (protocol.CONTINUE, protocol.COMPLETE):
        return _result("status", request.entity_id.hex, protocol.STORED)
    if reply.state == protocol.FAILED:
        return _result("status", request.entity_id.hex, protocol.FAILED, **reply.fields)
    return _result("status", request.entity_id.hex, protocol.FAILED,
                   message=f"the receiver answered '{reply.state}' for a status")


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
