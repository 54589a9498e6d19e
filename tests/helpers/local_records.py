"""Storing records the way a server stores its own (no import protocol), and reading
the change feed back, for the search, camera and feed tests."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from meteorpi_model import CameraStatus, Event, FileRecord
from meteorpi_server.storage import store
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.orm import Base

# Rows the migrations create belong to the schema (as in conftest).
KEEP_TABLES = {"server_info"}


def store_locally(database: Database, *entities: CameraStatus | Event | FileRecord) -> None:
    """Store each entity in its own transaction, with its files' bytes noted as present."""
    for entity in entities:
        with database.write() as session:
            if isinstance(entity, CameraStatus):
                store.insert_status(session, entity)
                continue
            records = entity.files if isinstance(entity, Event) else [entity]
            for record in records:
                store.record_blobs(session, [(record.file_id, record.md5 or "0" * 32,
                                              record.file_size)])
            insert = store.insert_event if isinstance(entity, Event) else store.insert_file_record
            assert insert(session, entity) == []


def fresh_database_url(kind: str, directory: Path, sqlite_template: Path | None = None,
                       postgres_url: str | None = None) -> str:
    """An empty migrated database for a module-scoped fixture: a copy of the SQLite
    template, or the session's PostgreSQL database with its tables emptied."""
    if kind == "sqlite":
        path = directory / f"{uuid.uuid4().hex}.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables
                          if table.name not in KEEP_TABLES)
        connection.execute(text(f"TRUNCATE {names} CASCADE"))
    engine.dispose()
    return postgres_url


def backend(url: str) -> str:
    return make_url(url).get_backend_name()

