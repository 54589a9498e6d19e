"""Feed readers on one host wake when a change is committed through another: on
PostgreSQL by the commit's NOTIFY, with polling behind it; on SQLite (one host) by
polling."""
from __future__ import annotations

import threading
import time

import factories
import pytest
from local_records import backend, store_locally
from sqlalchemy import text

from meteorpi_server.storage import feed, feed_signal
from meteorpi_server.storage.db import Database

# Bounds for a broken implementation, never measurements.
PATIENCE = 20.0


@pytest.fixture
def two_hosts(database_url, app):
    """Two processes' views of one migrated database (``app`` migrated it)."""
    reader, writer = Database(database_url), Database(database_url)
    yield reader, writer
    reader.dispose()
    writer.dispose()


def _listening(database: Database) -> None:
    """Start the reader's listener and wait until it listens (PostgreSQL only)."""
    database.change_signal.mark()
    deadline = time.monotonic() + PATIENCE
    while not database.change_signal.listening:
        assert time.monotonic() < deadline, "the feed listener never started listening"
        time.sleep(0.01)


def _long_poll(database: Database, since: int, result: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: result.append(
        feed.wait_for_changes(database, since, 10, timeout_seconds=120)), daemon=True)
    thread.start()
    return thread


def test_a_long_poll_on_one_host_wakes_on_a_commit_through_another(two_hosts, database_url,
                                                                   monkeypatch):
    reader, writer = two_hosts
    if backend(database_url) == "postgresql":
        # Readers would look on their own only after a minute: waking is the NOTIFY's doing.
        monkeypatch.setattr(feed_signal, "LISTENING_POLL_SECONDS", 60.0)
        _listening(reader)
    result = []
    waiting = _long_poll(reader, 0, result)
    status = factories.status("cam-signal")
    store_locally(writer, status)
    waiting.join(PATIENCE)
    assert not waiting.is_alive(), "the long poll was not woken by the commit"
    assert [change.entity_id for change in result[0].changes] == [status.status_id]


def test_readers_still_get_changes_after_the_listener_loses_its_connection(
        two_hosts, database_url, monkeypatch):
    reader, writer = two_hosts
    postgresql = backend(database_url) == "postgresql"
    if postgresql:  # (SQLite readers poll: there is no listener to lose)
        monkeypatch.setattr(feed_signal, "RECONNECT_SECONDS", 0.1)
        _listening(reader)
        with writer.engine.connect() as connection:  # what a database restart does to it
            connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN %' AND datname = current_database()"))
    result = []
    waiting = _long_poll(reader, 0, result)
    status = factories.status("cam-cut")
    store_locally(writer, status)
    waiting.join(PATIENCE)
    assert not waiting.is_alive()
    assert [change.entity_id for change in result[0].changes] == [status.status_id]
    if postgresql:
        _listening(reader)  # and it listens again


def test_disposing_of_the_database_stops_its_listener(two_hosts, database_url):
    reader, _ = two_hosts
    if backend(database_url) != "postgresql":
        reader.change_signal.mark()
        assert reader.change_signal._thread is None  # readers poll; nothing listens
        return
    _listening(reader)
    listener = reader.change_signal._thread
    reader.dispose()
    listener.join(PATIENCE)
    assert not listener.is_alive()
