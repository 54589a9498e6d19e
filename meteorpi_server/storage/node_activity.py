"""Which nodes import here: per importing user (a camera node's login), what it sent in
each hour and in all, when it first and last imported, the server id it last announced
(``Meteorpi-Origin``) and the last problem it met (a refusal, an md5 mismatch).

:class:`NodeActivityLog` records; :func:`list_nodes` reads (``GET /imports/nodes``).

Each write is one short transaction of upserts that add to the stored figures in the
database (``INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n``), so gunicorn
workers and hosts sharing a database may write the same user's at the same moment and
every count is kept. The server's log adds records up in memory and writes them about
once a second. Recording is a side note: a failure is logged and never reaches the
import that called it.
"""
from __future__ import annotations

import atexit
import datetime
import logging
import threading
import uuid
import weakref
from dataclasses import dataclass, field

from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .db import Database
from .orm import NodeActivityHourRow, NodeActivityRow
from .store import now_ms as _now_ms

log = logging.getLogger("meteorpi.node_activity")

HOUR_MS = 3600 * 1000
#: Hour buckets are kept this long (the API shows the last 24 hours; the rest is slack
#: for a look back by hand).
KEEP_HOURS_MS = 8 * 24 * HOUR_MS
#: The window of ``last_24h``: the current hour and the 23 before it.
WINDOW_HOURS = 24
MESSAGE_LIMIT = 2000

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

#: Problem kinds the import code records.
REFUSED = "refused"            # the import answered ``failed``
MD5_MISMATCH = "md5_mismatch"  # uploaded bytes did not match their md5


def hour_of(ms: int) -> int:
    """The start of the hour holding ``ms``."""
    return ms - ms % HOUR_MS


def iso(ms: int | None) -> str | None:
    """``ms`` as an ISO-8601 UTC time with milliseconds (``2026-12-07T05:10:00.123Z``)."""
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 3] + "..."


@dataclass
class _Pending:
    """What one user sent since the last flush."""

    first: int
    last: int
    origin: uuid.UUID | None = None
    entities: int = 0
    bytes_received: int = 0
    problem: tuple[str, str, int] | None = None  # kind, message, time
    hours: dict[int, list[int]] = field(default_factory=dict)  # hour -> [entities, bytes]

    def add(self, origin, entities, bytes_received, problem, problem_kind, now) -> None:
        self.first, self.last = min(self.first, now), max(self.last, now)
        self.origin = origin or self.origin
        self.entities += entities
        self.bytes_received += bytes_received
        if problem is not None:
            self.problem = (problem_kind or "problem", _clip(problem), now)
        if entities or bytes_received:
            counts = self.hours.setdefault(hour_of(now), [0, 0])
            counts[0] += entities
            counts[1] += bytes_received


#: Every log that adds up in memory, so that what they hold is written at exit.
_BUFFERING: weakref.WeakSet[NodeActivityLog] = weakref.WeakSet()


def flush_all() -> None:
    """Write what every log of this process holds (at exit; and between tests)."""
    for each in list(_BUFFERING):
        each.flush()


atexit.register(flush_all)


