"""Marking: every entity a configuration's search matches, and not yet a task of that
configuration, becomes a pending task, in one ``INSERT ... SELECT``.

Records that came from the configuration's own target (their ``origin_server`` is the
target's server id) are left out, so two servers exporting to each other do not send
records back and forth.
"""
from __future__ import annotations

from sqlalchemy import delete, exists, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from meteorpi_model import EventSearch

from ..reading import searches
from ..storage.orm import EventRow, ExportConfigRow, ExportTaskRow, FileRecordRow
from ..storage.store import now_ms
from .configs import search_from_row
from .tasks import DONE, PENDING

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def _selection(row: ExportConfigRow):
    """(entity table, id column, time column, origin column, conditions) for the search."""
    search = search_from_row(row)
    if isinstance(search, EventSearch):
        return ("event", EventRow.event_id, EventRow.event_time, EventRow.origin_server,
                searches.event_conditions(search))
    # A file configuration exports stand-alone files: files of an event travel inside it.
    conditions = searches.file_conditions(search) + [FileRecordRow.event_id.is_(None)]
    return ("file", FileRecordRow.file_id, FileRecordRow.file_time, FileRecordRow.origin_server,
            conditions)


def mark(session: Session, row: ExportConfigRow, now: int | None = None) -> int:
    """Add a pending task for each new match of ``row``'s search; returns how many."""
    now = now_ms() if now is None else now
    entity_type, id_column, time_column, origin_column, conditions = _selection(row)
    conditions = list(conditions)
    if row.target_server_id is not None:
        conditions.append(or_(origin_column.is_(None), origin_column != row.target_server_id))
    already_marked = exists().where(ExportTaskRow.config_id == row.config_id,
                                    ExportTaskRow.entity_id == id_column)
    matches = select(
        literal(row.config_id, ExportTaskRow.config_id.type), id_column,
        literal(entity_type, ExportTaskRow.entity_type.type), time_column,
        literal(PENDING, ExportTaskRow.state.type), literal(0, ExportTaskRow.attempts.type),
        literal(now, ExportTaskRow.created_at.type), literal(0, ExportTaskRow.next_attempt_at.type),
    ).where(*conditions, ~already_marked)
    insert = _INSERTS[session.get_bind().dialect.name](ExportTaskRow).from_select(
        ["config_id", "entity_id", "entity_type", "entity_time", "state", "attempts",
         "created_at", "next_attempt_at"], matches)
    # Two exporters marking the same configuration at once both pass NOT EXISTS on
    # PostgreSQL; the conflict clause lets the second one add nothing instead of failing.
    result = session.execute(insert.on_conflict_do_nothing(),
                             execution_options={"preserve_rowcount": True})
    return max(result.rowcount or 0, 0)


def unmark(session: Session, row: ExportConfigRow) -> int:
    """Drop the tasks not yet done whose entity ``row``'s search no longer matches (after
    an edit narrowed it); returns how many. Done tasks stay: the target holds those."""
    _, id_column, _, _, conditions = _selection(row)
    still_matching = select(id_column).where(*conditions)
    result = session.execute(
        delete(ExportTaskRow).where(ExportTaskRow.config_id == row.config_id,
                                    ExportTaskRow.state != DONE,
                                    ExportTaskRow.entity_id.not_in(still_matching)),
        execution_options={"synchronize_session": False})
    return max(result.rowcount or 0, 0)
