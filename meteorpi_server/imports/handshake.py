"""The /import handshake (docs/protocol.rst): requests, replies, and the entity cache.

This module knows the protocol, not storage: it turns a request document into an
:class:`ImportRequest`, hands it to a receiver (see :mod:`meteorpi_server.imports.receivers`), and
turns the receiver's decision into one of the protocol's replies.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Union

from meteorpi_model import CameraStatus, Event, FileRecord, ValidationError, parse_id

from .. import protocol
from ..storage.store import Source
from .activity import LEGACY, ImportActivity

log = logging.getLogger("meteorpi.import")

Entity = Union[Event, FileRecord, CameraStatus]
ENTITY_CLASSES: dict[str, type] = {"event": Event, "file": FileRecord, "status": CameraStatus}


def _preview(value: Any, limit: int = 40) -> str:
    """A short description of a bad value: replies must not echo a request's bulk."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ProtocolError(ValueError):
    """A request that does not follow the protocol; answered with 400 and ``message``."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Reply:
    """One protocol reply: ``state`` plus the fields that state carries."""

    state: str
    fields: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, str]:
        return {"state": self.state, **self.fields}


COMPLETE = Reply(protocol.COMPLETE)
CONTINUE = Reply(protocol.CONTINUE)
CONTINUE_NOCACHE = Reply(protocol.CONTINUE_NOCACHE)


class EntityCache:
    """A bounded, thread-safe LRU map from (user, entity id) to a parsed entity.

    Keyed by user as well as id, so one exporter's ``cached_entity`` can never resolve to
    what another exporter sent.
    """

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, uuid.UUID], Entity] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, user: str, entity: Entity) -> None:
        key = (user, entity.id)
        with self._lock:
            self._entries[key] = entity
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, user: str, entity_id: uuid.UUID) -> Entity | None:
        key = (user, entity_id)
        with self._lock:
            entity = self._entries.get(key)
            if entity is not None:
                self._entries.move_to_end(key)
            return entity

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class ImportRequest:
    """One POST /import, resolved to its entity (None when a cached entity was not found).

    Receivers decide by returning one of the reply methods below.
    """

    entity_type: str
    entity_id: uuid.UUID
    entity: Entity | None
    user: str
    origin_server: uuid.UUID | None = None

    @property
    def source(self) -> Source:
        return Source(self.user, self.origin_server)

    @classmethod
    def parse(cls, document: Any, user: str, cache: EntityCache,
              origin_server: uuid.UUID | None = None) -> ImportRequest:
        """Validate a request document; full entities are put in ``cache`` for later requests.

        Raises ProtocolError or ValidationError (with the offending field's path).
        """
        if not isinstance(document, dict):
            raise ProtocolError("the request body must be a JSON object")
        request_type = document.get("type")
        if request_type == "cached_entity":
            entity_id = parse_id(document.get("cached_entity_id"), "cached_entity_id")
            entity = cache.get(user, entity_id)
            entity_type = entity.ENTITY_TYPE if entity is not None else "unknown"
            return cls(entity_type, entity_id, entity, user, origin_server)
        # A list or object here is unhashable: test the type before the dict lookup.
        if not isinstance(request_type, str) or request_type not in ENTITY_CLASSES:
            raise ProtocolError(
                f"type must be one of event, file, status, cached_entity "
                f"(got {_preview(request_type)})", field="type")
        if request_type not in document:
            raise ProtocolError(f"a '{request_type}' request needs a '{request_type}' object",
                                field=request_type)
        entity = ENTITY_CLASSES[request_type].from_dict(document[request_type], request_type)
        cache.put(user, entity)
        return cls(request_type, entity.id, entity, user, origin_server)

    # Replies ---------------------------------------------------------------------

    def complete(self) -> Reply:
        """Done with this entity: the exporter will not send it to us again."""
        return COMPLETE

    def continue_(self) -> Reply:
        """Ask for this entity again by id (``cached_entity``)."""
        return CONTINUE

    def need_status(self, status_id: uuid.UUID | None = None) -> Reply:
        """Ask for a camera status (by default the one this event or file names)."""
        if status_id is None:
            if self.entity is None or isinstance(self.entity, CameraStatus):
                raise ValueError("only an event or a file can need a status")
            status_id = self.entity.status_id
        return Reply(protocol.NEED_STATUS, {"status_id": status_id.hex})

    def need_file_data(self, file_id: uuid.UUID) -> Reply:
        """Ask for the bytes of one file, uploaded to /import/data/<file_id>/<md5>."""
        return Reply(protocol.NEED_FILE_DATA, {"file_id": file_id.hex})

    @staticmethod
    def failed(message: str) -> Reply:
        """Give up on this entity for now; the exporter backs off and tries again later."""
        return Reply(protocol.FAILED, {"message": message})


class Importer:
    """Runs each request through the receiver and applies the protocol's default replies."""

    def __init__(self, receiver, cache: EntityCache, activity: ImportActivity | None = None):
        self.receiver = receiver
        self.cache = cache
        self.activity = activity or ImportActivity()

    def handle(self, document: Any, user: str, origin_server: uuid.UUID | None = None) -> Reply:
        request = ImportRequest.parse(document, user, self.cache, origin_server)
        if request.entity is None:
            log.debug("cache miss for %s from %s", request.entity_id.hex, user)
            reply = CONTINUE_NOCACHE
        # One record is a batch of one: the receiver decides as it does for protocol v2.
        elif request.entity_type == "status":
            reply = self.receiver.receive_statuses([request])[0] or CONTINUE
        else:
            reply = self.receiver.receive_records([request])[0] or COMPLETE
        log.debug("%s %s from %s: %s", request.entity_type, request.entity_id.hex, user, reply.state)
        self.activity.replied(LEGACY, "entity", user, origin_server,
                              [(request.entity_type, reply.state, reply.fields.get("message"))])
        return reply

    def handle_file_data(self, file_id: uuid.UUID, md5: str, content: BinaryIO, user: str,
                         origin_server: uuid.UUID | None = None) -> Reply:
        """Pass uploaded bytes to the receiver; the protocol always answers 'continue'."""
        counted = _CountingReader(content)
        self.receiver.receive_file_data(file_id=file_id, md5=md5, content=counted, user=user)
        self.activity.bytes_received("legacy_upload", counted.count)
        # A receiver keeps the bytes or not without saying; it is asked, unless it read
        # nothing (it held them already).
        if counted.count:
            kept = self.receiver.has_file_data(file_id, md5)
            self.activity.files_received("legacy_upload", user, origin_server,
                                         kept=[counted.count] if kept else [],
                                         discarded=[] if kept else [file_id])
        self.activity.replied(LEGACY, "file_data", None, None, [("file_data", CONTINUE.state, None)])
        return CONTINUE


class _CountingReader:
    """A file-like object's reads, counted."""

    def __init__(self, content: BinaryIO):
        self._content = content
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._content.read(size)
        self.count += len(data)
        return data

    def __getattr__(self, name: str):
        return getattr(self._content, name)


__all__ = ["COMPLETE", "CONTINUE", "CONTINUE_NOCACHE", "EntityCache", "ImportRequest",
           "Importer", "ProtocolError", "Reply", "ValidationError"]
