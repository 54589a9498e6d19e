"""The client half of protocol v2: a batch of entities in a handful of requests.

For a batch: one plan request learns what the target lacks; the statuses it lacks go in
one request; the file bytes it lacks go in bundles (many small files in one request) or,
for large files and uploads already begun, through resumable uploads, several requests
at once; the records go in one request. Whatever a batch leaves unresolved (a file whose
upload failed, a status that vanished) is sent through the legacy handshake, entity by
entity, so a batch never ends worse than the legacy protocol would.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from typing import Callable

import requests

from meteorpi_model import Event, FileRecord, files_of

from ..imports.bundles import header_line
from ..protocol import (
    BUNDLE_MEDIA_TYPE,
    COMPLETE,
    FAILED,
    INVALID,
    MISSING,
    PLAN_STATES,
    RECORD_STATES,
    STORED,
)
from . import defaults
from .errors import TargetError, UploadFailed, UploadRefused
from .handshake import (
    EntitySource,
    ExportResult,
    ImportClient,
    export_entity,
    target_session,
)
from .lease import StopSignal
from .resumable import Progress, ResumableUploader

log = logging.getLogger("meteorpi.exporter")

DEFAULT_CONCURRENCY = defaults.CONCURRENCY
# Files up to this size travel in bundles; larger ones by resumable upload, where a cut
# connection costs at most a chunk. A bundle is built in memory, so memory stays bounded
# by BUNDLE_BYTES per upload thread whatever the files' sizes.
BUNDLE_FILE_BYTES = 1 << 20
BUNDLE_BYTES = 4 << 20
# A target that announces no JSON limit is assumed to take this much in one request.
DEFAULT_JSON_BYTES = 1 << 20
# Room left in each request for its envelope (``{"entities": [...]}``) and separators.
ENVELOPE_BYTES = 1024


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
            "files": [_plan_file(record, entity.status_id) for record in entity.files]}


def _plan_file(record: FileRecord, event_status_id: uuid.UUID) -> dict:
    # A file recorded under another status than its event's (the camera's status changed
    # between the two) names it, so the plan asks for that status up front too.
    entry = {"file_id": record.file_id.hex, "md5": record.md5}
    if record.status_id != event_status_id:
        entry["status_id"] = record.status_id.hex
    return entry


def _plan_size_bound(entity: Event | FileRecord) -> int:
    # Ids and md5s are 32 characters: an entry is at most about 100 bytes, and as much
    # again for each of its files.
    return 128 + 128 * len(files_of(entity))


def _record_entry(entity: Event | FileRecord) -> dict:
    return {"type": entity.ENTITY_TYPE, entity.ENTITY_TYPE: entity.to_dict()}


def _json_size(document) -> int:
    # As requests serialises a json= body, so the sizes add up to what is sent.
    return len(json.dumps(document).encode())


def _in_parts(items: list, sizes: list[int], max_count: int, max_bytes: int) -> list[list]:
    """``items`` in order, in parts of at most ``max_count`` items whose ``sizes`` add up
    to at most ``max_bytes`` (an item larger than that on its own makes a part of one)."""
    parts, current, total = [], [], 0
    for item, size in zip(items, sizes):
        if current and (len(current) >= max_count or total + size + 2 > max_bytes):
            parts.append(current)
            current, total = [], 0
        current.append(item)
        total += size + 2  # the ", " before it
    return parts + ([current] if current else [])


def _drop_unsent(waiting: list, failed_files: dict[uuid.UUID, str | None],
                 results: dict[uuid.UUID, ExportResult]) -> list:
    """The entities of ``waiting`` whose files all arrived. One with a file that cannot be
    sent gets a FAILED result; one left out by a stop gets none (neither sent nor failed)."""
    ready = []
    for entity in waiting:
        reasons = [failed_files[r.file_id] for r in files_of(entity) if r.file_id in failed_files]
        if None in reasons:  # not uploaded because of a stop
            continue
        if reasons:
            results[entity.id] = ExportResult(FAILED, "; ".join(reasons))
        else:
            ready.append(entity)
    return ready


class _TooLarge(TargetError):
    """The target (or a proxy before it) answered 413: the request was too large for it."""


def _halving_on_413(items: list, send: Callable[[list], dict],
                    alone: Callable[[object], dict]) -> dict:
    """``send(items)``; if the target finds the request too large (a proxy before it may
    take less than the target announces), each half the same way, and an item too large
    on its own to ``alone(item)``. Returns the replies' results, merged."""
    try:
        return send(items)
    except _TooLarge as error:
        if len(items) == 1:
            return alone(items[0])
        log.info("%s; sending those %d in halves", error, len(items))
    half = len(items) // 2
    return {**_halving_on_413(items[:half], send, alone), **_halving_on_413(items[half:], send, alone)}


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

    @property
    def max_json_bytes(self) -> int:
        """The largest JSON body the target announces it takes, less an envelope's room."""
        announced = (self.client.capabilities.get("limits") or {}).get("max_json_bytes")
        if not isinstance(announced, int) or isinstance(announced, bool) or announced <= 0:
            announced = DEFAULT_JSON_BYTES
        return max(announced - ENVELOPE_BYTES, 1)

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
             stats: BatchStats | None = None,
             stop: StopSignal | None = None) -> dict[uuid.UUID, ExportResult]:
        """Send ``entities`` (any number: split to the target's announced limits) and return a
        result for each, keyed by entity id.

        ``progress`` gets the file bytes confirmed, one call at a time, although uploads
        run in several threads.

        Once ``stop`` is set no further upload or bundle starts (those under way finish);
        the entities whose files all made it are still sent in the records request, so
        what the target confirms is not lost. Entities left unsent have no result: they
        were not tried, and the next plan finds whatever of them the target holds.
        """
        stats = stats if stats is not None else BatchStats()
        progress = _serialised(progress)
        stop = stop if stop is not None else threading.Event()
        results: dict[uuid.UUID, ExportResult] = {}
        plannable = [entity for entity in entities if _plannable(entity)]
        # The plan's entries have a bounded size; the records request is split apart
        # (only what the target lacks is serialised for it, so a batch the target holds
        # costs one small request).
        sizes = [_plan_size_bound(entity) for entity in plannable]
        for batch in _in_parts(plannable, sizes, self.max_entities, self.max_json_bytes):
            results.update(_halving_on_413(
                batch, lambda part: {} if stop.is_set() else self._send_batch(part, progress, stats, stop),
                lambda entity: {entity.id: self._fallback(entity, progress, stats)}))
        planned = {entity.id for entity in plannable}
        for entity in entities:  # files without a recorded md5 cannot be planned
            if entity.id not in planned:
                if stop.is_set():
                    break
                results[entity.id] = self._fallback(entity, progress, stats)
        return results

    def _post(self, operation: str, document: dict, stats: BatchStats) -> dict:
        stats.requests += 1
        response = self.client.send_batch(operation, document)
        if response.status_code == 413:
            raise _TooLarge(f"batch {operation} answered 413: {response.text[:300]}")
        if response.status_code != 200:
            raise TargetError(f"batch {operation} answered {response.status_code}: {response.text[:300]}",
                              response.status_code)
        try:
            reply = response.json()
        except ValueError:
            raise TargetError(f"batch {operation} answered something that is not JSON") from None
        if not isinstance(reply, dict):
            raise _outside(f"batch {operation} answered {type(reply).__name__}, not an object")
        return reply

    def _send_batch(self, entities, progress, stats, stop) -> dict[uuid.UUID, ExportResult]:
        """One batch: plan, then what the target lacks (statuses, file bytes), then the
        records of the entities whose files all arrived."""
        results: dict[uuid.UUID, ExportResult] = {}
        waiting, need_statuses, need_files = self._plan(entities, results, stats)
        if not waiting:
            return results
        self._send_statuses(need_statuses, stats)
        failed_files = self._upload_files(need_files, waiting, progress, stats, stop)
        waiting = _drop_unsent(waiting, failed_files, results)
        if waiting:
            self._send_records(waiting, results, progress, stats, stop)
        return results

    def _plan(self, entities, results: dict[uuid.UUID, ExportResult], stats: BatchStats):
        """Ask the target what it lacks. Entities it holds or refuses get their result in
        ``results``; returns the entities it lacks, and the statuses and files it needs."""
        by_id = {entity.id: entity for entity in entities}
        plan = self._post("plan", {"entities": [_plan_entry(entity) for entity in entities]}, stats)
        need_statuses = [_id_of(value, "plan", "need_statuses")
                         for value in _list_of(plan, "need_statuses", "plan")]
        need_files = [_needed_file(item) for item in _list_of(plan, "need_files", "plan")]
        waiting, answered = [], set()
        for entry_id, state, entry in _outcomes(plan, "entities", "plan", PLAN_STATES):
            entity = by_id.get(entry_id)
            if entity is None or entity.id in answered:
                continue
            answered.add(entity.id)
            if state == STORED:
                results[entity.id] = ExportResult(COMPLETE, round_trips=1)
            elif state == MISSING:
                waiting.append(entity)
            else:
                results[entity.id] = _invalid(entry, round_trips=1)
        unplanned = [entity for entity in by_id.values() if entity.id not in answered]
        if unplanned:  # the plan must name each entity it was asked about
            raise _outside(f"batch plan gave no state for {len(unplanned)} of the entities "
                           f"asked about, such as {unplanned[0].id.hex}")
        return waiting, need_statuses, need_files

    def _send_records(self, waiting, results: dict[uuid.UUID, ExportResult], progress,
                      stats: BatchStats, stop: StopSignal) -> None:
        """Send the records of ``waiting`` (their statuses and files are there now) and put
        each one's result in ``results``; what the target still lacks goes by handshake."""
        fitting, sizes = [], []
        for entity in waiting:
            entry = _record_entry(entity)
            size = _json_size(entry)
            if size <= self.max_json_bytes:
                fitting.append((entity, entry))
                sizes.append(size)
            elif not stop.is_set():  # larger than the target takes: the handshake tells
                results[entity.id] = self._fallback(entity, progress, stats)
        outcomes = {}
        for part in _in_parts(fitting, sizes, self.max_entities, self.max_json_bytes):
            reply = self._post("records", {"entities": [entry for _, entry in part]}, stats)
            outcomes.update({entry_id: (state, entry) for entry_id, state, entry
                             in _outcomes(reply, "results", "records", RECORD_STATES)})
        for entity, _ in fitting:
            if entity.id not in outcomes:
                raise _outside(f"batch records gave no result for {entity.ENTITY_TYPE} "
                               f"{entity.id.hex}")
            state, outcome = outcomes[entity.id]
            if state == COMPLETE:
                results[entity.id] = ExportResult(COMPLETE, round_trips=1)
            elif state == FAILED:
                results[entity.id] = ExportResult(FAILED, _message(outcome))
            elif state == INVALID:
                results[entity.id] = _invalid(outcome)
            elif not stop.is_set():  # need_status / need_file_data: the handshake fetches it
                results[entity.id] = self._fallback(entity, progress, stats)

    def _send_statuses(self, status_ids: list[uuid.UUID], stats: BatchStats) -> None:
        statuses = [self.source.status(status_id) for status_id in status_ids]
        statuses = [status.to_dict() for status in statuses if status is not None]
        sizes = [_json_size(status) for status in statuses]

        def send(some: list[dict]) -> dict:
            self._post("statuses", {"statuses": some}, stats)
            return {}

        for part in _in_parts(statuses, sizes, self.max_entities, self.max_json_bytes):
            # A status too large on its own is left to the records request, which answers
            # need_status for the entities that need it; the legacy handshake then gives
            # each its own result.
            _halving_on_413(part, send, lambda status: {})

    def _upload_files(self, needed: list[tuple[uuid.UUID, int]], entities, progress,
                      stats: BatchStats, stop: StopSignal) -> dict[uuid.UUID, str | None]:
        """Upload the planned files, several at once; return why each file that cannot be
        sent (its bytes are missing here, or the target refuses it) was not, and None for
        each file not sent because ``stop`` was set first.

        Raises TargetError as soon as the target cannot be reached, abandoning the
        uploads not yet started: a target that is down should cost seconds, not a
        round of retries for every file.
        """
        records = {record.file_id: record for entity in entities for record in files_of(entity)}
        jobs = [(records[file_id], offset) for file_id, offset in needed if file_id in records]
        bundled, resumable = [], []
        for record, offset in jobs:  # an upload already begun goes on where it is
            if offset == 0 and self._bundles(record):
                bundled.append(record)
            else:
                resumable.append((record, offset))
        failures: dict[uuid.UUID, str | None] = {}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                            thread_name_prefix="meteorpi-upload")

        def unless_stopped(upload, records_sent, *args):
            # Checked as each upload starts, so a stop waits for one upload per thread
            # at most, not for the whole batch.
            if stop.is_set():
                return {record.file_id: None for record in records_sent}
            return upload(*args)

        futures = [self._pool.submit(unless_stopped, self._upload_bundle, bundle,
                                     bundle, progress, stats)
                   for bundle in self._bundled(bundled)]
        futures += [self._pool.submit(unless_stopped, self._upload_one, [record],
                                      record, offset, progress, stats)
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
            raise TargetError(f"batch files answered {response.status_code}: {response.text[:300]}",
                              response.status_code)
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            raise TargetError("batch files answered something that is not its JSON reply") from None
        outcomes = {result.get("id"): result for result in results if isinstance(result, dict)}
        for record, size in sent:
            outcome = outcomes.get(record.file_id.hex, {})
            if outcome.get("state") == STORED:
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
                                         retry_delay=self.client.upload_retry_seconds,
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


# Reading the target's replies ----------------------------------------------------------------
#
# A reply of the wrong shape says the target (or a proxy before it) is not speaking the
# protocol: that is the target's fault, a TargetError, never a crash of this node's pass.


def _outside(what: str) -> TargetError:
    return TargetError(f"target answered outside the protocol: {what}")


def _list_of(reply: dict, key: str, operation: str) -> list:
    value = reply.get(key)
    if not isinstance(value, list):
        raise _outside(f"batch {operation} reply has no list {key!r}: {reply!r:.200}")
    return value


def _id_of(value, operation: str, key: str) -> uuid.UUID:
    try:
        if not isinstance(value, str) or len(value) != 32:
            raise ValueError
        return uuid.UUID(hex=value)
    except ValueError:
        raise _outside(f"batch {operation} reply has {value!r:.60} in {key}, "
                       "not an id of 32 hex digits") from None


def _needed_file(item) -> tuple[uuid.UUID, int]:
    if not isinstance(item, dict):
        raise _outside(f"batch plan reply has {item!r:.100} in need_files, not an object")
    offset = item.get("offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _outside(f"batch plan reply has offset {offset!r:.60} in need_files, "
                       "not a whole number of bytes")
    return _id_of(item.get("file_id"), "plan", "need_files"), offset


def _outcomes(reply: dict, key: str, operation: str, states: frozenset[str]):
    """(id, state, entry) for each entry of ``reply[key]``, checked."""
    for entry in _list_of(reply, key, operation):
        if not isinstance(entry, dict):
            raise _outside(f"batch {operation} reply has {entry!r:.100} in {key}, not an object")
        entry_id = _id_of(entry.get("id"), operation, key)
        state = entry.get("state")
        if state not in states:
            raise _outside(f"batch {operation} reply has state {state!r:.60} for "
                           f"{entry_id.hex}, not one of {', '.join(sorted(states))}")
        yield entry_id, state, entry


def _message(entry: dict) -> str:
    message = entry.get("message")
    return message if isinstance(message, str) and message else "(no message)"


def _invalid(entry: dict, round_trips: int = 0) -> ExportResult:
    """The target refuses this one entity as invalid: the entity's trouble, not the target's.

    Its state is INVALID (the legacy handshake's 4xx for one entity is a ``rejected`` with
    its HTTP status instead)."""
    field_name = entry.get("field")
    where = f" (field {field_name})" if isinstance(field_name, str) and field_name else ""
    return ExportResult(INVALID, _message(entry) + where, round_trips=round_trips)

