"""The change feed: every stored record numbered in commit order, and reading it back.

No Flask here. The store's insert functions call :func:`record_arrival` in the
transaction that stores a record; when that transaction commits, its records are
numbered and their cameras' registry rows updated.

Why numbers follow commit order. Numbers come from ``UPDATE feed_counter SET value =
value + n RETURNING value``, run as the transaction's last work (in a ``before_commit``
hook). On PostgreSQL the row lock it takes is held until the transaction ends, so the
next writer gets its numbers only after this one has committed (and is visible:
PostgreSQL publishes a commit before releasing its locks); on SQLite writers are
serialised by ``BEGIN IMMEDIATE`` already. Hence every number at or below the newest
visible one is visible too, with no gaps, and a reader that has seen everything up to N
never later finds a number <= N it has not seen. A rolled-back transaction gives its
numbers back unseen, so no reader sees one reused.

Why only at commit. A transaction may store many records (a batch import does, with a
savepoint each). Were the counter and the camera rows locked at the first record, a
later record's insert could wait for another writer that is itself waiting for the
counter: a deadlock. So until the commit a change row carries a random negative
placeholder (never read, and discarded with its savepoint if that rolls back), and at
the commit the cameras (in sorted order) and then the counter are the last locks taken.
Writers therefore commit one at a time, each holding the counter only for its commit.

Reads hold no state between requests: a reader waiting for news reads the feed table
again whenever its process hears of a commit (PostgreSQL's NOTIFY, from any host: see
``feed_signal``) and every few seconds in any case, or polls every
:data:`POLL_INTERVAL_SECONDS` (SQLite, or while the listener is down), so any number of
workers and hosts sharing one database agree on what is new.
"""
from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from sqlalchemy import bindparam, case, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import feed_signal
from .db import Database
from .orm import CameraRow, ChangeRow, FeedCounterRow, FileRecordRow

ENTITY_TYPES = ("status", "event", "file")
COUNTER_ID = 1
POLL_INTERVAL_SECONDS = 0.1

# session.info keys: the placeholders recorded in the current transaction, and whether
# the commit hook is installed on the session.
_PENDING = "meteorpi.feed.pending"
_HOOKED = "meteorpi.feed.hooked"


# Writing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Arrival:
    entity_type: str
    entity_id: uuid.UUID
    camera_id: str
    camera_ids: tuple[str, ...]
    recorded_at: int
    in_savepoint: bool


@dataclass(frozen=True)
class Arrival:
    """A record stored in the current transaction, as the feed notes it."""

    entity_type: str
    entity_id: uuid.UUID
    camera_id: str
    entity_time: int
    other_camera_ids: tuple[str, ...] = ()  # further cameras the record speaks for


def record_arrival(session: Session, entity_type: str, entity_id: uuid.UUID, camera_id: str,
                   entity_time: int, recorded_at: int,
                   other_camera_ids: Iterable[str] = ()) -> None:
    """Note a record stored in this transaction: it gets its sequence number, and its
    cameras' registry rows are updated, when the transaction commits.

    ``other_camera_ids`` are further cameras the record speaks for (an event's files may
    name another camera).
    """
    record_arrivals(session, [Arrival(entity_type, entity_id, camera_id, entity_time,
                                      tuple(other_camera_ids))], recorded_at)


def record_arrivals(session: Session, arrivals: list[Arrival], recorded_at: int) -> None:
    """:func:`record_arrival` for many records at once: one INSERT for all of them (a
    batch of 500 events cost 500 statements)."""
    if not arrivals:
        return
    for arrival in arrivals:
        if arrival.entity_type not in ENTITY_TYPES:
            raise ValueError(f"unknown entity type {arrival.entity_type!r}")
    # Negative, so never in a reader's range; random, so concurrent writers' placeholders
    # do not collide (and wait on each other) in the primary key.
    placeholders = [-1 - secrets.randbits(62) for _ in arrivals]
    session.execute(insert(ChangeRow), [
        dict(sequence=placeholder, entity_type=arrival.entity_type, entity_id=arrival.entity_id,
             camera_id=arrival.camera_id, entity_time=arrival.entity_time, recorded_at=recorded_at)
        for placeholder, arrival in zip(placeholders, arrivals)])
    if not session.info.get(_HOOKED):
        event.listen(session, "before_commit", _number_arrivals)
        event.listen(session, "after_transaction_end", _forget_arrivals)
        session.info[_HOOKED] = True
    pending = session.info.setdefault(_PENDING, {})
    in_savepoint = session.in_nested_transaction()
    for placeholder, arrival in zip(placeholders, arrivals):
        pending[placeholder] = _Arrival(
            arrival.entity_type, arrival.entity_id, arrival.camera_id,
            tuple(sorted({arrival.camera_id, *arrival.other_camera_ids})), recorded_at,
            in_savepoint)


