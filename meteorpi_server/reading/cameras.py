"""The camera registry: which cameras this server has heard from, and what about them.

No Flask here. The ``camera`` rows, with each camera's numbers of events and files, are
kept up to date by :func:`feed.record_arrival` in every transaction that stores a
record; this module reads them, with each camera's status, and stores the JSON metadata
that camera admins attach.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from meteorpi_model import CameraStatus

from ..storage.orm import CameraRow, CameraStatusRow, EventRow, FileRecordRow
from ..storage.store import status_from_row

#: Largest metadata document a camera may carry, as compact JSON.
MAX_META_BYTES = 64 * 1024
#: Deepest nesting of objects and lists in a camera's metadata (the document itself is 1).
MAX_META_DEPTH = 32


class CameraMetaError(ValueError):
    """Camera metadata that cannot be stored; the message says why."""


@dataclass
class Camera:
    """One camera as the registry sees it.

    ``first_seen`` and ``last_seen`` are when records about it arrived here (ms);
    ``connected`` means the last one arrived within the window asked for. ``status`` is
    the status in force now, if any; ``statuses`` is filled only when the history was
    asked for, oldest first.
    """

    camera_id: str
    first_seen: int
    last_seen: int
    connected: bool
    meta: dict
    event_count: int = 0
    file_count: int = 0
    status: CameraStatus | None = None
    statuses: list[CameraStatus] | None = field(default=None)

    def to_dict(self) -> dict:
        """The JSON form served by GET /cameras and GET /cameras/<camera_id>."""
        data: dict[str, Any] = {
            "camera_id": self.camera_id, "connected": self.connected,
            "first_seen": self.first_seen, "last_seen": self.last_seen,
            "event_count": self.event_count, "file_count": self.file_count,
            "meta": self.meta,
        }
        if self.status is not None:
            data["status"] = self.status.to_dict()
        if self.statuses is not None:
            data["statuses"] = [status.to_dict() for status in self.statuses]
        return data


def _in_force_at(time_ms: int):
    return [CameraStatusRow.valid_from <= time_ms,
            or_(CameraStatusRow.valid_to.is_(None), CameraStatusRow.valid_to > time_ms)]


def status_at(session: Session, camera_id: str, time_ms: int) -> CameraStatus | None:
    """The camera's status in force at ``time_ms``: the newest one that began by then and
    had not ended (``valid_from <= time < valid_to``)."""
    row = session.scalars(
        select(CameraStatusRow)
        .where(CameraStatusRow.camera_id == camera_id, *_in_force_at(time_ms))
        .order_by(CameraStatusRow.valid_from.desc(), CameraStatusRow.status_id.desc())
        .limit(1)).first()
    return None if row is None else status_from_row(row)


def status_history(session: Session, camera_id: str) -> list[CameraStatus]:
    """Every status of the camera, oldest first."""
    return [status_from_row(row) for row in session.scalars(
        select(CameraStatusRow).where(CameraStatusRow.camera_id == camera_id)
        .order_by(CameraStatusRow.valid_from, CameraStatusRow.status_id))]


def _statuses_in_force(session: Session, camera_ids: list[str], now_ms: int) -> dict[str, CameraStatus]:
    current: dict[str, CameraStatus] = {}
    rows = session.scalars(
        select(CameraStatusRow)
        .where(CameraStatusRow.camera_id.in_(camera_ids), *_in_force_at(now_ms))
        .order_by(CameraStatusRow.valid_from, CameraStatusRow.status_id))
    for row in rows:  # oldest first, so the newest in force wins
        current[row.camera_id] = status_from_row(row)
    return current


def list_cameras(session: Session, now_ms: int, connected_seconds: int,
                 connected_only: bool = False) -> list[Camera]:
    """Every camera heard from (or only the connected ones), ordered by camera id."""
    since = now_ms - connected_seconds * 1000
    query = select(CameraRow).order_by(CameraRow.camera_id)
    if connected_only:
        query = query.where(CameraRow.last_seen >= since)
    rows = list(session.scalars(query))
    if not rows:
        return []
    statuses = _statuses_in_force(session, [row.camera_id for row in rows], now_ms)
    return [Camera(row.camera_id, row.first_seen, row.last_seen, row.last_seen >= since,
                   row.meta, row.event_count, row.file_count, statuses.get(row.camera_id))
            for row in rows]


def get_camera(session: Session, camera_id: str, now_ms: int,
               connected_seconds: int) -> Camera | None:
    """One camera with its status history, or None if nothing about it has arrived."""
    row = session.get(CameraRow, camera_id)
    if row is None:
        return None
    return Camera(
        row.camera_id, row.first_seen, row.last_seen,
        row.last_seen >= now_ms - connected_seconds * 1000, row.meta,
        row.event_count, row.file_count, status_at(session, camera_id, now_ms), status_history(session, camera_id))


def _depth(value: Any) -> int:
    """How deeply objects and lists nest in ``value`` (a scalar is 0), without recursing."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = (item.values() if isinstance(item, dict)
                    else item if isinstance(item, list) else None)
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_META_DEPTH:
            break  # deep enough to refuse; no need to walk the rest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def recount(session: Session) -> None:
    """Set every camera's event and file counts from the records stored (as migration
    0006 did), for records written around the store, by a bulk load say."""
    for column, row, owner in ((CameraRow.event_count, EventRow, EventRow.camera_id),
                               (CameraRow.file_count, FileRecordRow, FileRecordRow.camera_id)):
        counted = (select(func.count()).select_from(row)
                   .where(owner == CameraRow.camera_id).scalar_subquery())
        session.execute(update(CameraRow).values({column: counted}))


def check_meta(meta: Any) -> dict:
    """``meta`` if it is a JSON object within :data:`MAX_META_BYTES` and
    :data:`MAX_META_DEPTH`; else CameraMetaError."""
    if not isinstance(meta, dict):
        raise CameraMetaError("camera metadata must be a JSON object, such as "
                              '{"contact": "someone@example.org"}')
    # Checked first: writing out (and later reading back) a document nested hundreds
    # deep runs out of stack, and no camera's description needs more than a few levels.
    if _depth(meta) > MAX_META_DEPTH:
        raise CameraMetaError(f"camera metadata nests objects and lists more than "
                              f"{MAX_META_DEPTH} deep")
    size = len(json.dumps(meta, separators=(",", ":")).encode())
    if size > MAX_META_BYTES:
        raise CameraMetaError(f"camera metadata is {size} bytes as JSON; the limit is "
                              f"{MAX_META_BYTES}")
    return meta


def set_meta(session: Session, camera_id: str, meta: dict) -> bool:
    """Replace the camera's metadata; False if nothing about the camera has arrived."""
    result = session.execute(update(CameraRow).where(CameraRow.camera_id == camera_id)
                             .values(meta=check_meta(meta)))
    return result.rowcount == 1
