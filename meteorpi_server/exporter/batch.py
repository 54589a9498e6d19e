"""The client half of protocol v2: a batch of entities in a handful of requests.

For a batch: one plan request learns what the target lacks; the statuses it lacks go in
one request; the file bytes it lacks go in bundles (many small files in one request) or,
for large files and uploads already begun, through resumable uploads, several requests
at once; the records go in one request. Whatever a batch leaves unresolved (a file whose
upload failed, a status that vanished) is sent through the legacy handshake, entity by
entity, so a batch never ends worse than the legacy protocol would.
"""
from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field

import requests

from meteorpi_model import Event, FileRecord, files_of

from ..bundles import MEDIA_TYPE as BUNDLE_MEDIA_TYPE, header_line
from .handshake import (EntitySource, ExportResult, ImportClient, TargetError, export_entity,
                        target_session)
from .resumable import Progress, ResumableUploader, UploadFailed, UploadRefused

log = logging.getLogger("meteorpi.exporter")

DEFAULT_CONCURRENCY = 4
# Files up to this size travel in bundles; larger ones by resumable upload, where a cut
# connection costs at most a chunk. A bundle is built in memory, so memory stays bounded
# by BUNDLE_BYTES per upload thread whatever the files' sizes.
BUNDLE_FILE_BYTES = 1 << 20
BUNDLE_BYTES = 4 << 20


@dataclass
class BatchStats:
    """What a batch cost: HTTP requests, files and bytes uploaded."""

    requests: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    fallbacks: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_requests(self, count: int) -> None:
        with self._lock:
            self.requests += count

    def add_upload(self, requests_sent: int, size: int) -> None:
        with self._lock:
            self.requests += requests_sent
            self.files_uploaded += 1
            self.bytes_uploaded += size


def _serialised(progress: Progress | None) -> Progress | None:
    if progress is None:
        return None
    lock = threading.Lock()

    def report(count: int) -> None:
        with lock:
            progress(count)

    return report


def _plannable(entity: Event | FileRecord) -> bool:
    """A plan names each file with its md5; a record without one needs the handshake."""
    return all(record.md5 is not None for record in files_of(entity))


def _plan_entry(entity: Event | FileRecord) -> dict:
    if isinstance(entity, FileRecord):
        return {"type": "file", "id": entity.file_id.hex, "status_id": entity.status_id.hex,
                "md5": entity.md5}
    return {"type": "event", "id": entity.event_id.hex, "status_id": entity.status_id.hex,
            "files": [{"file_id": record.file_id.hex, "md5": record.md5} for record in entity.files]}