def _forget_arrivals(session: Session, transaction) -> None:
    if transaction.parent is None:  # the whole transaction ended, committed or not
        session.info.pop(_PENDING, None)


def _number_arrivals(session: Session) -> None:
    """Number this transaction's arrivals, as its last work before committing."""
    if session.in_nested_transaction():
        return  # a savepoint is being released; the outer commit numbers everything
    pending: dict[int, _Arrival] = session.info.pop(_PENDING, {})
    if any(arrival.in_savepoint for arrival in pending.values()):
        # Some savepoints may have rolled back, taking their placeholders with them.
        kept = set(session.scalars(select(ChangeRow.sequence)
                                   .where(ChangeRow.sequence.in_(list(pending)))))
        pending = {placeholder: arrival for placeholder, arrival in pending.items()
                   if placeholder in kept}
    if not pending:
        return
    seen: dict[str, int] = {}
    for arrival in pending.values():
        for camera_id in arrival.camera_ids:
            seen[camera_id] = max(seen.get(camera_id, 0), arrival.recorded_at)
    _note_cameras_seen(session, seen, _counts_stored(session, pending.values()))
    last = next_sequence(session, len(pending))
    first = last - len(pending) + 1
    table = ChangeRow.__table__
    session.connection().execute(
        update(table).where(table.c.sequence == bindparam("placeholder"))
        .values(sequence=bindparam("number")),
        [{"placeholder": placeholder, "number": first + index}
         for index, placeholder in enumerate(pending)])
    if session.get_bind().dialect.name == "postgresql":
        # Delivered at the commit, to readers on every host (see feed_signal).
        session.connection().execute(select(func.pg_notify(feed_signal.CHANNEL, str(last))))


def _upsert(session: Session):
    return {"postgresql": postgresql.insert,
            "sqlite": sqlite.insert}[session.get_bind().dialect.name]


def _counts_stored(session: Session, arrivals: Iterable[_Arrival]
                   ) -> dict[str, tuple[int, int]]:
    """(events, files) that these arrivals add to each camera; an event's files count
    for the cameras they name, which may not be the event's."""
    counts: dict[str, list[int]] = {}
    event_ids = []
    for arrival in arrivals:
        if arrival.entity_type == "event":
            counts.setdefault(arrival.camera_id, [0, 0])[0] += 1
            event_ids.append(arrival.entity_id)
        elif arrival.entity_type == "file":
            counts.setdefault(arrival.camera_id, [0, 0])[1] += 1
    for start in range(0, len(event_ids), 500):  # bounded IN lists for large batches
        for camera_id, files in session.execute(
                select(FileRecordRow.camera_id, func.count())
                .where(FileRecordRow.event_id.in_(event_ids[start:start + 500]))
                .group_by(FileRecordRow.camera_id)):
            counts.setdefault(camera_id, [0, 0])[1] += files
    return {camera_id: (events, files) for camera_id, (events, files) in counts.items()}


