"""The exporter's batched replication (protocol v2) against a real server on a socket."""
from __future__ import annotations

import pytest

import factories
from meteorpi_server import store
from meteorpi_server.exporter.batch import BatchSender, BatchStats
from meteorpi_server.exporter.handshake import ImportClient


def a_night(root, cameras: int = 2, events: int = 6, files_per_event: int = 3, standalone: int = 3):
    dataset = factories.DataSet(root)
    for camera_index in range(cameras):
        first = factories.status(f"cam-{camera_index}")
        later = factories.status(f"cam-{camera_index}", valid_from=first.valid_from + 3_600_000)
        for index in range(events):
            owner = first if index < events // 2 else later
            dataset.add_event(owner, file_count=files_per_event, size=3000 + index,
                              time_ms=owner.valid_from + index * 1000)
        for _ in range(standalone):
            dataset.add_file(later)
    return dataset


def assert_target_holds(services, dataset):
    with services.database.read() as session:
        assert [store.get_event(session, event.event_id) for event in dataset.events] == dataset.events
        assert [store.get_file_record(session, f.file_id) for f in dataset.files] == dataset.files
    for file_id, data in dataset.contents.items():
        assert services.files.path_for(file_id).read_bytes() == data


@pytest.fixture
def client(live_server, exporter_auth):
    with ImportClient(f"{live_server}/import", *exporter_auth) as client:
        client.describe()
        yield client


def test_a_night_goes_over_in_a_few_requests(client, services, tmp_path):
    dataset = a_night(tmp_path / "node")
    entities = dataset.events + dataset.files
    stats = BatchStats()
    results = BatchSender(client, dataset, concurrency=3).send(entities, stats=stats)
    assert {result.state for result in results.values()} == {"complete"}
    assert len(results) == len(entities)
    # plan + statuses + records + one bundle of all the (small) files: no per-entity
    # handshake, no request per file.
    assert stats.requests == 4
    assert stats.files_uploaded == len(dataset.contents) and stats.fallbacks == 0
    assert_target_holds(services, dataset)


def test_a_second_send_finds_nothing_left_in_one_request(client, services, tmp_path):
    dataset = a_night(tmp_path / "node")
    entities = dataset.events + dataset.files
    BatchSender(client, dataset).send(entities)
    stats = BatchStats()
    results = BatchSender(client, dataset).send(entities, stats=stats)
    assert {result.state for result in results.values()} == {"complete"}
    assert stats.requests == 1 and stats.files_uploaded == 0


def test_big_sends_are_split_to_the_servers_batch_limit(settings, exporter_auth, tmp_path):
    from werkzeug.serving import make_server
    import threading

    from meteorpi_server import create_app

    settings["batch_max_entities"] = 4
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dataset = a_night(tmp_path / "node", cameras=1, events=6, files_per_event=1, standalone=4)
        with ImportClient(f"http://127.0.0.1:{server.server_port}/import", *exporter_auth) as client:
            client.describe()
            stats = BatchStats()
            results = BatchSender(client, dataset).send(dataset.events + dataset.files, stats=stats)
        assert {result.state for result in results.values()} == {"complete"}
        # 10 entities in batches of 4: a plan, a bundle of their files and a records
        # request each; the statuses once, in the first batch, the only one that lacks them.
        assert stats.requests == 3 * 3 + 1
    finally:
        server.shutdown()
        app.extensions["meteorpi"].database.dispose()


def test_a_file_that_cannot_be_uploaded_fails_only_its_entity(client, services, tmp_path):
    dataset = a_night(tmp_path / "node", cameras=1, events=2, files_per_event=1, standalone=0)
    lost = dataset.events[0].files[0]
    (dataset.root / lost.file_id.hex).unlink()  # the node lost those bytes
    results = BatchSender(client, dataset).send(dataset.events)
    assert results[dataset.events[0].event_id].state == "failed"
    assert "missing on this node" in results[dataset.events[0].event_id].message
    assert results[dataset.events[1].event_id].state == "complete"


def test_a_file_without_an_md5_goes_through_the_handshake(client, services, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    record = dataset.add_file(factories.status())
    record.md5 = None
    stats = BatchStats()
    results = BatchSender(client, dataset).send([record], stats=stats)
    assert results[record.file_id].ok and stats.fallbacks == 1


def test_a_target_without_protocol_v2_is_refused(settings, exporter_auth, tmp_path):
    from werkzeug.serving import make_server
    import threading

    from meteorpi_server import create_app

    settings["batch_protocol"] = False
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with ImportClient(f"http://127.0.0.1:{server.server_port}/import", *exporter_auth) as client:
            client.describe()
            assert not client.speaks_batches()
            with pytest.raises(ValueError, match="protocol v2"):
                BatchSender(client, factories.DataSet(tmp_path))
    finally:
        server.shutdown()
        app.extensions["meteorpi"].database.dispose()


def test_a_file_the_target_refuses_fails_only_its_entity(settings, exporter_auth, tmp_path):
    from werkzeug.serving import make_server
    import threading

    from meteorpi_server import create_app

    settings["max_upload_bytes"] = 10_000
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dataset = factories.DataSet(tmp_path / "node")
        owner = factories.status()
        too_big = dataset.add_event(owner, file_count=1, size=20_000)
        fine = dataset.add_event(owner, file_count=1, size=2_000)
        with ImportClient(f"http://127.0.0.1:{server.server_port}/import", *exporter_auth) as client:
            client.describe()
            results = BatchSender(client, dataset).send([too_big, fine])
        assert results[too_big.event_id].state == "failed"
        assert "refuses" in results[too_big.event_id].message
        assert results[fine.event_id].ok
    finally:
        server.shutdown()
        app.extensions["meteorpi"].database.dispose()


def test_a_target_that_cannot_be_reached_is_a_target_error(exporter_auth, tmp_path):
    from conftest import free_port
    from meteorpi_server.exporter.handshake import TargetError

    dataset = a_night(tmp_path / "node", cameras=1, events=4)

    class Gone(ImportClient):
        """A target that described itself, then went away."""

    client = Gone(f"http://127.0.0.1:{free_port()}/import", *exporter_auth)
    client.capabilities = {"protocols": ["legacy-1", "batch-2"], "batch": {"max_entities": 10},
                           "uploads": {"resumable": {"version": 1, "max_chunk_bytes": 1 << 20}}}
    with pytest.raises(TargetError):
        BatchSender(client, dataset).send(dataset.events)
