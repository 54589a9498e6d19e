"""A real server on a socket, replicated to by the exporter's handshake driver."""
from __future__ import annotations

import threading

import factories
import pytest

from meteorpi_server.exporter.handshake import ImportClient, export_entity
from meteorpi_server.storage import store
from meteorpi_server.storage.orm import EventRow


def night_of_data(root) -> factories.DataSet:
    """Two cameras, one of which changes status mid-night; events with 0-3 files; stand-alone files."""
    dataset = factories.DataSet(root)
    moved_at = factories.NIGHT + 3_600_000  # the first status ends there, as a node records it
    first = factories.status("cam-north", valid_to=moved_at)
    moved = factories.status("cam-north", valid_from=moved_at,
                             location=first.location.__class__(lat=53.0, long=-1.0, gps=True, error=2.0))
    second = factories.status("cam-south")
    for index, owner in enumerate([first, first, moved, second, second, moved]):
        dataset.add_event(owner, file_count=index % 4, size=1000 + index * 777,
                          time_ms=owner.valid_from + index * 60_000)
    for owner in (first, moved, second):
        dataset.add_file(owner, size=5000)
    return dataset


def replicate(url, auth, dataset) -> list:
    with ImportClient(f"{url}/import", *auth) as client:
        return [export_entity(client, entity, dataset) for entity in dataset.events + dataset.files]


def assert_target_holds(services, dataset):
    with services.database.read() as session:
        for event in dataset.events:
            assert store.get_event(session, event.event_id) == event
        for record in dataset.files:
            assert store.get_file_record(session, record.file_id) == record
        for status in dataset.statuses.values():
            assert store.get_status(session, status.status_id) == status
    for file_id, data in dataset.contents.items():
        assert services.files.path_for(file_id).read_bytes() == data


@pytest.mark.slow
def test_a_node_replicates_a_night_to_a_gunicorn_server(gunicorn_server, exporter_auth, services, tmp_path):
    server = gunicorn_server(workers=2)
    dataset = night_of_data(tmp_path / "node")
    results = replicate(server.url, exporter_auth, dataset)
    assert [result.state for result in results] == ["complete"] * len(results)
    assert sum(result.files_uploaded for result in results) == len(dataset.contents)
    assert_target_holds(services, dataset)


@pytest.mark.slow
def test_a_second_replication_sends_nothing_new(gunicorn_server, exporter_auth, tmp_path):
    server = gunicorn_server(workers=2)
    dataset = night_of_data(tmp_path / "node")
    replicate(server.url, exporter_auth, dataset)
    again = replicate(server.url, exporter_auth, dataset)
    assert all(result.ok and result.round_trips == 1 and result.files_uploaded == 0
               for result in again)


@pytest.mark.slow
def test_a_worker_that_never_saw_the_entity_asks_for_it_again(gunicorn_server, exporter_auth, tmp_path):
    # With several workers a cached_entity often lands on a worker whose cache lacks the
    # entity: the driver must cope with continue-nocache, and all still completes.
    server = gunicorn_server(workers=3)
    dataset = factories.DataSet(tmp_path / "node")
    owner = factories.status()
    for index in range(10):
        dataset.add_event(owner, file_count=2, time_ms=owner.valid_from + index)
    results = replicate(server.url, exporter_auth, dataset)
    assert all(result.ok for result in results)


def test_two_exporters_sending_the_same_night_at_once_store_it_once(live_server, make_user, services, tmp_path):
    dataset = night_of_data(tmp_path / "node")
    nodes = [make_user(f"node{index}", "import") for index in range(3)]
    start = threading.Barrier(len(nodes))
    outcomes: dict[str, list] = {}

    def run(auth):
        start.wait()
        outcomes[auth[0]] = replicate(live_server, auth, dataset)

    threads = [threading.Thread(target=run, args=(auth,)) for auth in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for name, results in outcomes.items():
        assert [result.state for result in results] == ["complete"] * len(results), name
    with services.database.read() as session:
        assert store.count_rows(session) == {
            "statuses": len(dataset.statuses), "events": len(dataset.events),
            "files": len(dataset.files) + sum(len(event.files) for event in dataset.events),
            "blobs": len(dataset.contents)}
        importers = {row.imported_by for row in session.query(EventRow)}
    assert importers <= {"node0", "node1", "node2"}
    assert_target_holds(services, dataset)


def test_the_driver_discovers_a_meteorpi_server_and_announces_its_origin(live_server, exporter_auth, services, tmp_path):
    import uuid

    dataset = factories.DataSet(tmp_path / "node")
    event = dataset.add_event(factories.status(), file_count=1)
    origin = uuid.uuid4()
    with ImportClient(f"{live_server}/import", *exporter_auth, origin_server=origin) as client:
        assert client.describe()["server_id"] == services.server_id.hex
        assert export_entity(client, event, dataset).ok
    with services.database.read() as session:
        assert session.get(EventRow, event.event_id).origin_server == origin


def test_a_server_without_a_discovery_document_is_legacy(exporter_auth):
    from flask import Flask

    legacy = Flask("legacy")
    legacy.post("/import")(lambda: {"state": "complete"})
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, legacy, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with ImportClient(f"http://127.0.0.1:{server.server_port}/import", *exporter_auth) as client:
            assert client.describe() is None
    finally:
        server.shutdown()


class RecordingSession:
    """Wraps a requests.Session to note each request's method and path."""

    def __init__(self):
        import requests

        self.session = requests.Session()
        self.calls: list[tuple[str, str]] = []
        original = self.session.request

        def request(method, url, *args, **kwargs):
            self.calls.append((method.upper(), url.split("/", 3)[3]))
            return original(method, url, *args, **kwargs)

        self.session.request = request


def test_the_exporter_uploads_resumably_to_a_server_that_offers_it(live_server, exporter_auth, services, tmp_path):
    recorder = RecordingSession()
    dataset = factories.DataSet(tmp_path / "node")
    event = dataset.add_event(factories.status(), file_count=2, size=300_000)
    confirmed = []
    with ImportClient(f"{live_server}/import", *exporter_auth, session=recorder.session,
                      chunk_size=128 * 1024) as client:
        client.describe()
        assert client.uses_resumable_uploads
        assert export_entity(client, event, dataset, progress=confirmed.append).ok
    uploads = [method for method, path in recorder.calls if path.startswith("import/data/")]
    assert "POST" not in uploads and uploads.count("PATCH") == 2 * 3  # 3 chunks per file
    assert sum(confirmed) == 600_000 and max(confirmed) <= 128 * 1024
    assert_target_holds(services, dataset)


def test_the_exporter_uploads_whole_files_to_a_server_that_does_not_describe_itself(
        live_server, exporter_auth, services, tmp_path):
    recorder = RecordingSession()
    dataset = factories.DataSet(tmp_path / "node")
    event = dataset.add_event(factories.status(), file_count=2)
    confirmed = []
    with ImportClient(f"{live_server}/import", *exporter_auth, session=recorder.session) as client:
        # No describe(): as with a legacy server, whose GET /import is a 405.
        assert export_entity(client, event, dataset, progress=confirmed.append).ok
    uploads = [method for method, path in recorder.calls if path.startswith("import/data/")]
    assert uploads == ["POST", "POST"]
    assert confirmed == [record.file_size for record in event.files]
    assert_target_holds(services, dataset)
