"""Searches over stored events and files, as SQL conditions and as pages of results.

Pure SQLAlchemy (no Flask). :func:`event_conditions` and :func:`file_conditions` turn an
:class:`~meteorpi_model.EventSearch` or :class:`~meteorpi_model.FileSearch` into WHERE
conditions over ``event`` or ``file_record``, so other code (the exporter marking tasks,
say) can select matching ids without fetching records::

    select(EventRow.event_id).where(*event_conditions(search))

The conditions mean what the original Meteor Pi server's searches meant:

* ``camera_ids``: the record's camera is one of them;
* ``lat_min`` ... ``long_max``: the location of the record's camera status is within
  the bounds, bounds included;
* ``after`` / ``before``: the record's time is strictly after / before (ms);
* ``after_offset`` / ``before_offset``: the record's time of night, in seconds since the
  previous midday (UTC), is strictly after / before, so 2am to 4am on any night is
  ``after_offset=50400, before_offset=57600``;
* ``event_type``, ``mime_type``, ``semantic_type``: equal;
* ``exclude_events``: only stand-alone files, not those inside an event;
* each meta constraint: some meta entry with the key satisfies it: ``string_equals``
  on string values, ``number_equals`` / ``less`` / ``greater`` on numbers, ``before`` /
  ``after`` (strictly) on dates.

:func:`search_events` and :func:`search_files` apply ordering, ``limit``, ``skip`` and
keyset cursors on top, and load whole records.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from meteorpi_model import Event, EventSearch, FileRecord, FileSearch, MetaConstraint
from meteorpi_model.limits import MAX_TIME_MS

from ..storage.orm import (
    CameraStatusRow,
    EventMetaRow,
    EventRow,
    FileMetaRow,
    FileRecordRow,
)
from ..storage.store import event_from_row, file_record_from_row

T = TypeVar("T")

MS_PER_DAY = 86_400_000
# Adding half a day and taking the remainder counts from the previous midday, and stays
# non-negative for every valid time (times are >= 0), so both databases agree on it.
_MIDDAY_SHIFT_MS = 43_200_000

# Which meta column each constraint type compares, and how.
_META_COMPARISONS = {
    "string_equals": ("string_value", "__eq__"),
    "number_equals": ("number_value", "__eq__"),
    "less": ("number_value", "__lt__"),
    "greater": ("number_value", "__gt__"),
    "before": ("date_value", "__lt__"),
    "after": ("date_value", "__gt__"),
}


def night_offset_ms(time_column) -> ColumnElement[int]:
    """SQL for a time's offset from the previous midday (UTC), in ms (0 .. 86399999)."""
    return (time_column + _MIDDAY_SHIFT_MS) % MS_PER_DAY


def _ms(seconds: int | float) -> Decimal:
    # Through the shortest decimal text, so 57600.3 s is 57600300 ms, not 57600299.99...
    return Decimal(repr(seconds)) * 1000


def _meta_match(meta_row, constraint: MetaConstraint) -> list[ColumnElement[bool]]:
    """Conditions on one meta row: its key, and its value satisfying ``constraint``."""
    column_name, operator = _META_COMPARISONS[constraint.constraint_type]
    value = constraint.value
    if column_name == "number_value":
        value = float(value)
    return [meta_row.key == str(constraint.key),
            getattr(getattr(meta_row, column_name), operator)(value)]


def _meta_condition(meta_row, meta_owner, owner_id, constraint: MetaConstraint,
                    driving: bool = False) -> ColumnElement[bool]:
    """Some meta entry of the owner (``meta_owner == owner_id``) satisfies ``constraint``.

    Both forms mean the same. The correlated EXISTS suits a value many records have
    (read records in order, check each); ``driving`` gives ``owner IN (matching
    entries)``, which lets SQLite start from the meta index when few records have it.
    """
    match = _meta_match(meta_row, constraint)
    if driving:
        return owner_id.in_(select(meta_owner).where(*match))
    return exists().where(meta_owner == owner_id, *match)


