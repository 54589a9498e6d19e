"""The exporter's batched replication (protocol v2) against a real server on a socket."""
from __future__ import annotations

import threading
from contextlib import contextmanager

import factories
import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from meteorpi_model import Meta, NSString
from meteorpi_server import create_app
from meteorpi_server.exporter.batch import BatchSender, BatchStats
from meteorpi_server.exporter.handshake import ImportClient
from meteorpi_server.storage import store


@contextmanager
def target(settings: dict, auth: tuple[str, str], wrap=None):
    """(An ImportClient that has described it, its services): a server built from
    ``settings`` (its WSGI app wrapped by ``wrap``), served on a socket for the block."""
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, wrap(app) if wrap else app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with ImportClient(f"http://127.0.0.1:{server.server_port}/import", *auth) as client:
            client.describe()
            yield client, app.extensions["meteorpi"]
    finally:
        server.shutdown()
        app.extensions["meteorpi"].database.dispose()


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
    settings["batch_max_entities"] = 4
    dataset = a_night(tmp_path / "node", cameras=1, events=6, files_per_event=1, standalone=4)
    with target(settings, exporter_auth) as (client, _):
        stats = BatchStats()
        results = BatchSender(client, dataset).send(dataset.events + dataset.files, stats=stats)
    assert {result.state for result in results.values()} == {"complete"}
    # 10 entities in batches of 4: a plan, a bundle of their files and a records
    # request each; the statuses once, in the first batch, the only one that lacks them.
    assert stats.requests == 3 * 3 + 1


class BatchBodyLimit:
    """WSGI middleware: a proxy that answers 413 to a batch request whose body is over
    ``limit`` bytes (0: none), and notes the size and status of every batch request."""

    def __init__(self, app, limit: int = 0):
        self.app, self.limit = app, limit
        self.requests: list[tuple[str, int, int]] = []  # (operation, body bytes, status)

    def __call__(self, environ, start_response):
        request = Request(environ)
        if not request.path.startswith("/import/batch/"):
            return self.app(environ, start_response)
        size = request.content_length or 0
        operation = request.path.rsplit("/", 1)[1]
        if self.limit and size > self.limit:
            self.requests.append((operation, size, 413))
            return Response("Request Entity Too Large", 413)(environ, start_response)

        def noting(status, headers, *exc_info):
            self.requests.append((operation, size, int(status.split()[0])))
            return start_response(status, headers, *exc_info)
        return self.app(environ, noting)


def wordy_night(root, events: int = 12) -> factories.DataSet:
    """A night whose event records are large (much meta), a few KB of JSON each."""
    dataset = factories.DataSet(root)
    owner = factories.status()
    for index in range(events):
        event = dataset.add_event(owner, file_count=1, size=1000 + index,
                                  time_ms=owner.valid_from + index * 1000)
        event.meta = [Meta(NSString(f"note{n}", "meteorpi"), "string", "x" * 100) for n in range(30)]
    return dataset


def test_batches_are_split_to_fit_the_json_limit_the_target_announces(
        settings, exporter_auth, tmp_path):
    settings["max_json_bytes"] = 16 * 1024
    dataset = wordy_night(tmp_path / "node")
    proxy = None

    def wrap(app):
        nonlocal proxy
        proxy = BatchBodyLimit(app)
        return proxy

    with target(settings, exporter_auth, wrap) as (client, services):
        stats = BatchStats()
        results = BatchSender(client, dataset).send(dataset.events, stats=stats)
        assert_target_holds(services, dataset)
    assert {result.state for result in results.values()} == {"complete"}
    records = [size for operation, size, _ in proxy.requests if operation == "records"]
    assert len(records) > 1, "twelve wordy events do not fit one 16 KiB request"
    assert all(status == 200 for _, _, status in proxy.requests), "no request was refused"
    assert stats.fallbacks == 0


def test_a_proxy_that_takes_less_than_the_target_announces_gets_the_batch_in_halves(
        settings, exporter_auth, tmp_path):
    dataset = wordy_night(tmp_path / "node")
    with target(settings, exporter_auth, lambda app: BatchBodyLimit(app, 16 * 1024)) as (client, services):
        stats = BatchStats()
        results = BatchSender(client, dataset).send(dataset.events, stats=stats)
        assert_target_holds(services, dataset)
    assert {result.state for result in results.values()} == {"complete"}
    assert stats.fallbacks == 0, "each half fits: no entity needs the legacy handshake"


def test_an_entity_too_large_for_the_target_is_refused_alone(settings, exporter_auth, tmp_path):
    settings["max_json_bytes"] = 4 * 1024
    dataset = wordy_night(tmp_path / "node", events=1)
    small = dataset.add_event(dataset.statuses[dataset.events[0].status_id], file_count=1)
    with target(settings, exporter_auth) as (client, _):
        results = BatchSender(client, dataset).send(dataset.events)
    wordy = dataset.events[0]
    assert results[wordy.event_id].state == "rejected"
    assert results[wordy.event_id].status_code == 413
    assert results[small.event_id].ok


def test_a_file_under_a_later_status_than_its_event_brings_that_status_in_the_plan(
        client, services, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    first = factories.status()
    later = factories.status(valid_from=first.valid_from + 60_000)
    event = dataset.add_event(first, file_count=2, time_ms=first.valid_from + 59_000)
    event.files[1].status_id = later.status_id
    dataset.statuses[later.status_id] = later
    stats = BatchStats()
    results = BatchSender(client, dataset).send([event], stats=stats)
    assert results[event.event_id].ok
    # Both statuses went in the statuses request: no records reply said need_status, so
    # nothing went on to the legacy handshake.
    assert stats.fallbacks == 0 and stats.requests == 4
    with services.database.read() as session:
        assert store.get_status(session, later.status_id) == later
    assert_target_holds(services, dataset)


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
    settings["batch_protocol"] = False
    with target(settings, exporter_auth) as (client, _):
        assert not client.speaks_batches()
        with pytest.raises(ValueError, match="protocol v2"):
            BatchSender(client, factories.DataSet(tmp_path))


def test_a_file_the_target_refuses_fails_only_its_entity(settings, exporter_auth, tmp_path):
    settings["max_upload_bytes"] = 10_000
    dataset = factories.DataSet(tmp_path / "node")
    owner = factories.status()
    too_big = dataset.add_event(owner, file_count=1, size=20_000)
    fine = dataset.add_event(owner, file_count=1, size=2_000)
    with target(settings, exporter_auth) as (client, _):
        results = BatchSender(client, dataset).send([too_big, fine])
    assert results[too_big.event_id].state == "failed"
    assert "refuses" in results[too_big.event_id].message
    assert results[fine.event_id].ok


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
