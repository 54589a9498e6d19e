"""What the import code reports as it works: counted in the metrics and, per node, in
the database (``GET /imports/nodes``).

The import code calls one method per request (or per file of a bundle), whatever the
receiver: it reports what the protocol saw — replies, bytes that arrived, files that
were verified or discarded — so a custom receiver's server is observed the same way.
At most one short database write follows a request, and only when something arrived
or was refused; a failure to write it is logged and never fails the import.
"""
from __future__ import annotations

import logging
import uuid
from collections import Counter
from typing import Iterable

from .. import protocol
from ..observe import metrics

log = logging.getLogger("meteorpi.import")

LEGACY = protocol.PROTOCOL_LEGACY
BATCH = protocol.PROTOCOL_BATCH

# Replies that mean the sender's record (or status) is now held here.
_ACCEPTED = {("status", protocol.CONTINUE), ("status", protocol.COMPLETE),
             ("status", protocol.STORED), ("event", protocol.COMPLETE),
             ("file", protocol.COMPLETE)}


class ImportActivity:
    """Where the import code reports; ``nodes`` (a NodeActivityLog, or None to keep no
    per-node record) is told what each sender sent."""

    def __init__(self, nodes=None):
        self.nodes = nodes

    def replied(self, protocol_name: str, request: str, user: str | None,
                origin: uuid.UUID | None, results: Iterable[tuple[str, str, str | None]]) -> None:
        """Replies to one request: ``(entity type, state, message)`` for each entity."""
        states: Counter[str] = Counter()
        accepted, refusal = 0, None
        for entity_type, state, message in results:
            states[state] += 1
            if (entity_type, state) in _ACCEPTED:
                accepted += 1
            elif state == protocol.FAILED:
                refusal = f"{entity_type}: {message}" if message else entity_type
        for state, count in states.items():
            metrics.IMPORT_RESULTS.labels(protocol_name, request, state).inc(count)
        if user is not None and (accepted or refusal):
            self._record(user, origin, entities=accepted,
                         problem=refusal, problem_kind="refused" if refusal else None)

    def batch_size(self, request: str, entries: int) -> None:
        metrics.BATCH_ENTITIES.labels(request).observe(entries)

    def files_received(self, kind: str, user: str, origin: uuid.UUID | None,
                       kept: Iterable[int] = (), discarded: Iterable[uuid.UUID] = ()) -> None:
        """Whole files' bytes arrived (``kind``: legacy_upload, resumable or bundle): the
        sizes of those stored (``kept``), the ids of those discarded for not having their
        record's md5 (``discarded``). One call per request, so one database write."""
        kept, discarded = list(kept), list(discarded)
        if kept:
            metrics.FILES_STORED.labels(kind).inc(len(kept))
        if discarded:
            metrics.MD5_MISMATCHES.labels(kind).inc(len(discarded))
        if kind == "resumable":
            for event, count in (("completed", len(kept)), ("failed", len(discarded))):
                if count:
                    metrics.RESUMABLE_UPLOADS.labels(event).inc(count)
        if kept or discarded:
            problem = (f"file {discarded[-1].hex}: its bytes did not have the record's md5 "
                       "and were discarded" if discarded else None)
            self._record(user, origin, bytes_received=sum(kept), problem=problem,
                         problem_kind="md5_mismatch" if problem else None)

    def bytes_received(self, kind: str, size: int) -> None:
        """File bytes arrived (``kind``: legacy_upload, resumable_chunk, bundle)."""
        if size:
            metrics.RECEIVED_BYTES.labels(kind).inc(size)

    def upload_started(self) -> None:
        metrics.RESUMABLE_UPLOADS.labels("started").inc()

    def uploads_expired(self, count: int) -> None:
        if count:
            metrics.RESUMABLE_UPLOADS.labels("expired").inc(count)

    def flush(self) -> None:
        """Write the per-node figures recorded so far now (they are otherwise written
        within a second)."""
        if self.nodes is not None:
            self.nodes.flush()

    def _record(self, user: str, origin: uuid.UUID | None, **activity) -> None:
        if self.nodes is None:
            return
        try:
            self.nodes.record(user, origin, **activity)
        except Exception:  # the import has succeeded or failed on its own already
            log.exception("recording import activity of %s failed", user)
