"""Locks that hold across hosts: PostgreSQL advisory locks, for many hosts on one database.

A lock file guards one host only. Where the database is PostgreSQL (and so any number of
server hosts may share it and one bucket), what a lock file guarded is guarded here
instead: a session-level advisory lock, held on a connection of its own for as long as
the work takes (which spans several transactions, so a transaction-level lock would not
do). If the holder dies, PostgreSQL ends its session and with it the lock.

Each kind of lock has its own namespace (the first of the two 32-bit keys), so kinds
never collide with each other or with another application's bigint advisory locks.
"""
from __future__ import annotations

import contextlib
import uuid
from typing import Collection, Iterator

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, INTEGER

# Namespaces: the first key of pg_advisory_lock(int, int). Stable across releases: hosts
# running two versions during an upgrade must still exclude each other. (0x6D70 is taken:
# camera statuses, storage/store.py.)
PLACEMENT = 0x6D500001  # "mP", 1: the bytes of a file id (storage/blobs.py)
RESUMABLE_UPLOAD = 0x6D500002  # one request at a time on an upload (imports/shared_uploads.py)

# Locks are taken in key order in one statement: two holders of overlapping sets never
# wait for each other in a cycle.
_LOCK_ALL = text(
    "SELECT count(pg_advisory_lock(:namespace, key)) "
    "FROM (SELECT DISTINCT key FROM unnest(:keys) AS key ORDER BY key) AS ordered"
).bindparams(bindparam("keys", type_=ARRAY(INTEGER)))


# All or nothing: bool_and stops at no key, but a key taken before a refused one would stay
# held, so the caller unlocks everything it holds afterwards whatever the answer.
_TRY_ALL = text(
    "SELECT bool_and(pg_try_advisory_lock(:namespace, key)) "
    "FROM (SELECT DISTINCT key FROM unnest(:keys) AS key ORDER BY key) AS ordered"
).bindparams(bindparam("keys", type_=ARRAY(INTEGER)))


def _key(file_id: uuid.UUID) -> int:
    """32 bits of the id as a signed int4: ids sharing a key only wait for each other."""
    value = int(file_id.hex[:8], 16)
    return value - (1 << 32) if value >= 1 << 31 else value


class AdvisoryLocks:
    """Advisory locks of one namespace on the PostgreSQL database behind ``engine``."""

    def __init__(self, engine, namespace: int):
        self.engine = engine
        self.namespace = namespace

    @contextlib.contextmanager
    def locked(self, ids: Collection[uuid.UUID]) -> Iterator[None]:
        """Hold the lock of every id in ``ids``, waiting as long as it takes."""
        keys = sorted({_key(item) for item in ids})
        if not keys:
            yield
            return
        # A connection of its own, outside any transaction of the caller's, in autocommit
        # mode so that holding the lock keeps no transaction (and no snapshot) open.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(_LOCK_ALL, {"namespace": self.namespace, "keys": keys})
            try:
                yield
            finally:
                _unlock_all(connection)

    @contextlib.contextmanager
    def try_locked(self, ids: Collection[uuid.UUID]) -> Iterator[bool]:
        """Hold the locks of ``ids`` if none is held elsewhere; yields whether it does."""
        keys = sorted({_key(item) for item in ids})
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            got = connection.execute(_TRY_ALL, {"namespace": self.namespace, "keys": keys}).scalar()
            try:
                yield bool(got)
            finally:
                _unlock_all(connection)


def _unlock_all(connection) -> None:
    """Unlock before the connection goes back to the pool; should that fail, the
    connection is thrown away, which ends the session and its locks."""
    try:
        connection.execute(text("SELECT pg_advisory_unlock_all()"))
    except Exception:
        connection.invalidate()
        raise
