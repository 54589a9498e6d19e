"""Which nodes import here: NodeActivityLog.record and list_nodes, and GET /imports/nodes."""
from __future__ import annotations

import datetime
import io
import logging
import threading
import time
import uuid

import pytest
from conftest import CHEAP_HASH_METHOD, PASSWORD, free_port
from export_nodes import (  # noqa: F401
    EXPORT_USER,
    extra_postgres_databases,
    make_node,
    node_database,
)
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from meteorpi_model import EventSearch, ExportConfiguration, md5_bytes
from meteorpi_server.exporter import configs
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.protocol import ORIGIN_HEADER
from meteorpi_server.storage import store
from meteorpi_server.storage.db import Database
from meteorpi_server.storage.node_activity import (
    HOUR_MS,
    MD5_MISMATCH,
    REFUSED,
    NodeActivityLog,
    hour_of,
    list_nodes,
)
from meteorpi_server.storage.orm import (
    FileRecordRow,
    NodeActivityHourRow,
    UserRoleRow,
    UserRow,
)

# Half past an hour, so "24 hours ago" falls inside an hour bucket, not on its edge.
NOW = 1_796_000_000_000 - 1_796_000_000_000 % HOUR_MS + HOUR_MS // 2
ORIGIN = uuid.UUID("0123456789abcdef0123456789abcdef")
SMALL = DemoPlan(cameras=2, nights=1, events_per_night=3, files_per_event=2, standalone_files=0,
                 file_size=600, first_night=datetime.date(2026, 11, 1))


def make_admin(node) -> tuple[str, str]:
    with node.services.database.write() as session:
        session.add(UserRow(name="admin", created_at=0,
                            password_hash=generate_password_hash(PASSWORD, method=CHEAP_HASH_METHOD),
                            roles=[UserRoleRow(role="camera_admin")]))
    return "admin", PASSWORD


def nodes(services, now=NOW) -> dict[str, dict]:
    with services.database.read() as session:
        return {node.user: node.to_dict() for node in list_nodes(session, now)}


def test_records_totals_times_origin_and_the_last_problem(services):
    log = NodeActivityLog(services.database)
    log.record("school-1", ORIGIN, entities=3, bytes_received=1000, now_ms=NOW - 5000)
    log.record("school-1", ORIGIN, problem="event 12ab: the target answered failed: no",
               problem_kind=REFUSED, now_ms=NOW - 4000)
    log.record("school-1", ORIGIN, entities=2, bytes_received=500, now_ms=NOW - 3000)
    log.record("legacy-node", None, entities=1, now_ms=NOW - 10_000)

    listed = nodes(services)
    assert list(listed) == ["school-1", "legacy-node"]  # most recent first
    school = listed["school-1"]
    assert school["origin_server"] == ORIGIN.hex
    assert school["first_import_at_ms"] == NOW - 5000
    assert school["last_import_at_ms"] == NOW - 3000
    assert school["total"] == {"entities": 5, "bytes": 1500}
    assert school["last_24h"] == {"entities": 5, "bytes": 1500}
    # A later success does not hide the last problem: it stays, with its time.
    assert school["last_problem"] == {
        "kind": "refused", "message": "event 12ab: the target answered failed: no",
        "at": school["last_problem"]["at"], "at_ms": NOW - 4000}
    assert school["last_problem"]["at"].endswith("Z")
    legacy = listed["legacy-node"]
    assert legacy["origin_server"] is None and legacy["last_problem"] is None
    assert legacy["first_import_at"] == legacy["last_import_at"]

    # A newer problem replaces it; one recorded late with an older time does not.
    log.record("school-1", ORIGIN, problem="file 99: md5 did not match",
               problem_kind=MD5_MISMATCH, now_ms=NOW - 1000)
    log.record("school-1", ORIGIN, problem="older", problem_kind=REFUSED, now_ms=NOW - 2000)
    problem = nodes(services)["school-1"]["last_problem"]
    assert (problem["kind"], problem["message"], problem["at_ms"]) == (
        "md5_mismatch", "file 99: md5 did not match", NOW - 1000)
    # ... and an import that came in late keeps first and last import times right.
    assert nodes(services)["school-1"]["last_import_at_ms"] == NOW - 1000


