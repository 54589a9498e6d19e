"""GET /metrics: what an operator's Prometheus sees after imports, uploads and refusals.

Counters live in the test process and other tests add to them, so each test compares a
scrape before with one after.
"""
from __future__ import annotations

import io
import uuid

import pytest
import requests

import factories
from conftest import PASSWORD
from meteorpi_model import md5_bytes
from meteorpi_server import create_app, protocol
from meteorpi_server.storage.orm import UserRoleRow, UserRow
from protocol import ProtocolClient, chunk_checksum
from scrapes import Scrape, scrape


@pytest.fixture
def importer(client, exporter_auth) -> ProtocolClient:
    return ProtocolClient(client, exporter_auth)


def test_metrics_are_in_the_prometheus_text_format_and_public_by_default(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "# TYPE meteorpi_http_requests_total counter" in response.get_data(as_text=True)


def test_a_legacy_replication_counts_replies_bytes_and_stored_files(client, importer, camera):
    data = factories.file_bytes(5000)
    record = factories.file_record(camera, data)
    event = factories.event(camera, [record])
    before = scrape(client)

    states = importer.replicate(event, {camera.status_id: camera}, {record.file_id: data})

    after = scrape(client)
    assert states[-1] == "complete"

    def grew(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("meteorpi_import_results_total", protocol="legacy-1", request="entity",
                state="complete") == 1
    assert grew("meteorpi_import_results_total", protocol="legacy-1", state="need_status") == 1
    assert grew("meteorpi_import_results_total", protocol="legacy-1",
                state="need_file_data") == 1
    assert grew("meteorpi_received_bytes_total", kind="legacy_upload") == 5000
    assert grew("meteorpi_files_stored_total", kind="legacy_upload") == 1


def test_an_upload_with_the_wrong_md5_is_counted_as_a_mismatch(client, importer, camera):
    before = scrape(client)
    importer.upload(uuid.uuid4(), b"not what the record says", md5="0" * 32)
    after = scrape(client)
    assert (after.value("meteorpi_md5_mismatches_total", kind="legacy_upload")
            - before.value("meteorpi_md5_mismatches_total", kind="legacy_upload")) == 1
    assert (after.value("meteorpi_files_stored_total", kind="legacy_upload")
            == before.value("meteorpi_files_stored_total", kind="legacy_upload"))


def test_a_resumable_upload_counts_its_start_its_chunks_and_its_completion(
        client, exporter_auth):
    data = factories.file_bytes(3000, seed=7)
    url = f"/import/data/{uuid.uuid4().hex}/{md5_bytes(data)}"
    before = scrape(client)
    for offset in (0, 2000):
        chunk = data[offset:offset + 2000]
        response = client.patch(url, data=chunk, auth=exporter_auth, headers={
            "Content-Type": protocol.RESUMABLE_MEDIA_TYPE, "Upload-Offset": str(offset),
            "Upload-Length": str(len(data)), "Upload-Checksum": chunk_checksum(chunk)})
        assert response.status_code == 200, response.get_data(as_text=True)
    after = scrape(client)

    def grew(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("meteorpi_resumable_uploads_total", event="started") == 1
    assert grew("meteorpi_resumable_uploads_total", event="completed") == 1
    assert grew("meteorpi_received_bytes_total", kind="resumable_chunk") == 3000
    assert grew("meteorpi_files_stored_total", kind="resumable") == 1


def test_a_batch_counts_its_results_by_state_and_its_size(client, exporter_auth, camera):
    refused = factories.event(camera, [])
    document = {"entities": [
        {"type": "event", "event": refused.to_dict()},
        {"type": "event", "event": {"event_id": "not an id"}},
    ]}
    before = scrape(client)
    response = client.post("/import/batch/records", json=document, auth=exporter_auth)
    after = scrape(client)
    assert response.status_code == 200
    states = [result["state"] for result in response.get_json()["results"]]
    for state in set(states):
        assert (after.value("meteorpi_import_results_total", protocol="batch-2",
                            request="records", state=state)
                - before.value("meteorpi_import_results_total", protocol="batch-2",
                               request="records", state=state)) == states.count(state)
    assert (after.value("meteorpi_batch_entities_count", request="records")
            - before.value("meteorpi_batch_entities_count", request="records")) == 1
    assert (after.value("meteorpi_batch_entities_sum", request="records")
            - before.value("meteorpi_batch_entities_sum", request="records")) == 2


def test_requests_are_counted_by_route_template_not_by_path(live_server, make_user):
    # Through a socket: a request is counted once its response has been sent in full.
    admin = make_user("admin", "camera_admin")
    name = f"no-such-{uuid.uuid4().hex}"
    requests.get(f"{live_server}/exports/{name}", auth=admin, timeout=10)
    requests.get(f"{live_server}/{name}", timeout=10)
    text = requests.get(f"{live_server}/metrics", timeout=10).text
    routes = Scrape(text).labels("meteorpi_http_requests_total", "route")
    assert {"/exports/<name>", "unmatched"} <= routes
    assert name not in text
    assert Scrape(text).value("meteorpi_http_requests_total", route="/exports/<name>",
                              method="GET", status="404") >= 1
    assert Scrape(text).value("meteorpi_http_request_duration_seconds_count",
                              route="/exports/<name>", method="GET") >= 1


def test_an_unknown_http_method_does_not_make_a_series_of_its_own(live_server):
    requests.request("BREW", f"{live_server}/health", timeout=10)
    assert "BREW" not in requests.get(f"{live_server}/metrics", timeout=10).text


def test_authentication_failures_are_counted_by_reason(client, make_user):
    reader = make_user("reader", "user")
    before = scrape(client)
    client.post("/import", json={}, auth=("nobody", "wrong password"))
    client.post("/import", json={}, auth=reader)
    after = scrape(client)
    for reason in ("unauthorized", "forbidden"):
        assert (after.value("meteorpi_auth_failures_total", reason=reason)
                - before.value("meteorpi_auth_failures_total", reason=reason)) == 1


@pytest.mark.parametrize("role", ["camera_admin", "user"])
def test_metrics_access_may_name_a_role(settings, role, make_user_for):
    app, make = make_user_for({**settings, "metrics_access": role})
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    other = "import"
    assert client.get("/metrics", auth=make("other", other)).status_code == 403
    assert client.get("/metrics", auth=make("scraper", role)).status_code == 200


@pytest.fixture
def make_user_for(password_hash):
    """An app with other settings than the default test app's, and a way to add users."""
    apps = []

    def build(settings):
        app = create_app(settings)
        apps.append(app)

        def make(name, *roles):
            with app.extensions["meteorpi"].database.write() as session:
                session.add(UserRow(name=name, password_hash=password_hash, created_at=0,
                                    roles=[UserRoleRow(role=role) for role in roles]))
            return (name, PASSWORD)

        return app, make

    yield build
    for app in apps:
        app.extensions["meteorpi"].database.dispose()


@pytest.fixture
def quick_heartbeat(settings):
    settings["feed_heartbeat_seconds"] = 1


def test_an_open_stream_is_gauged_while_it_lasts(quick_heartbeat, live_server, make_user):
    reader = make_user("reader", "user")

    def open_now(kind):
        return Scrape(requests.get(f"{live_server}/metrics", timeout=10).text).value(
            "meteorpi_open_feed_connections", kind=kind)

    before = open_now("stream")
    with requests.get(f"{live_server}/changes/stream", auth=reader, stream=True,
                      timeout=30) as stream:
        assert stream.status_code == 200
        next(stream.iter_lines())  # the stream has begun
        assert open_now("stream") == before + 1
    # The server sees the client go at its next look (a heartbeat at the latest).
    waited = wait_until(lambda: open_now("stream") == before)
    assert waited, "the stream was still counted as open after its client left"


def wait_until(condition, seconds: float = 30) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_waiting_long_poll_is_gauged_until_it_answers(live_server, make_user, services,
                                                        camera):
    import threading

    from local_records import store_locally

    reader = make_user("reader", "user")

    def waiting():
        return Scrape(requests.get(f"{live_server}/metrics", timeout=10).text).value(
            "meteorpi_open_feed_connections", kind="long_poll")

    before = waiting()
    answered = []
    poll = threading.Thread(target=lambda: answered.append(requests.get(
        f"{live_server}/changes", params={"timeout": 30000}, auth=reader, timeout=60)))
    poll.start()
    assert wait_until(lambda: waiting() == before + 1)
    store_locally(services.database, camera)
    poll.join(60)
    assert answered[0].json()["changes"]
    assert wait_until(lambda: waiting() == before)


def test_each_export_configuration_has_its_gauges_read_from_the_database(client, make_user):
    admin = make_user("admin", "camera_admin")
    response = client.post("/exports", auth=admin, json={
        "name": "central", "type": "event", "target_url": "http://127.0.0.1:9/import",
        "user_id": "node", "password": "secret", "search": {}, "enabled": True,
        "description": ""})
    assert response.status_code == 201, response.get_data(as_text=True)
    client.patch("/exports/central", auth=admin, json={"enabled": False})
    found = scrape(client)
    assert found.value("meteorpi_export_state", config="central", state="disabled") == 1
    assert found.value("meteorpi_export_state", config="central", state="idle") == 0
    assert found.labels("meteorpi_export_backlog", "task_state") == {"pending", "failed"}
    assert found.value("meteorpi_export_consecutive_failures", config="central") == 0
    assert found.value("meteorpi_export_last_success_timestamp_seconds", config="central") == 0
    for kind in ("entities", "files", "bytes"):
        assert found.labels(f"meteorpi_export_sent_{kind}_total", "config") == {"central"}

