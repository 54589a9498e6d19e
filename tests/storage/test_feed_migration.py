"""Upgrading a database that already holds records numbers them and registers their cameras."""
from __future__ import annotations

import secrets
import uuid

import factories
import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from local_records import store_locally
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from meteorpi_server.storage.db import MIGRATIONS_DIR, Database
from meteorpi_server.storage.orm import (
    CameraRow,
    CameraStatusRow,
    ChangeRow,
    EventRow,
    FeedCounterRow,
    FileRecordRow,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request, tmp_path):
    """An empty database without any schema, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    session_url = make_url(request.getfixturevalue("postgres_database"))
    name = f"meteorpi_upgrade_{secrets.token_hex(4)}"
    admin = create_engine(session_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield session_url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def status_row(camera_id: str, received_at: int) -> dict:
    return dict(status_id=uuid.uuid4(), camera_id=camera_id, valid_from=factories.NIGHT,
                software_version=1, latitude=52.0, longitude=0.1, gps=True, location_error=1.0,
                altitude=45.0, azimuth=180.0, orientation_error=1.0, rotation=0.0, width=60.0,
                regions=[], received_at=received_at)


def event_row(status: dict, received_at: int) -> dict:
    return dict(event_id=uuid.uuid4(), camera_id=status["camera_id"], event_time=factories.NIGHT,
                event_type="meteorpi:meteor", status_id=status["status_id"], received_at=received_at)


def file_row(status: dict, received_at: int, event: dict | None = None) -> dict:
    return dict(file_id=uuid.uuid4(), camera_id=status["camera_id"], mime_type="image/png",
                semantic_type="meteorpi:image", file_time=factories.NIGHT + 5, file_size=1,
                status_id=status["status_id"], received_at=received_at,
                event_id=event and event["event_id"], event_position=0 if event else None)


def test_upgrading_numbers_existing_records_in_the_order_they_arrived(unmigrated_url):
    database = Database(unmigrated_url)
    database.upgrade("0002")
    north, south = status_row("north", 100), status_row("south", 300)
    early_event, late_event = event_row(north, 200), event_row(south, 300)
    inside, alone = file_row(north, 200, early_event), file_row(north, 250)
    with database.engine.begin() as connection:
        connection.execute(insert(CameraStatusRow.__table__), [south, north])
        connection.execute(insert(EventRow.__table__), [late_event, early_event])
        connection.execute(insert(FileRecordRow.__table__), [alone, inside])

    database.upgrade()

    with database.read() as session:
        changes = [(row.sequence, row.entity_type, row.entity_id, row.recorded_at)
                   for row in session.scalars(select(ChangeRow).order_by(ChangeRow.sequence))]
        cameras = {row.camera_id: (row.first_seen, row.last_seen, row.meta)
                   for row in session.scalars(select(CameraRow))}
        counter = session.scalar(select(FeedCounterRow.value))
    # Same arrival time: the status before the event that needs it. Files inside events
    # are part of their event.
    assert changes == [
        (1, "status", north["status_id"], 100), (2, "event", early_event["event_id"], 200),
        (3, "file", alone["file_id"], 250), (4, "status", south["status_id"], 300),
        (5, "event", late_event["event_id"], 300)]
    assert cameras == {"north": (100, 250, {}), "south": (300, 300, {})}
    assert counter == 5

    store_locally(database, factories.status("north"))
    with database.read() as session:
        assert session.scalar(select(ChangeRow.sequence).order_by(ChangeRow.sequence.desc())) == 6
    database.dispose()


def test_the_migration_can_be_undone_and_redone(unmigrated_url):
    database = Database(unmigrated_url)
    database.upgrade()  # records are stored by today's code, into today's schema
    store_locally(database, factories.status("north"))
    downgrade(database, "0002")
    database.upgrade("0003")
    with database.read() as session:
        assert session.scalar(select(FeedCounterRow.value)) == 1
        assert session.scalar(select(CameraRow.camera_id)) == "north"
    database.dispose()


def downgrade(database: Database, revision: str) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with database.engine.connect() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
        connection.commit()
