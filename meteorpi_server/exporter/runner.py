"""The export runner: marks tasks and sends them, each configuration on its own thread.

One pass over a configuration: ask the target who it is (``GET /import``), mark new
matches as tasks, then send due tasks in batches with the handshake driver until none is
left. What can go wrong is sorted in two:

* the **target** fails (cannot be reached, times out, answers 5xx, 401/403, 404, or
  anything outside the protocol): the pass stops and the configuration waits (a back-off
  that doubles with each failure in a row, up to a cap). A failure that heals by itself
  (no connection, a time-out, 5xx, a reply outside the protocol) is tried again for
  ever; one that needs a person (401, 403, 404/405, an untrusted TLS certificate: see
  ``target_errors.needs_a_person``) disables the configuration once it makes
  ``export_max_failures`` failures in a row, with the reason. No task is charged: a
  target that is down for a week costs nothing but waiting.
* the target refuses **one entity** (answers ``failed``, or 400/409/413/415/422 for it,
  or ``invalid`` for it in a protocol v2 reply),
  the exchange over it goes round in circles (more round trips than its files explain,
  or a request for a file that is not part of it), or this node cannot send it (its
  bytes are missing): that task waits (its own back-off) and the pass goes on with the
  others; after ``export_max_failures`` refusals the task is ``failed`` until
  ``meteorpi export retry``.

A target that answers ``GET /import`` with its discovery document is up: that resets its
failures in a row, as a completed entity does.

A task the target answered ``complete`` for is ``done`` before the next one starts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from ..config import Config, ConfigError
from ..protocol import FAILED, INVALID
from ..storage import store
from ..storage.db import Database
from ..storage.files import FileStore
from ..storage.orm import ExportConfigRow, ExportTaskRow
from . import defaults, tasks
from .batch import BatchSender, BatchStats
from .configs import clip
from .errors import TargetError
from .handshake import ExportResult, ImportClient, export_entity
from .lease import LeaseKeeper, StopSignal
from .marking import mark
from .progress import Batch, Reporter
from .source import StoreSource, entity_bytes, pending_bytes
from .target_errors import (
    NEEDS_A_PERSON_STATUS_CODES,
    describe_target_error,
    needs_a_person,
)

log = logging.getLogger("meteorpi.exporter")

# A 4xx for one entity means "not this one" (invalid there, too large, a conflict); any
# other 4xx (404, 405, ...) means the URL or the target is wrong for every entity.
ENTITY_STATUS_CODES = frozenset({400, 409, 413, 415, 422})
BATCH_SIZE = 100


@dataclass(frozen=True)
class ExporterSettings:
    """The runner's settings; :meth:`from_config` reads them from the ``export_*`` settings."""

    # The defaults are config.py's (exporter/defaults.py reads them from its table), so an
    # ExporterSettings() made without a Config behaves as a node with no configuration.
    interval_seconds: float = defaults.INTERVAL_SECONDS
    max_failures: int = defaults.MAX_FAILURES
    backoff: tasks.Backoff = tasks.Backoff(int(defaults.BACKOFF_SECONDS * 1000),  # noqa: RUF009
                                           int(defaults.BACKOFF_MAX_SECONDS * 1000))
    connect_timeout: float = defaults.TIMEOUT[0]
    read_timeout: float = defaults.TIMEOUT[1]
    ca_bundle: str = defaults.CA_BUNDLE
    batch_size: int = BATCH_SIZE
    chunk_bytes: int = defaults.CHUNK_BYTES
    concurrency: int = defaults.CONCURRENCY
    #: First pause before a failed upload request is retried (it doubles each time).
    upload_retry_seconds: float = defaults.UPLOAD_RETRY_SECONDS
    #: How long a claim on a configuration lasts unless renewed (every third of it, by a
    #: thread of its own), so only an exporter that died loses it.
    lease_seconds: float = 300.0

    @classmethod
    def from_config(cls, config: Config) -> ExporterSettings:
        if config.export_ca_bundle and not Path(config.export_ca_bundle).exists():
            raise ConfigError(f"export_ca_bundle: {config.export_ca_bundle} does not exist; "
                              "point it at a PEM file of CA certificates, or leave it empty "
                              "for the system's")
        return cls(
            interval_seconds=config.export_interval_seconds,
            max_failures=config.export_max_failures,
            backoff=tasks.Backoff(int(config.export_backoff_seconds * 1000),
                                  int(config.export_backoff_max_seconds * 1000)),
            connect_timeout=config.export_connect_timeout_seconds,
            read_timeout=config.export_timeout_seconds,
            ca_bundle=config.export_ca_bundle,
            chunk_bytes=config.export_chunk_bytes,
            concurrency=config.export_concurrency,
            upload_retry_seconds=config.export_upload_retry_seconds)


