"""The migrations are the schema: they build exactly what the typed tables describe."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from meteorpi_server.storage.db import Database
from meteorpi_server.storage.orm import Base


def test_the_migrated_schema_matches_the_models(database_url):
    engine = create_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == [], "models changed without a migration: run alembic revision --autogenerate"


def test_the_database_reports_itself_current(database_url):
    database = Database(database_url)
    database.check_schema()
    assert database.current_revision() == database.head_revision()
    database.dispose()