def _shared_conditions(search: EventSearch | FileSearch, row, time_column, meta_row,
                       meta_owner, owner_id,
                       driving: frozenset[int] = frozenset()) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if search.camera_ids is not None:
        conditions.append(row.camera_id.in_(list(search.camera_ids)))
    location = []
    for name, column, operator in (("lat_min", CameraStatusRow.latitude, "__ge__"),
                                   ("lat_max", CameraStatusRow.latitude, "__le__"),
                                   ("long_min", CameraStatusRow.longitude, "__ge__"),
                                   ("long_max", CameraStatusRow.longitude, "__le__")):
        bound = getattr(search, name)
        if bound is not None:
            location.append(getattr(column, operator)(float(bound)))
    if location:
        # Statuses are few and events many: the set of statuses in the box is small.
        conditions.append(row.status_id.in_(select(CameraStatusRow.status_id).where(*location)))
    if search.after is not None:
        conditions.append(time_column > search.after)
    if search.before is not None:
        conditions.append(time_column < search.before)
    if search.after_offset is not None:
        # Offsets are whole ms in SQL, so "> 1.5 s" is exactly "> 1500 ms" and
        # "< 1.0004 s" is "< 1001 ms": no float rounding inside either database.
        conditions.append(night_offset_ms(time_column) > math.floor(_ms(search.after_offset)))
    if search.before_offset is not None:
        conditions.append(night_offset_ms(time_column) < math.ceil(_ms(search.before_offset)))
    for index, constraint in enumerate(search.meta_constraints):
        conditions.append(_meta_condition(meta_row, meta_owner, owner_id, constraint,
                                          index in driving))
    return conditions


def event_conditions(search: EventSearch) -> list[ColumnElement[bool]]:
    """WHERE conditions over ``EventRow`` selecting the events ``search`` matches.

    ``limit`` and ``skip`` are not conditions; :func:`search_events` applies them.
    """
    return _event_conditions(search)


def file_conditions(search: FileSearch) -> list[ColumnElement[bool]]:
    """WHERE conditions over ``FileRecordRow`` selecting the files ``search`` matches.

    ``limit`` and ``skip`` are not conditions; :func:`search_files` applies them.
    """
    return _file_conditions(search)


def _event_conditions(search: EventSearch, driving: frozenset[int] = frozenset()
                      ) -> list[ColumnElement[bool]]:
    """:func:`event_conditions`, with the meta constraints numbered in ``driving`` in
    their IN form."""
    conditions = _shared_conditions(search, EventRow, EventRow.event_time,
                                    EventMetaRow, EventMetaRow.event_id, EventRow.event_id,
                                    driving)
    if search.event_type is not None:
        conditions.append(EventRow.event_type == str(search.event_type))
    return conditions


def _file_conditions(search: FileSearch, driving: frozenset[int] = frozenset()
                     ) -> list[ColumnElement[bool]]:
    """:func:`file_conditions`, with the meta constraints numbered in ``driving`` in
    their IN form."""
    conditions = _shared_conditions(search, FileRecordRow, FileRecordRow.file_time,
                                    FileMetaRow, FileMetaRow.file_id, FileRecordRow.file_id,
                                    driving)
    if search.mime_type is not None:
        conditions.append(FileRecordRow.mime_type == search.mime_type)
    if search.semantic_type is not None:
        conditions.append(FileRecordRow.semantic_type == str(search.semantic_type))
    if search.exclude_events:
        conditions.append(FileRecordRow.event_id.is_(None))
    return conditions


# Pages and cursors ---------------------------------------------------------------------

# encode() makes at most 76 characters (57 of JSON); leave room, refuse the absurd.
MAX_CURSOR_LENGTH = 200


class CursorError(ValueError):
    """A cursor this server did not make, or one for a different ordering."""


