"""Placement locks across hosts: on PostgreSQL, two servers (two Database objects, as two
hosts would have) exclude each other through advisory locks."""
from __future__ import annotations

import threading
import uuid

import pytest

from meteorpi_server.storage.blobs import Blobs
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.db_locks import PLACEMENT, AdvisoryLocks
from meteorpi_server.storage.files import FileStore


@pytest.fixture
def two_hosts(postgres_database):
    hosts = [Database(postgres_database), Database(postgres_database)]
    yield [AdvisoryLocks(host.engine, PLACEMENT) for host in hosts]
    for host in hosts:
        host.dispose()


def holds_within(locks: AdvisoryLocks, ids, seconds: float) -> bool:
    """Whether ``locks`` gets ``ids`` within ``seconds`` (it keeps waiting after that, in
    a thread that ends when the lock comes)."""
    got = threading.Event()

    def take():
        with locks.locked(ids):
            got.set()

    threading.Thread(target=take, daemon=True).start()
    return got.wait(seconds)


def test_a_file_id_locked_on_one_host_waits_on_the_other(two_hosts):
    first, second = two_hosts
    file_id = uuid.uuid4()
    with first.locked([uuid.uuid4(), file_id]):
        assert not holds_within(second, [file_id], 0.5)
        assert holds_within(second, [uuid.uuid4()], 5)  # other ids do not wait
    assert holds_within(second, [file_id], 5)  # released when the holder is done


def test_overlapping_sets_taken_in_opposite_orders_do_not_deadlock(two_hosts):
    first, second = two_hosts
    ids = [uuid.uuid4() for _ in range(50)]
    done = []

    def churn(locks, order):
        for _ in range(20):
            with locks.locked(order):
                pass
        done.append(True)

    threads = [threading.Thread(target=churn, args=(first, ids)),
               threading.Thread(target=churn, args=(second, list(reversed(ids))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert done == [True, True]


def test_blobs_lock_through_the_database_on_postgresql_and_the_disk_on_sqlite(
        postgres_database, tmp_path):
    files = FileStore(tmp_path / "files")
    on_postgres = Database(postgres_database)
    on_sqlite = Database(f"sqlite:///{tmp_path}/one-host.db")
    try:
        assert Blobs(on_postgres, files).locked.__self__.__class__ is AdvisoryLocks
        assert Blobs(on_sqlite, files).locked == files.locked
    finally:
        on_postgres.dispose()
        on_sqlite.dispose()