class NodeActivityLog:
    """Records imports per user; one per app (its threads share it).

    With ``flush_seconds`` (the server's: 1 s), records are added up in memory and
    written together at most that often, in one transaction, so a legacy exporter's
    request per entity does not cost a second commit; a crash loses at most the last
    second's figures (never an import). With 0, each record is written at once.
    """

    def __init__(self, database: Database, flush_seconds: float = 0):
        self.database = database
        self.flush_seconds = flush_seconds
        self._pruned_hour: int | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._timer: threading.Timer | None = None
        # Held while writing, so that a flush returns only once earlier records are written.
        self._writing = threading.Lock()
        if flush_seconds:
            _BUFFERING.add(self)

    def record(self, user: str, origin: uuid.UUID | None, *, entities: int = 0,
               bytes_received: int = 0, problem: str | None = None,
               problem_kind: str | None = None, now_ms: int | None = None) -> None:
        """Note an import by ``user`` (announcing ``origin``): ``entities`` stored and
        ``bytes_received`` of file data, or a ``problem`` (with its ``problem_kind``).
        Never raises: a failure is logged."""
        now = _now_ms() if now_ms is None else now_ms
        with self._lock:
            pending = self._pending.setdefault(user, _Pending(now, now))
            pending.add(origin, entities, bytes_received, problem, problem_kind, now)
            if self.flush_seconds and self._timer is None:
                self._timer = threading.Timer(self.flush_seconds, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if not self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write what was recorded since the last flush. Never raises: a failure is
        logged, and those figures are lost (they are statistics, not records)."""
        with self._writing:
            with self._lock:
                pending, self._pending, self._timer = self._pending, {}, None
            if not pending:
                return
            try:
                self._write(pending, max(sent.last for sent in pending.values()))
            except Exception:
                log.exception("could not record the import activity of user %s",
                              ", ".join(pending))

    def _write(self, pending: dict[str, _Pending], now: int) -> None:
        hour = hour_of(now)
        with self._lock:
            prune = self._pruned_hour != hour
            if prune:
                self._pruned_hour = hour
        try:
            with self.database.write() as session:
                insert = _INSERTS[session.get_bind().dialect.name]
                for user, sent in pending.items():
                    self._upsert_node(session, insert, user, sent)
                    for bucket, (entities, bytes_received) in sent.hours.items():
                        self._upsert_hour(session, insert, user, bucket, entities,
                                          bytes_received)
                if prune:
                    # The first write of an hour in this process: old hours go.
                    session.execute(delete(NodeActivityHourRow).where(
                        NodeActivityHourRow.hour_start < hour - KEEP_HOURS_MS))
        except BaseException:
            if prune:
                with self._lock:
                    self._pruned_hour = None  # try again next time
            raise

    @staticmethod
    def _upsert_node(session: Session, insert, user: str, sent: _Pending) -> None:
        kind, message, at = sent.problem or (None, None, None)
        statement = insert(NodeActivityRow).values(
            user_name=user, origin_server=sent.origin, first_import_at=sent.first,
            last_import_at=sent.last, entities_total=sent.entities,
            bytes_total=sent.bytes_received, problem_kind=kind, problem_message=message,
            problem_at=at)
        table, new = NodeActivityRow, statement.excluded
        # A newer problem replaces the one held (records may commit out of order).
        has_problem = and_(new.problem_at.is_not(None),
                           or_(table.problem_at.is_(None), new.problem_at >= table.problem_at))
        statement = statement.on_conflict_do_update(
            index_elements=[table.user_name],
            set_={
                # Records from workers may commit out of order: keep the extremes.
                "first_import_at": case((new.first_import_at < table.first_import_at,
                                         new.first_import_at), else_=table.first_import_at),
                "last_import_at": case((new.last_import_at > table.last_import_at,
                                        new.last_import_at), else_=table.last_import_at),
                # Uploads do not carry the origin header: they keep the one announced.
                "origin_server": func.coalesce(new.origin_server, table.origin_server),
                "entities_total": table.entities_total + new.entities_total,
                "bytes_total": table.bytes_total + new.bytes_total,
                "problem_kind": case((has_problem, new.problem_kind), else_=table.problem_kind),
                "problem_message": case((has_problem, new.problem_message),
                                        else_=table.problem_message),
                "problem_at": case((has_problem, new.problem_at), else_=table.problem_at),
            })
        session.execute(statement)

    @staticmethod
    def _upsert_hour(session: Session, insert, user: str, hour: int, entities: int,
                     bytes_received: int) -> None:
        statement = insert(NodeActivityHourRow).values(
            user_name=user, hour_start=hour, entities=entities, bytes_received=bytes_received)
        table, new = NodeActivityHourRow, statement.excluded
        session.execute(statement.on_conflict_do_update(
            index_elements=[table.user_name, table.hour_start],
            set_={"entities": table.entities + new.entities,
                  "bytes_received": table.bytes_received + new.bytes_received}))


@dataclass(frozen=True)
class NodeActivity:
    """One importing user, as ``GET /imports/nodes`` shows it."""

    user: str
    origin_server: uuid.UUID | None
    first_import_at: int
    last_import_at: int
    last_24h_entities: int
    last_24h_bytes: int
    total_entities: int
    total_bytes: int
    problem_kind: str | None = None
    problem_message: str | None = None
    problem_at: int | None = None

    def to_dict(self) -> dict:
        problem = None
        if self.problem_at is not None:
            problem = {"kind": self.problem_kind, "message": self.problem_message,
                       "at": iso(self.problem_at), "at_ms": self.problem_at}
        return {
            "user": self.user,
            "origin_server": self.origin_server.hex if self.origin_server else None,
            "first_import_at": iso(self.first_import_at),
            "first_import_at_ms": self.first_import_at,
            "last_import_at": iso(self.last_import_at),
            "last_import_at_ms": self.last_import_at,
            "last_24h": {"entities": self.last_24h_entities, "bytes": self.last_24h_bytes},
            "total": {"entities": self.total_entities, "bytes": self.total_bytes},
            "last_problem": problem,
        }


def list_nodes(session: Session, now_ms: int | None = None) -> list[NodeActivity]:
    """Every user that imported here, most recent first; ``last_24h`` sums the current
    hour and the 23 before it (two queries, whatever the number of users)."""
    now = _now_ms() if now_ms is None else now_ms
    since = hour_of(now) - (WINDOW_HOURS - 1) * HOUR_MS
    recent = {user: (entities, size) for user, entities, size in session.execute(
        select(NodeActivityHourRow.user_name, func.sum(NodeActivityHourRow.entities),
               func.sum(NodeActivityHourRow.bytes_received))
        .where(NodeActivityHourRow.hour_start >= since)
        .group_by(NodeActivityHourRow.user_name))}
    rows = session.scalars(select(NodeActivityRow).order_by(NodeActivityRow.last_import_at.desc(),
                                                            NodeActivityRow.user_name))
    nodes = []
    for row in rows:
        entities, size = recent.get(row.user_name, (0, 0))
        nodes.append(NodeActivity(
            user=row.user_name, origin_server=row.origin_server,
            first_import_at=row.first_import_at, last_import_at=row.last_import_at,
            last_24h_entities=int(entities or 0), last_24h_bytes=int(size or 0),
            total_entities=row.entities_total, total_bytes=row.bytes_total,
            problem_kind=row.problem_kind, problem_message=row.problem_message,
            problem_at=row.problem_at))
    return nodes
