"""Database engine, sessions and migrations for one app (or one CLI command).

Nothing here is global: each :class:`Database` owns its engine, so tests, CLI commands
and gunicorn workers each build their own.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

def _migrations_dir() -> Path:
    """``migrations/`` of the source tree this package runs from, or else the copy an
    installed (not editable) package keeps under its environment's prefix."""
    source_tree = Path(__file__).resolve().parents[2] / "migrations"
    installed = Path(sys.prefix) / "share" / "meteorpi" / "migrations"
    return source_tree if (source_tree / "env.py").exists() or not installed.exists() else installed


MIGRATIONS_DIR = _migrations_dir()
# The newest migration under migrations/versions (a test keeps the two in step). Every
# command checks the schema first; knowing the head spares it importing alembic and
# reading the migration scripts, a tenth of a second, unless the schema is behind.
SCHEMA_HEAD = "0008"


class SchemaError(RuntimeError):
    """The database schema is missing or out of date."""


class NoDatabase(SchemaError):
    """The SQLite database file does not exist, and was not to be created."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"no database file at {path}")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        # Take over transaction control from the sqlite3 module so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: a record we answered 'complete' for must survive power loss,
        # because the exporter will never send it again.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        # Writers take the write lock up front: a deferred transaction that later tries to
        # write fails at once with "database is locked" when another worker got there first.
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """An engine and two kinds of session: read, and write (one transaction each)."""

    def __init__(self, url: str, echo: bool = False, create: bool = True):
        """``create=False`` raises NoDatabase, creating nothing, where an SQLite file
        is missing: SQLite would otherwise make an empty database (and we its folder)
        wherever a relative path happens to point from the current directory."""
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite and self.url.database and self.url.database != ":memory:":
            path = Path(self.url.database)
            if not create and not path.exists():
                raise NoDatabase(path.absolute())
            path.parent.mkdir(parents=True, exist_ok=True)
        options = {"echo": echo}
        if not self.is_sqlite:
            options.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
        self.engine = create_engine(self.url, **options)
        write_engine = self.engine
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine, expire_on_commit=False)
        self._change_signal = None

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; its transaction is rolled back on exit."""
        with self._read() as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose work is committed as one transaction, or rolled back on error."""
        with self._write() as session, session.begin():
            yield session

    @property
    def change_signal(self):
        """Where this process's feed readers wait for changes (see ``feed_signal``)."""
        if self._change_signal is None:
            from .feed_signal import ChangeSignal

            self._change_signal = ChangeSignal(None if self.is_sqlite else self.url)
        return self._change_signal

    def dispose(self) -> None:
        if self._change_signal is not None:
            self._change_signal.close()
        self.engine.dispose()

    # Migrations -----------------------------------------------------------------

    def _alembic_config(self, connection):
        from alembic.config import Config as AlembicConfig

        if not (MIGRATIONS_DIR / "env.py").exists():
            raise SchemaError(
                f"migrations not found at {MIGRATIONS_DIR}; reinstall meteorpi from its "
                "source tree (pip install /path/to/meteorpi)")
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to ``revision`` (all of them by default)."""
        from alembic import command

        with self.engine.connect() as connection:
            command.upgrade(self._alembic_config(connection), revision)
            connection.commit()

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def _stamped_revision(self) -> str | None:
        """The revision in alembic's version table, read without alembic (None if none)."""
        try:
            with self.engine.connect() as connection:
                return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no version table yet: let alembic say so
            return None

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        with self.engine.connect() as connection:
            return ScriptDirectory.from_config(self._alembic_config(connection)).get_current_head()

    def check_schema(self) -> None:
        """Raise SchemaError, saying what to run, unless the schema is at the newest revision."""
        if self._stamped_revision() == SCHEMA_HEAD:
            return
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            state = "has no schema" if current is None else f"is at revision {current}"
            raise SchemaError(
                f"the database {self.url.render_as_string(hide_password=True)} {state}, "
                f"the code needs {head}: run 'meteorpi db upgrade' (with the same --config)")