def _note_cameras_seen(session: Session, seen: dict[str, int],
                       added: dict[str, tuple[int, int]]) -> None:
    """Create or update the registry rows of cameras heard from at the given times,
    adding ``added``'s numbers of events and files to their counts."""
    # Sorted, so that writers touching several cameras lock their rows in one order.
    # The row lock taken here is held until the commit, so concurrent writers' additions
    # to a count follow one another rather than overwrite.
    latest = max(seen.values(), default=0)
    for camera_id in sorted(seen.keys() | added.keys()):
        at_ms = seen.get(camera_id, latest)
        events, files = added.get(camera_id, (0, 0))
        statement = _upsert(session)(CameraRow).values(
            camera_id=camera_id, first_seen=at_ms, last_seen=at_ms, meta={},
            event_count=events, file_count=files)
        # Hosts' clocks differ a little; last_seen never moves backwards.
        statement = statement.on_conflict_do_update(
            index_elements=[CameraRow.camera_id],
            set_={"last_seen": case((statement.excluded.last_seen > CameraRow.last_seen,
                                     statement.excluded.last_seen),
                                    else_=CameraRow.last_seen),
                  "event_count": CameraRow.event_count + events,
                  "file_count": CameraRow.file_count + files})
        session.execute(statement)


def next_sequence(session: Session, count: int = 1) -> int:
    """Take ``count`` more sequence numbers and return the last of them; the counter
    stays locked until the transaction ends."""
    value = session.scalar(update(FeedCounterRow).where(FeedCounterRow.counter_id == COUNTER_ID)
                           .values(value=FeedCounterRow.value + count)
                           .returning(FeedCounterRow.value))
    if value is not None:
        return value
    # The migration makes the row; if it has gone (tables emptied by hand), go on after
    # the newest change. The upsert makes two writers racing here agree.
    newest = session.scalar(select(func.max(ChangeRow.sequence))) or 0
    statement = _upsert(session)(FeedCounterRow).values(
        counter_id=COUNTER_ID, value=max(newest, 0) + count)
    statement = statement.on_conflict_do_update(
        index_elements=[FeedCounterRow.counter_id],
        set_={"value": FeedCounterRow.value + count})
    return session.scalar(statement.returning(FeedCounterRow.value))


# Reading -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """One entry of the feed: which record was stored, about which camera, and when."""

    sequence: int
    entity_type: str
    entity_id: uuid.UUID
    camera_id: str
    entity_time: int
    recorded_at: int

    def to_dict(self) -> dict:
        """The JSON form served by GET /changes."""
        return {"sequence": self.sequence, "type": self.entity_type,
                "id": self.entity_id.hex, "camera_id": self.camera_id,
                "time": self.entity_time, "recorded_at": self.recorded_at}


@dataclass(frozen=True)
class ChangeFilter:
    """Which changes a reader wants: some entity types, some cameras (None means all)."""

    types: frozenset[str] | None = None
    camera_ids: frozenset[str] | None = None

    def conditions(self, change=ChangeRow) -> list:
        conditions = []
        if self.types is not None:
            conditions.append(change.entity_type.in_(sorted(self.types)))
        if self.camera_ids is not None:
            conditions.append(change.camera_id.in_(sorted(self.camera_ids)))
        return conditions


EVERYTHING = ChangeFilter()


@dataclass(frozen=True)
class ChangePage:
    """Changes after some sequence number, oldest first.

    ``last`` is where to resume: the last change returned when ``more`` is true (the
    limit cut the page short), otherwise the newest sequence number examined, so a
    filtered reader does not scan again what it has already been told about.
    """

    changes: list[Change]
    last: int
    more: bool


def newest_sequence(session: Session) -> int:
    """The newest sequence number stored (0 when the feed is empty)."""
    return session.scalar(select(func.max(ChangeRow.sequence))) or 0


class CursorAhead(ValueError):
    """A reader's cursor is past the newest change: it was not read from this database
    as it is now (a database restored from a backup, another server's feed). Reading on
    from it would skip, without a word, the changes numbered up to it."""

    def __init__(self, since: int, newest: int):
        super().__init__(f"the cursor {since} is past the newest change, {newest}: this "
                         f"server's feed is not the one it was read from (restored from a "
                         f"backup, say); start again from since=0, or from {newest} to "
                         "follow only what arrives from now on")
        self.since, self.newest = since, newest


def _change(row: ChangeRow) -> Change:
    return Change(row.sequence, row.entity_type, row.entity_id, row.camera_id,
                  row.entity_time, row.recorded_at)


