"""Reading the store in ways only tests need (the server itself never asks these)."""
from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from meteorpi_model import EventSearch, FileSearch
from meteorpi_server.reading import searches
from meteorpi_server.storage.orm import EventRow, FileRecordRow, StoredBlobRow


def count_events(session: Session, search: EventSearch) -> int:
    """How many events ``search`` matches, ignoring ``limit`` and ``skip``: counted
    independently of search_events' own count, to check it."""
    conditions = searches.event_conditions(search)
    return session.scalar(select(func.count()).select_from(EventRow).where(*conditions))


def count_files(session: Session, search: FileSearch) -> int:
    """How many files ``search`` matches, ignoring ``limit`` and ``skip``."""
    conditions = searches.file_conditions(search)
    return session.scalar(select(func.count()).select_from(FileRecordRow).where(*conditions))


def blob_md5(session: Session, file_id: uuid.UUID) -> str | None:
    """The md5 the store noted for ``file_id``'s bytes, or None if it holds none."""
    return session.scalar(select(StoredBlobRow.md5).where(StoredBlobRow.file_id == file_id))