def test_the_last_24_hours_are_the_current_hour_and_the_23_before(services):
    log = NodeActivityLog(services.database)
    log.record("node", ORIGIN, entities=1, bytes_received=10, now_ms=NOW - 25 * HOUR_MS)
    log.record("node", ORIGIN, entities=2, bytes_received=20, now_ms=NOW - 24 * HOUR_MS)
    log.record("node", ORIGIN, entities=4, bytes_received=40, now_ms=NOW - 23 * HOUR_MS)
    log.record("node", ORIGIN, entities=8, bytes_received=80, now_ms=NOW)
    node = nodes(services)["node"]
    assert node["last_24h"] == {"entities": 12, "bytes": 120}
    assert node["total"] == {"entities": 15, "bytes": 150}
    # An hour later, the bucket of 23 hours ago has left the window too.
    assert nodes(services, NOW + HOUR_MS)["node"]["last_24h"] == {"entities": 8, "bytes": 80}


def test_hours_older_than_eight_days_are_pruned_when_a_new_hour_begins(services):
    first = NodeActivityLog(services.database)
    first.record("node", ORIGIN, entities=1, now_ms=NOW - 9 * 24 * HOUR_MS)
    first.record("node", ORIGIN, entities=1, now_ms=NOW - 7 * 24 * HOUR_MS)
    with services.database.read() as session:
        assert len(session.scalars(select(NodeActivityHourRow.hour_start)).all()) == 2
    NodeActivityLog(services.database).record("node", ORIGIN, entities=1, now_ms=NOW)  # later
    with services.database.read() as session:
        hours = sorted(session.scalars(select(NodeActivityHourRow.hour_start)))
    assert hours == [hour_of(NOW - 7 * 24 * HOUR_MS), hour_of(NOW)]
    assert nodes(services)["node"]["total"]["entities"] == 3  # totals are kept


def test_two_workers_recording_the_same_user_at_once_lose_nothing(services, settings):
    rounds, workers = 150, 2
    # Each worker has its own engine, as gunicorn workers do.
    databases = [Database(settings["database_url"]) for _ in range(workers)]
    start = threading.Barrier(workers)
    errors = []

    def work(database: Database) -> None:
        log = NodeActivityLog(database)
        try:
            start.wait()
            for _ in range(rounds):
                log.record("busy-node", ORIGIN, entities=1, bytes_received=3, now_ms=NOW)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(database,)) for database in databases]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    finally:
        for database in databases:
            database.dispose()
    assert not errors
    node = nodes(services)["busy-node"]
    assert node["total"] == {"entities": rounds * workers, "bytes": 3 * rounds * workers}
    assert node["last_24h"] == node["total"]


def test_a_failure_to_record_is_logged_and_never_raised(tmp_path, caplog):
    database = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        with caplog.at_level(logging.ERROR, logger="meteorpi.node_activity"):
            NodeActivityLog(database).record("node", ORIGIN, entities=1)
    finally:
        database.dispose()
    assert "could not record the import activity of user node" in caplog.text


def test_the_route_lists_nodes_for_camera_admins_only(services, client, make_user):
    NodeActivityLog(services.database).record("school-1", ORIGIN, entities=2, bytes_received=9)
    assert client.get("/imports/nodes").status_code == 401
    response = client.get("/imports/nodes", auth=make_user("reader", "user", "import"))
    assert response.status_code == 403
    assert response.get_json()["role"] == "camera_admin"
    response = client.get("/imports/nodes", auth=make_user("admin", "camera_admin"))
    assert response.status_code == 200
    (node,) = response.get_json()["nodes"]
    assert node["user"] == "school-1" and node["origin_server"] == ORIGIN.hex
    assert node["total"] == node["last_24h"] == {"entities": 2, "bytes": 9}


