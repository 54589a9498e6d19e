"""The key that signs the status page's session cookies, kept in the database.

Every gunicorn worker, every host sharing the database and every restart must sign and
check cookies with the same key, so it is made once, with :mod:`secrets`, and kept in
the ``server_info`` table beside the server id. Two workers starting at once may both
try to make it: the insert does nothing when the row exists, and both then read the one
row that won.
"""
from __future__ import annotations

import secrets

from sqlalchemy import select

from ..storage import store
from ..storage.db import Database
from ..storage.orm import ServerInfoRow

NAME = "session_secret"
KEY_BYTES = 32


def session_secret(database: Database) -> str:
    """The session key, made and stored on first use."""
    with database.read() as session:
        value = session.scalar(select(ServerInfoRow.value).where(ServerInfoRow.name == NAME))
    if value:
        return value
    with database.write() as session:
        store.upsert(session, ServerInfoRow, {"name": NAME, "value": secrets.token_hex(KEY_BYTES)},
                     key=["name"], update_columns=[])
        return session.scalar(select(ServerInfoRow.value).where(ServerInfoRow.name == NAME))
