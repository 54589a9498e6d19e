"""Alembic environment. The connection comes from meteorpi (Database.upgrade), or from
alembic.ini / METEORPI_DATABASE_URL when developers run the alembic command directly."""
from alembic import context
from sqlalchemy import create_engine

from meteorpi_server.config import load_config
from meteorpi_server.storage.orm import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(load_config().database_url)
    with engine.connect() as own_connection:
        _run(own_connection)
        own_connection.commit()