@dataclass
class TargetSummary:
    """What one run did for one configuration."""

    name: str
    target_url: str
    marked: int = 0
    entities_sent: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    refused: int = 0
    target_failures: int = 0
    last_error: str | None = None
    disabled: bool = False
    skipped: str | None = None

    @property
    def failures(self) -> int:
        return self.refused + self.target_failures

    def add(self, other: TargetSummary) -> None:
        for name in ("marked", "entities_sent", "files_uploaded", "bytes_uploaded", "refused",
                     "target_failures"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_error = other.last_error or self.last_error
        self.disabled = self.disabled or other.disabled
        self.skipped = other.skipped


@dataclass
class RunSummary:
    targets: dict[str, TargetSummary] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(target.failures for target in self.targets.values())

    @property
    def entities_sent(self) -> int:
        return sum(target.entities_sent for target in self.targets.values())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class _Stopped(Exception):
    """The run was asked to stop between two entities (or lost its claim on the work)."""


def _check(stop: StopSignal) -> None:
    if stop.is_set():
        raise _Stopped


class Exporter:
    """Sends this node's records to the targets of its export configurations."""

    def __init__(self, database: Database, files: FileStore, settings: ExporterSettings,
                 reporter: Reporter | None = None):
        self.database = database
        self.source = StoreSource(database, files)
        self.settings = settings
        self.reporter = reporter or Reporter()
        self.host = socket.gethostname()
        # Names this process in leases; the pid lets a restart on the same host take over
        # at once from an exporter that was killed.
        self.owner = f"{self.host}:{os.getpid()}:{secrets.token_hex(4)}"
        self._server_id: uuid.UUID | None = None
        self._clients: dict[uuid.UUID, tuple[tuple, ImportClient]] = {}
        self._senders: dict[uuid.UUID, BatchSender] = {}
        self._clients_lock = threading.Lock()

    # Running -------------------------------------------------------------------------

    def run_once(self, stop: threading.Event | None = None) -> RunSummary:
        """One pass over every enabled configuration, in parallel; returns what was done.

        Each pass marks, sends every due task, marks again and goes on until nothing new
        is due. A target that fails is left to its back-off; the others carry on.
        """
        stop = stop or threading.Event()
        summary = RunSummary()
        rows = self._enabled_configs()
        results: dict[uuid.UUID, TargetSummary] = {}

        def work(config_id: uuid.UUID) -> None:
            results[config_id] = self.export_config(config_id, stop)

        threads = [threading.Thread(target=work, args=(row.config_id,), name=f"export-{row.name}",
                                    daemon=True) for row in rows]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self.close()
        for row in rows:
            if row.config_id in results:
                summary.targets[row.name] = results[row.config_id]
        return summary

    def run_forever(self, stop: threading.Event) -> RunSummary:
        """Pass over each enabled configuration every ``interval_seconds`` until ``stop``
        is set; returns the totals. Configurations added or enabled meanwhile are picked
        up within one interval."""
        totals = RunSummary()
        lock = threading.Lock()
        workers: dict[uuid.UUID, threading.Thread] = {}

        def work(config_id: uuid.UUID, name: str) -> None:
            while not stop.is_set():
                result = self.export_config(config_id, stop)
                with lock:
                    totals.targets.setdefault(name, TargetSummary(name, result.target_url)).add(result)
                if result.skipped in ("removed", "disabled"):
                    return
                stop.wait(self._pause(config_id))

        try:
            while not stop.is_set():
                for row in self._enabled_configs():
                    if row.config_id not in workers or not workers[row.config_id].is_alive():
                        workers[row.config_id] = threading.Thread(
                            target=work, args=(row.config_id, row.name),
                            name=f"export-{row.name}", daemon=True)
                        workers[row.config_id].start()
                stop.wait(self.settings.interval_seconds)
            for thread in workers.values():
                thread.join()
        finally:
            self.close()
        return totals

    def _pause(self, config_id: uuid.UUID) -> float:
        """Until the next pass: the interval, or less if a back-off ends sooner."""
        with self.database.read() as session:
            next_attempt = session.scalar(select(ExportConfigRow.next_attempt_at)
                                          .where(ExportConfigRow.config_id == config_id)) or 0
        wait = self.settings.interval_seconds
        until_retry = (next_attempt - store.now_ms()) / 1000
        return max(0.01, min(wait, until_retry)) if until_retry > 0 else wait

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            sender.close()
        for _, client in clients:
            client.close()

    # One configuration -----------------------------------------------------------------

    def export_config(self, config_id: uuid.UUID, stop: threading.Event | None = None) -> TargetSummary:
        """One pass over one configuration; see the module's description."""
        stop = stop or threading.Event()
        with self.database.read() as session:
            row = session.get(ExportConfigRow, config_id)
        if row is None:
            return TargetSummary("?", "", skipped="removed")
        summary = TargetSummary(row.name, row.target_url)
        if not row.enabled:
            summary.skipped = "disabled"
            return summary
        if row.next_attempt_at > store.now_ms():
            summary.skipped = "backing off"
            if row.target_checked_at is not None:
                # The backlog keeps growing while the target is away: let status show it.
                with self.database.write() as session:
                    summary.marked += mark(session, row)
            return summary
        if not self._take_lease(config_id):
            summary.skipped = "another exporter is working on it"
            return summary
        keeper = LeaseKeeper(row.name, lambda: self._take_lease(config_id),
                             self.settings.lease_seconds, stop)
        try:
            with keeper:
                self._pass(row, keeper.stop, summary)
        except _Stopped:
            pass
        except Exception as error:  # a bug or a local fault must not kill the exporter
            log.exception("export %s: unexpected error", row.name)
            # Not the target's fault, and perhaps passing (a database restarting): it
            # backs off like a failure that heals, and never disables the configuration.
            with contextlib.suppress(Exception):  # the database may be what failed
                self._target_failed(row, summary, f"unexpected error on this node: "
                                                  f"{type(error).__name__}: {error}")
        finally:
            with self.database.write() as session:
                tasks.release_lease(session, config_id, self.owner)
        return summary

    def _pass(self, row: ExportConfigRow, stop: StopSignal, summary: TargetSummary) -> None:
        client = self._client(row)
        try:
            document = client.describe()
        except TargetError as error:
            self._target_failed(row, summary, describe_target_error(error), needs_a_person(error))
            return
        target_id = _server_id_of(document)
        if target_id is not None and target_id == self.server_id:
            reason = ("the target is this server itself; point the configuration at another "
                      "server's /import")
            with self.database.write() as session:
                tasks.disable_config(session, row.config_id, reason)
            summary.last_error, summary.disabled = reason, True
            log.warning("export %s: %s; disabled the configuration", row.name, reason)
            return
        while not stop.is_set():
            with self.database.write() as session:
                tasks.note_target_identity(session, row.config_id, target_id)
                fresh = session.get(ExportConfigRow, row.config_id)
                if fresh is None or not fresh.enabled:
                    return
                marked = mark(session, fresh)
            summary.marked += marked
            if not self._drain(row, client, stop, summary):
                return
            if marked == 0:
                break
        if not stop.is_set():
            # A whole pass without a target failure (the target answered who it is, and
            # whatever it refused was about single entities): its failures in a row are
            # over, even when there was nothing to send. A target that answers GET /import
            # but fails every entity's request still counts towards being disabled.
            with self.database.write() as session:
                tasks.note_target_success(session, row.config_id)

    def _drain(self, row: ExportConfigRow, client: ImportClient, stop: StopSignal,
               summary: TargetSummary) -> bool:
        """Send due tasks until none is left (True) or the target failed (False)."""
        tried: set[uuid.UUID] = set()
        due_count, due_bytes = self._due_work(row.config_id)
        self.reporter.add_work(row.name, due_count, due_bytes)
        sender = self._batch_sender(row, client)
        # With protocol v2 a batch of tasks is one exchange, as large as the target takes.
        batch_size = sender.max_entities if sender else self.settings.batch_size
        while True:
            with self.database.read() as session:
                batch_tasks = [task for task in tasks.due_tasks(session, row.config_id, batch_size)
                               if task.entity_id not in tried]
            if not batch_tasks:
                return True
            batch, started = Batch(), time.monotonic()
            if sender is not None:
                _check(stop)
                tried.update(task.entity_id for task in batch_tasks)
                if not self._send_batch(row, sender, batch_tasks, stop, summary, batch):
                    return False
            else:
                for task in batch_tasks:
                    _check(stop)
                    tried.add(task.entity_id)
                    if not self._send(row, client, task, stop, summary, batch):
                        return False
            batch.seconds = time.monotonic() - started
            batch.pending_after = self._pending_count(row.config_id)
            self.reporter.batch_done(row.name, batch)

    def _entity_of(self, row: ExportConfigRow, task: tasks.Task, summary: TargetSummary,
                   batch: Batch):
        """The task's entity; None (and the task given up) if it is gone from this node."""
        entity = self.source.entity(task.entity_type, task.entity_id)
        if entity is None:
            self._give_up_gone(row, task, summary, batch)
        return entity

    def _entities_of(self, row: ExportConfigRow, batch_tasks: list[tasks.Task],
                     summary: TargetSummary, batch: Batch) -> list[tuple[tasks.Task, object]]:
        """The tasks' entities, loaded together (one at a time cost a transaction and a
        few queries each, a fifth of a night's export); the tasks of entities gone from
        this node are given up."""
        found = self.source.entities([(task.entity_type, task.entity_id) for task in batch_tasks])
        pending = []
        for task in batch_tasks:
            entity = found.get(task.entity_id)
            if entity is None:
                self._give_up_gone(row, task, summary, batch)
            else:
                pending.append((task, entity))
        return pending

    def _give_up_gone(self, row: ExportConfigRow, task: tasks.Task, summary: TargetSummary,
                      batch: Batch) -> None:
        with self.database.write() as session:
            tasks.give_up(session, task, f"the {task.entity_type} no longer exists on this node")
        summary.refused += 1
        batch.refused += 1
        self.reporter.entity_done(row.name, False, 0)

    def _send(self, row: ExportConfigRow, client: ImportClient, task: tasks.Task,
              stop: StopSignal, summary: TargetSummary, batch: Batch) -> bool:
        """Send one task's entity with the legacy handshake and record the outcome; False
        if the target failed."""
        batch.entities += 1
        entity = self._entity_of(row, task, summary, batch)
        if entity is None:
            return True
        try:
            result = export_entity(client, entity, self.source,
                                   progress=lambda count: self.reporter.bytes_sent(row.name, count))
        except TargetError as error:
            if stop.is_set():  # cut short by a stop request, not the target's fault
                raise _Stopped from error
            self._target_failed(row, summary, describe_target_error(error), needs_a_person(error))
            return False
        _count_uploads(result.files_uploaded, result.bytes_uploaded, summary, batch)
        return self._record(row, task, entity, result, summary, batch)

    def _send_batch(self, row: ExportConfigRow, sender: BatchSender, batch_tasks: list[tasks.Task],
                    stop: StopSignal, summary: TargetSummary, batch: Batch) -> bool:
        """Send a batch of tasks' entities with protocol v2 and record each outcome; False
        if the target failed (no outcome is recorded then: the next plan finds what the
        target already holds, so nothing is sent twice)."""
        batch.entities += len(batch_tasks)
        pending = self._entities_of(row, batch_tasks, summary, batch)
        stats = BatchStats()
        try:
            results = sender.send([entity for _, entity in pending], stats=stats, stop=stop,
                                  progress=lambda count: self.reporter.bytes_sent(row.name, count))
        except TargetError as error:
            if stop.is_set():
                raise _Stopped from error
            self._target_failed(row, summary, describe_target_error(error), needs_a_person(error))
            return False
        # Entities the sender fell back to the legacy handshake for count their own
        # uploads (the batch's stats do not).
        _count_uploads(stats.files_uploaded + sum(r.files_uploaded for r in results.values()),
                       stats.bytes_uploaded + sum(r.bytes_uploaded for r in results.values()),
                       summary, batch)
        # After a stop some entities have no result: they were not sent, and stay pending
        # as they were.
        pending = [(task, entity) for task, entity in pending if entity.id in results]
        completed = [(task, entity) for task, entity in pending if results[entity.id].ok]
        with self.database.write() as session:  # one commit for the batch's confirmations
            tasks.complete_many(session, row.config_id, [task.entity_id for task, _ in completed])
            # (an entity refused after a fallback to the legacy handshake has its uploads
            # counted where its refusal is recorded)
            tasks.note_sent(
                session, row.config_id, len(completed),
                stats.files_uploaded + sum(results[e.id].files_uploaded for _, e in completed),
                stats.bytes_uploaded + sum(results[e.id].bytes_uploaded for _, e in completed))
        for _, entity in completed:
            summary.entities_sent += 1
            batch.complete += 1
            self.reporter.entity_done(row.name, True, entity_bytes(entity))
        for task, entity in pending:
            if not results[entity.id].ok and not self._record(row, task, entity,
                                                             results[entity.id], summary, batch):
                return False
        return True

    def _record(self, row: ExportConfigRow, task: tasks.Task, entity, result: ExportResult,
                summary: TargetSummary, batch: Batch) -> bool:
        """Record one entity's outcome; False if it shows that the target failed."""
        size = entity_bytes(entity)
        if result.ok:
            with self.database.write() as session:
                tasks.complete(session, task)
                tasks.note_sent(session, row.config_id, 1, result.files_uploaded,
                                result.bytes_uploaded)
            summary.entities_sent += 1
            batch.complete += 1
            self.reporter.entity_done(row.name, True, size)
            return True
        reason = _reason(task, result)
        if _is_target_problem(result):
            self._target_failed(row, summary, reason,
                                result.status_code in NEEDS_A_PERSON_STATUS_CODES)
            return False
        with self.database.write() as session:
            state = tasks.refuse(session, task, reason, self.settings.backoff,
                                 self.settings.max_failures)
            # Files it took before refusing the record were sent all the same.
            tasks.note_sent(session, row.config_id, 0, result.files_uploaded,
                            result.bytes_uploaded)
        log.info("export %s: %s%s", row.name, reason,
                 "; gave up on it (meteorpi export retry sends it again)" if state == tasks.FAILED else "")
        summary.refused += 1
        summary.last_error = reason
        batch.refused += 1
        self.reporter.entity_done(row.name, False, size)
        return True

    def _target_failed(self, row: ExportConfigRow, summary: TargetSummary, reason: str,
                       needs_a_person: bool = False) -> None:
        """Note a failure of the target (or of this node during a pass): back off, and
        disable the configuration only if ``needs_a_person`` (see tasks.note_target_failure)."""
        reason = _with_advice(reason)
        with self.database.write() as session:
            failures, disabled = tasks.note_target_failure(
                session, row.config_id, reason, self.settings.backoff, self.settings.max_failures,
                needs_a_person)
        summary.target_failures += 1
        summary.last_error = reason
        summary.disabled = summary.disabled or disabled
        log.warning("export %s: target failure %d in a row: %s%s", row.name, failures, reason,
                    "; disabled the configuration" if disabled else "")

    # Helpers -----------------------------------------------------------------------

    @property
    def server_id(self) -> uuid.UUID:
        if self._server_id is None:
            with self.database.read() as session:
                self._server_id = store.server_id(session)
        return self._server_id

    def _client(self, row: ExportConfigRow) -> ImportClient:
        """The configuration's client, kept between passes for its connection; a new one
        if the target's URL or credentials changed."""
        key = (row.target_url, row.user_id, row.password)
        with self._clients_lock:
            cached = self._clients.get(row.config_id)
            if cached is not None and cached[0] == key:
                return cached[1]
            if cached is not None:
                cached[1].close()
            client = ImportClient(
                row.target_url, row.user_id, row.password,
                timeout=(self.settings.connect_timeout, self.settings.read_timeout),
                verify=self.settings.ca_bundle or True, origin_server=self.server_id,
                chunk_size=self.settings.chunk_bytes,
                upload_retry_seconds=self.settings.upload_retry_seconds)
            self._clients[row.config_id] = (key, client)
            return client

    def _batch_sender(self, row: ExportConfigRow, client: ImportClient) -> BatchSender | None:
        """A protocol v2 sender for a target that speaks it (after describe()), else None:
        the legacy handshake then."""
        if not client.speaks_batches():
            return None
        with self._clients_lock:
            sender = self._senders.get(row.config_id)
            if sender is None or sender.client is not client:
                if sender is not None:
                    sender.close()
                sender = BatchSender(client, self.source, concurrency=self.settings.concurrency)
                self._senders[row.config_id] = sender
        return sender

    def _enabled_configs(self) -> list[ExportConfigRow]:
        with self.database.read() as session:
            return list(session.scalars(select(ExportConfigRow)
                                        .where(ExportConfigRow.enabled.is_(True))
                                        .order_by(ExportConfigRow.name)))

    def _take_lease(self, config_id: uuid.UUID) -> bool:
        with self.database.write() as session:
            stale = frozenset(owner for owner in tasks.lease_holders(session)
                              if self._is_dead_local_owner(owner))
            return tasks.take_lease(session, config_id, self.owner, self.settings.lease_seconds,
                                    stale)

    def _is_dead_local_owner(self, owner: str) -> bool:
        try:
            host, pid_text, _ = owner.rsplit(":", 2)
            pid = int(pid_text)
        except ValueError:
            return False
        return host == self.host and pid != os.getpid() and not _pid_alive(pid)

    def _pending_count(self, config_id: uuid.UUID, due_by: int | None = None) -> int:
        conditions = [ExportTaskRow.config_id == config_id, ExportTaskRow.state == tasks.PENDING]
        if due_by is not None:
            conditions.append(ExportTaskRow.next_attempt_at <= due_by)
        with self.database.read() as session:
            return session.scalar(select(func.count()).select_from(ExportTaskRow).where(*conditions))

    def _due_work(self, config_id: uuid.UUID) -> tuple[int, int]:
        """Tasks due now, and the bytes of their files (for progress bars)."""
        now = store.now_ms()
        return (self._pending_count(config_id, now),
                pending_bytes(self.database, config_id, due_by=now))


def _count_uploads(files: int, size: int, *tallies: TargetSummary | Batch) -> None:
    for tally in tallies:
        tally.files_uploaded += files
        tally.bytes_uploaded += size


def _server_id_of(document: dict | None) -> uuid.UUID | None:
    """The target's server id from its discovery document (legacy targets have none)."""
    value = (document or {}).get("server_id")
    try:
        return uuid.UUID(hex=value) if isinstance(value, str) else None
    except ValueError:
        return None


def _is_target_problem(result: ExportResult) -> bool:
    # A ``stuck`` entity is this entity's trouble (the target handles others), so it is
    # refused like a ``failed`` one, as is one a v2 reply calls ``invalid``; a reply
    # outside the protocol says the target is wrong.
    if result.state == "unexpected":
        return True
    return result.state == "rejected" and result.status_code not in ENTITY_STATUS_CODES


def _reason(task: tasks.Task, result: ExportResult) -> str:
    what = f"{task.entity_type} {task.entity_id.hex}"
    if result.state == FAILED:
        return clip(f"{what}: the target answered failed: {result.message or '(no message)'}")
    if result.state == "rejected":
        return clip(f"{what}: the target rejected it with HTTP {result.message}")
    if result.state == INVALID:
        return clip(f"{what}: the target refused it as invalid: {result.message}")
    return clip(f"{what}: {result.message or 'the target answered outside the protocol'}")


def _with_advice(reason: str) -> str:
    """The failure, and what to do about it where that is clear."""
    if " answered 401" in reason:
        return reason + " (check the configuration's user and password)"
    if " answered 403" in reason:
        return reason + " (the target's user needs the import role there)"
    if "HTTP 404" in reason or "HTTP 405" in reason:
        return reason + " (the target URL should be the server's import endpoint, ending in /import)"
    if "CERTIFICATE_VERIFY_FAILED" in reason or "SSLError" in reason:
        return reason + " (the target's TLS certificate is not trusted: see export_ca_bundle)"
    return reason
