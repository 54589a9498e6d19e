"""The migrations are the schema: they build exactly what the typed tables describe."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from meteorpi_server.storage.db import SCHEMA_HEAD, Database, SchemaError
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


def test_the_code_knows_the_newest_migration(database_url):
    # check_schema compares the database with SCHEMA_HEAD without loading alembic: a new
    # migration must move it too.
    database = Database(database_url)
    assert database.head_revision() == SCHEMA_HEAD
    database.dispose()


def test_a_database_one_migration_behind_is_refused_saying_what_to_run(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'old.db'}", create=True)
    database.upgrade("0007")
    with pytest.raises(SchemaError, match=r"at revision 0007, the code needs 0008: run 'meteorpi db upgrade'"):
        database.check_schema()
    database.upgrade()
    database.check_schema()
    database.dispose()