class BatchSender:
    """Sends batches of events and stand-alone files to a target that speaks protocol v2."""

    def __init__(self, client: ImportClient, source: EntitySource,
                 concurrency: int = DEFAULT_CONCURRENCY):
        if not client.speaks_batches():
            raise ValueError("the target does not speak protocol v2; use export_entity")
        self.client = client
        self.source = source
        self.concurrency = concurrency
        # Upload threads and their sessions live as long as the sender, so connections
        # are reused from batch to batch; close() ends them.
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    @property
    def max_entities(self) -> int:
        """The target's batch limit, as its latest discovery document gives it."""
        return self.client.capabilities["batch"]["max_entities"]

    def __enter__(self) -> BatchSender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the upload threads and close their connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def send(self, entities: list[Event | FileRecord], progress: Progress | None = None,
             stats: BatchStats | None = None) -> dict[uuid.UUID, ExportResult]:
        """Send ``entities`` (any number: split to the target's batch limit) and return a
        result for each, keyed by entity id.

        ``progress`` gets the file bytes confirmed, one call at a time, although uploads
        run in several threads.
        """
        stats = stats if stats is not None else BatchStats()
        progress = _serialised(progress)
        results: dict[uuid.UUID, ExportResult] = {}
        plannable = [entity for entity in entities if _plannable(entity)]
        for start in range(0, len(plannable), self.max_entities):
            results.update(self._send_batch(plannable[start:start + self.max_entities],
                                            progress, stats))
        for entity in entities:  # files without a recorded md5 cannot be planned
            if entity.id not in results:
                results[entity.id] = self._fallback(entity, progress, stats)
        return results

    def _post(self, operation: str, document: dict, stats: BatchStats) -> dict:
        stats.requests += 1
        response = self.client.send_batch(operation, document)
        if response.status_code != 200:
            raise TargetError(f"batch {operation} answered {response.status_code}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise TargetError(f"batch {operation} answered something that is not JSON") from None

    def _send_batch(self, entities, progress, stats) -> dict[uuid.UUID, ExportResult]:
        by_id = {entity.id: entity for entity in entities}
        plan = self._post("plan", {"entities": [_plan_entry(entity) for entity in entities]}, stats)
        results: dict[uuid.UUID, ExportResult] = {}
        waiting = []
        for entry in plan.get("entities", []):
            entity = by_id.get(uuid.UUID(entry["id"])) if entry.get("id") else None
            if entity is None:
                continue
            if entry.get("state") == "stored":
                results[entity.id] = ExportResult("complete", round_trips=1)
            elif entry.get("state") == "missing":
                waiting.append(entity)
            else:
                results[entity.id] = ExportResult("rejected", entry.get("message", ""), round_trips=1)
        if not waiting:
            return results
        self._send_statuses(plan.get("need_statuses", []), stats)
        failed_files = self._upload_files(plan.get("need_files", []), waiting, progress, stats)
        for entity in list(waiting):
            reasons = [failed_files[r.file_id] for r in files_of(entity) if r.file_id in failed_files]
            if reasons:
                results[entity.id] = ExportResult("failed", "; ".join(reasons))
                waiting.remove(entity)
        if not waiting:
            return results
        reply = self._post("records", {"entities": [
            {"type": entity.ENTITY_TYPE, entity.ENTITY_TYPE: entity.to_dict()} for entity in waiting]},
            stats)
        outcomes = {uuid.UUID(result["id"]): result for result in reply.get("results", [])
                    if result.get("id")}
        for entity in waiting:
            outcome = outcomes.get(entity.id, {})
            state = outcome.get("state")
            if state == "complete":
                results[entity.id] = ExportResult("complete", round_trips=1)
            elif state == "failed":
                results[entity.id] = ExportResult("failed", outcome.get("message", ""))
            elif state == "invalid":
                results[entity.id] = ExportResult("rejected", outcome.get("message", ""))
            else:  # need_status / need_file_data / nothing: let the handshake sort it out
                results[entity.id] = self._fallback(entity, progress, stats)
        return results

    def _send_statuses(self, status_ids: list[str], stats: BatchStats) -> None:
        statuses = [self.source.status(uuid.UUID(status_id)) for status_id in status_ids]
        statuses = [status.to_dict() for status in statuses if status is not None]
        for start in range(0, len(statuses), self.max_entities):
            self._post("statuses", {"statuses": statuses[start:start + self.max_entities]}, stats)

    def _upload_files(self, needed: list[dict], entities, progress,
                      stats: BatchStats) -> dict[uuid.UUID, str]:
        """Upload the planned files, several at once; return why each file that cannot be
        sent (its bytes are missing here, or the target refuses it) was not.

        Raises TargetError as soon as the target cannot be reached, abandoning the
        uploads not yet started: a target that is down should cost seconds, not a
        round of retries for every file.
        """
        records = {record.file_id: record for entity in entities for record in files_of(entity)}
        jobs = [(records[uuid.UUID(item["file_id"])], int(item.get("offset", 0)))
                for item in needed if uuid.UUID(item["file_id"]) in records]
        bundled, resumable = [], []
        for record, offset in jobs:  # an upload already begun goes on where it is
            if offset == 0 and self._bundles(record):
                bundled.append(record)
            else:
                resumable.append((record, offset))
        failures: dict[uuid.UUID, str] = {}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                            thread_name_prefix="meteorpi-upload")
        futures = [self._pool.submit(self._upload_bundle, bundle, progress, stats)
                   for bundle in self._bundled(bundled)]
        futures += [self._pool.submit(self._upload_one, record, offset, progress, stats)
                    for record, offset in resumable]
        try:
            for future in as_completed(futures):
                failures.update(future.result())
        finally:  # on a target error, drop what has not started and wait for the rest
            for future in futures:
                future.cancel()
            wait(futures)
        return failures

    def _bundle_limit(self) -> int:
        """The largest bundle to send: 0 if the target takes no bundles."""
        announced = self.client.capabilities["batch"].get("max_bundle_bytes") or 0
        return min(BUNDLE_BYTES, announced)

    def _bundles(self, record: FileRecord) -> bool:
        """Whether a file travels in a bundle (judged by its recorded size; one that turns
        out larger is sent by resumable upload after all)."""
        return 0 < record.file_size <= min(BUNDLE_FILE_BYTES, self._bundle_limit() // 2)

    def _bundled(self, records: list[FileRecord]) -> list[list[FileRecord]]:
        bundles, current, size = [], [], 0
        for record in records:
            if current and (size + record.file_size > self._bundle_limit()
                            or len(current) >= self.max_entities):
                bundles.append(current)
                current, size = [], 0
            current.append(record)
            size += record.file_size + 100  # the entry's header
        return bundles + ([current] if current else [])

    def _upload_bundle(self, records: list[FileRecord], progress,
                       stats: BatchStats) -> dict[uuid.UUID, str]:
        """Send ``records``' bytes in one request; return why each file not stored was not."""
        failures: dict[uuid.UUID, str] = {}
        parts, sent, oversized = [], [], []
        for record in records:
            stream = self.source.open_file(record)
            if stream is None:
                failures[record.file_id] = f"the bytes of file {record.file_id.hex} are missing on this node"
                continue
            with stream:
                data = stream.read(BUNDLE_FILE_BYTES + 1)
            if len(data) > BUNDLE_FILE_BYTES:
                oversized.append(record)
                continue
            parts += [header_line(record.file_id, record.md5, len(data)), data]
            sent.append((record, len(data)))
        for record in oversized:  # its record understated its size
            failures.update(self._upload_one(record, 0, progress, stats))
        if not sent:
            return failures
        body = b"".join(parts)
        del parts
        try:
            response = self._uploader().session.post(
                f"{self.client.import_url}/batch/files", data=body, timeout=self.client.timeout,
                headers={"Content-Type": BUNDLE_MEDIA_TYPE})
        except requests.RequestException as error:
            raise TargetError(f"sending a bundle of {len(sent)} files: {error}") from error
        finally:
            stats.add_requests(1)
        if response.status_code != 200:
            raise TargetError(f"batch files answered {response.status_code}: {response.text[:300]}")
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            raise TargetError("batch files answered something that is not its JSON reply") from None
        outcomes = {result.get("id"): result for result in results if isinstance(result, dict)}
        for record, size in sent:
            outcome = outcomes.get(record.file_id.hex, {})
            if outcome.get("state") == "stored":
                stats.add_upload(0, size)
                if progress:
                    progress(size)
            else:
                failures[record.file_id] = (f"the target refuses file {record.file_id.hex}: "
                                            f"{outcome.get('message') or 'no result for it'}")
        return failures

    def _uploader(self) -> ResumableUploader:
        """One session per upload thread: a requests.Session is not to be shared."""
        uploader = getattr(self._local, "uploader", None)
        if uploader is None:
            session = target_session()
            session.auth = self.client.session.auth
            session.verify = self.client.session.verify
            session.headers.update(self.client.session.headers)
            with self._sessions_lock:
                self._sessions.append(session)
            limits = self.client.capabilities["uploads"]["resumable"]
            uploader = ResumableUploader(session, self.client.import_url,
                                         chunk_size=self.client.chunk_size,
                                         max_chunk_bytes=limits.get("max_chunk_bytes"),
                                         timeout=self.client.timeout)
            self._local.uploader = uploader
        return uploader

    def _upload_one(self, record: FileRecord, offset: int, progress,
                    stats: BatchStats) -> dict[uuid.UUID, str]:
        """Send one file by resumable upload; return why it was not stored, if it was not."""
        uploader = self._uploader()
        stream = self.source.open_file(record)
        if stream is None:
            return {record.file_id: f"the bytes of file {record.file_id.hex} are missing on this node"}
        before, sent = uploader.requests_sent, 0
        try:
            with stream:
                sent = uploader.upload(record.file_id, record.md5, stream, progress,
                                       offset=offset).bytes_sent
        except UploadRefused as refusal:
            return {record.file_id: f"the target refuses file {record.file_id.hex}: {refusal}"}
        except (UploadFailed, requests.RequestException) as error:
            raise TargetError(f"uploading file {record.file_id.hex}: {error}") from error
        finally:
            stats.add_upload(uploader.requests_sent - before, sent)
        return {}

    def _fallback(self, entity, progress, stats: BatchStats) -> ExportResult:
        stats.fallbacks += 1
        before = self.client.requests_sent
        result = export_entity(self.client, entity, self.source, progress=progress)
        stats.requests += self.client.requests_sent - before
        return result