@dataclass(frozen=True)
class Cursor:
    """A position in a search's ordering: just after the record with this time and id.

    A walk by cursor never repeats or skips a record that existed when it started,
    however many records arrive meanwhile (offsets would shift); records that arrive
    during the walk are returned if they sort after the current position.
    """

    time: int
    record_id: uuid.UUID
    descending: bool = True

    def encode(self) -> str:
        """An opaque, URL-safe text form."""
        text = json.dumps(["d" if self.descending else "a", self.time, self.record_id.hex],
                          separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse :meth:`encode`'s form; raises CursorError for anything else."""
        try:
            # The longest cursor encode() makes is well under this; a longer text is not
            # one of ours, and would only cost memory (or recursion, nested) to parse.
            if len(text) > MAX_CURSOR_LENGTH:
                raise ValueError
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            direction, time, record_id = json.loads(raw)
            # Within the model's times, so the database never sees a number its
            # integer columns cannot hold.
            if (direction not in ("a", "d") or type(time) is not int
                    or not 0 <= time <= MAX_TIME_MS):
                raise ValueError
            return cls(time, uuid.UUID(hex=record_id), direction == "d")
        except (ValueError, TypeError, binascii.Error, AttributeError, RecursionError):
            raise CursorError("is not a cursor this server made (use the 'next' value of a "
                              "previous reply)") from None


@dataclass
class Page(Generic[T]):
    """One page of a search.

    ``count`` is the number of matches ignoring ``limit`` and ``skip`` (only when asked
    for); ``next`` is the cursor just after the last record (None for an empty page),
    and ``more`` says whether records beyond it matched when the page was read.
    """

    items: list[T]
    next: Cursor | None
    more: bool
    count: int | None = None


def _keyset(time_column, id_column, cursor: Cursor) -> ColumnElement[bool]:
    # Spelled out rather than as a row-value comparison so both databases use the
    # (time, id) index for it.
    if cursor.descending:
        return or_(time_column < cursor.time,
                   and_(time_column == cursor.time, id_column < cursor.record_id))
    return or_(time_column > cursor.time,
               and_(time_column == cursor.time, id_column > cursor.record_id))


def _page(session: Session, row_class, time_column, id_column, conditions, count_conditions,
          search, cursor: Cursor | None, descending: bool, with_count: bool, to_model,
          record_id):
    if cursor is not None:
        descending = cursor.descending
        keyset = _keyset(time_column, id_column, cursor)
        conditions = [*conditions, keyset]
        count_conditions = [*count_conditions, keyset]
    order = ((time_column.desc(), id_column.desc()) if descending
             else (time_column.asc(), id_column.asc()))
    rows = list(session.scalars(
        select(row_class).where(*conditions).order_by(*order)
        .offset(search.skip).limit(search.limit + 1)))
    more = len(rows) > search.limit
    rows = rows[:search.limit]
    items = [to_model(row) for row in rows]
    last = rows[-1] if rows else None
    next_cursor = (None if last is None
                   else Cursor(getattr(last, time_column.key), record_id(last), descending))
    count = None
    if with_count:
        # As the original server did: the total is only worth a COUNT when the page does
        # not already tell it (a full page, or an empty one past the end).
        count = search.skip + len(items)
        if more or (not items and search.skip > 0):
            count = session.scalar(
                select(func.count()).select_from(row_class).where(*count_conditions))
    return Page(items, next_cursor, more, count)


# A meta value held by at most this many entries is rare enough to start a search from.
RARE_META_ENTRIES = 2000


def _rare_constraints(session: Session, meta_row, search) -> frozenset[int]:
    """Which of the search's meta constraints few entries satisfy (SQLite only).

    SQLite neither turns a correlated EXISTS into a join nor weighs LIMIT when it plans:
    checking each record in time order scans the whole table for a rare value, and
    starting from the meta index sorts most of the table for a common one. A count
    capped at RARE_META_ENTRIES, over the meta indexes, tells which case this is.
    PostgreSQL weighs both plans itself.
    """
    if session.get_bind().dialect.name != "sqlite":
        return frozenset()
    rare = set()
    for index, constraint in enumerate(search.meta_constraints):
        capped = select(meta_row.key).where(*_meta_match(meta_row, constraint)) \
            .limit(RARE_META_ENTRIES + 1).subquery()
        if session.scalar(select(func.count()).select_from(capped)) <= RARE_META_ENTRIES:
            rare.add(index)
    return frozenset(rare)


def _every_constraint(search) -> frozenset[int]:
    """Every meta constraint, for a count. With no order or limit to serve, reading the
    matching meta entries once (the IN form) is the cheap plan whether the value is
    rare or common; SQLite would run a common value's EXISTS form as a lookup per
    record, over every record. PostgreSQL plans both forms as the same semi-join."""
    return frozenset(range(len(search.meta_constraints)))


def search_events(session: Session, search: EventSearch, cursor: Cursor | None = None,
                  descending: bool = True, with_count: bool = False) -> Page[Event]:
    """The events ``search`` matches, newest first (or oldest first), files included.

    ``search.skip`` records are skipped after the cursor's position (if any) and at most
    ``search.limit`` returned. Ties in time are ordered by event id. A cursor carries its
    own ordering, which wins over ``descending``.
    """
    conditions = _event_conditions(search, _rare_constraints(session, EventMetaRow, search))
    return _page(session, EventRow, EventRow.event_time, EventRow.event_id, conditions,
                 _event_conditions(search, _every_constraint(search)), search, cursor,
                 descending, with_count, event_from_row, lambda row: row.event_id)


def search_files(session: Session, search: FileSearch, cursor: Cursor | None = None,
                 descending: bool = True, with_count: bool = False) -> Page[FileRecord]:
    """The file records ``search`` matches, newest first (or oldest first); as
    :func:`search_events` otherwise."""
    conditions = _file_conditions(search, _rare_constraints(session, FileMetaRow, search))
    return _page(session, FileRecordRow, FileRecordRow.file_time, FileRecordRow.file_id,
                 conditions, _file_conditions(search, _every_constraint(search)), search,
                 cursor, descending, with_count, file_record_from_row, lambda row: row.file_id)