def read_changes(session: Session, since: int, limit: int, which: ChangeFilter = EVERYTHING,
                 latest: bool = False) -> ChangePage:
    """The changes numbered after ``since`` that ``which`` selects, at most ``limit``.

    With ``latest`` only the newest such change of each camera is returned. Raises
    CursorAhead when ``since`` is past the newest change.
    """
    # Everything up to the newest number is committed (see the module's docstring), so
    # bounding the read by it makes "nothing more up to here" a fact the reader can keep.
    head = newest_sequence(session)
    if head < since:
        raise CursorAhead(since, head)
    if head == since:
        return ChangePage([], since, False)
    in_range = [ChangeRow.sequence > since, ChangeRow.sequence <= head]
    if latest:
        newest_of_camera = (
            select(func.max(ChangeRow.sequence))
            .where(ChangeRow.camera_id == CameraRow.camera_id, *in_range, *which.conditions())
            .correlate(CameraRow).scalar_subquery())
        # One index probe per camera, rather than grouping every change since ``since``.
        cameras = select(newest_of_camera).select_from(CameraRow)
        if which.camera_ids is not None:
            cameras = cameras.where(CameraRow.camera_id.in_(sorted(which.camera_ids)))
        query = select(ChangeRow).where(ChangeRow.sequence.in_(cameras))
    else:
        query = select(ChangeRow).where(*in_range, *which.conditions())
    rows = list(session.scalars(query.order_by(ChangeRow.sequence).limit(limit + 1)))
    more = len(rows) > limit
    changes = [_change(row) for row in rows[:limit]]
    return ChangePage(changes, changes[-1].sequence if more else head, more)


def wait_for_changes(database: Database, since: int, limit: int, timeout_seconds: float,
                     which: ChangeFilter = EVERYTHING, latest: bool = False,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] | None = None) -> ChangePage:
    """:func:`read_changes`, waiting up to ``timeout_seconds`` for at least one change.

    Between looks it waits on the database's change signal (woken by a commit on any
    host, on PostgreSQL), or calls ``sleep`` if given. Each look is its own short read
    transaction: SQLite's snapshot would otherwise never show the new commits, and no
    connection is held while waiting.
    """
    deadline = clock() + timeout_seconds
    signal = database.change_signal if sleep is None else None
    while True:
        mark = signal.mark() if signal else 0
        with database.read() as session:
            page = read_changes(session, since, limit, which, latest)
        if page.changes or clock() >= deadline:
            return page
        since = page.last
        remaining = max(0.0, deadline - clock())
        if signal:
            signal.wait(mark, remaining)
        else:
            sleep(min(POLL_INTERVAL_SECONDS, remaining))


def follow_changes(database: Database, since: int, which: ChangeFilter = EVERYTHING,
                   batch: int = 500, idle_seconds: float = 15.0,
                   stop: Callable[[], bool] = lambda: False,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] | None = None) -> Iterator[Change | None]:
    """Every change after ``since`` as it is stored, until ``stop()`` (asked before each
    poll) is true; None after each ``idle_seconds`` without one (time for a heartbeat).
    Raises CursorAhead if ``since`` is, or comes to be, past the newest change."""
    quiet_since = clock()
    signal = database.change_signal if sleep is None else None
    while not stop():
        mark = signal.mark() if signal else 0
        with database.read() as session:
            page = read_changes(session, since, batch, which)
        since = page.last
        if page.changes:
            yield from page.changes
            quiet_since = clock()
        elif clock() - quiet_since >= idle_seconds:
            yield None
            quiet_since = clock()
        if not page.more:
            if signal:
                signal.wait(mark, max(0.0, idle_seconds - (clock() - quiet_since)))
            else:
                sleep(POLL_INTERVAL_SECONDS)


def parse_types(values: Sequence[str]) -> frozenset[str]:
    """Entity types from ``values`` (each may list several, comma-separated).

    Raises ValueError naming an unknown type.
    """
    types = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(types - set(ENTITY_TYPES))
    if unknown:
        raise ValueError(f"has unknown type(s) {', '.join(unknown)}; "
                         f"the types are {', '.join(ENTITY_TYPES)}")
    return frozenset(types)