# Through the import protocols ---------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["v2", "legacy"])
def test_a_node_that_replicates_here_is_listed_with_what_it_sent(make_node, protocol):
    source = make_node("school")
    generate(source.recorder, SMALL)
    central = make_node("central", 0, batch_protocol=protocol == "v2").serve()
    configuration = ExportConfiguration(
        config_id=uuid.uuid4(), name="central", target_url=central.import_url,
        user_id=EXPORT_USER, password=PASSWORD, search=EventSearch())
    with source.services.database.write() as session:
        configs.add(session, configuration)
    summary = source.exporter().run_once()
    assert summary.failures == 0 and summary.entities_sent > 0

    central.services.activity.flush()  # else written within a second
    admin = make_admin(central)
    response = central.app.test_client().get("/imports/nodes", auth=admin)
    assert response.status_code == 200
    (node,) = response.get_json()["nodes"]
    with central.services.database.read() as session:
        stored_bytes = session.scalar(select(func.sum(FileRecordRow.file_size)))
        records = store.count_rows(session)
    assert node["user"] == EXPORT_USER
    assert node["origin_server"] == source.server_id.hex
    assert node["total"]["bytes"] == stored_bytes > 0
    # Every event and every status it needed was accepted (files travel inside events).
    assert node["total"]["entities"] == records["events"] + records["statuses"]
    assert node["last_24h"] == node["total"]
    assert node["last_problem"] is None
    assert node["first_import_at_ms"] <= node["last_import_at_ms"]


def test_bytes_that_fail_their_md5_are_the_nodes_last_problem(services, client, exporter_auth):
    file_id = uuid.uuid4()
    response = client.post(
        f"/import/data/{file_id.hex}/{md5_bytes(b'what was promised')}", auth=exporter_auth,
        headers={ORIGIN_HEADER: ORIGIN.hex},
        data={"file": (io.BytesIO(b"something else"), "upload.bin")},
        content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    services.activity.flush()
    (node,) = nodes(services, now=None).values()
    assert node["user"] == exporter_auth[0] and node["origin_server"] == ORIGIN.hex
    assert node["last_problem"]["kind"] == "md5_mismatch"
    assert file_id.hex in node["last_problem"]["message"]
    assert node["total"] == {"entities": 0, "bytes": 0}


def test_an_upload_without_the_origin_header_keeps_the_origin_announced(services):
    # Resumable uploads and bundles carry no Meteorpi-Origin header.
    log = NodeActivityLog(services.database)
    origin = uuid.uuid4()
    log.record("node1", origin, entities=1)
    log.record("node1", None, bytes_received=10)
    with services.database.read() as session:
        [node] = list_nodes(session, store.now_ms())
    assert node.origin_server == origin


def test_the_servers_log_adds_records_up_in_memory_and_writes_them_together(services):
    log = NodeActivityLog(services.database, flush_seconds=60)
    for _ in range(100):
        log.record("school-1", ORIGIN, entities=1, bytes_received=10)
    assert nodes(services, now=None) == {}  # nothing written yet: no commit per request
    log.flush()
    (node,) = nodes(services, now=None).values()
    assert node["total"] == node["last_24h"] == {"entities": 100, "bytes": 1000}
    assert node["origin_server"] == ORIGIN.hex


def test_what_the_server_records_is_written_without_anyone_asking(services):
    log = NodeActivityLog(services.database, flush_seconds=0.2)
    log.record("school-1", ORIGIN, entities=3)
    deadline = time.monotonic() + 30
    while not nodes(services, now=None):
        assert time.monotonic() < deadline, "the records were never written"
        time.sleep(0.05)
    assert nodes(services, now=None)["school-1"]["total"]["entities"] == 3
