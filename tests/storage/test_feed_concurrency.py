"""A reader following the feed from 0 sees every record exactly once, in order, while
several exporters import at the same time over real sockets; and the cameras' counts
of events and files come out right."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import factories
from feed_reader import FeedFollower, server_sent_events
from meteorpi_server.exporter.batch import BatchSender, BatchStats
from meteorpi_server.exporter.handshake import ImportClient, export_entity


def night_of(camera_id: str, root, events: int, files: int) -> tuple[factories.DataSet, list]:
    """A camera node's records: its status first (the import asks for it), then the rest."""
    dataset = factories.DataSet(root / camera_id)
    status = factories.status(camera_id)
    entities = [dataset.add_event(status, file_count=1, size=512, time_ms=factories.NIGHT + index)
                for index in range(events)]
    entities += [dataset.add_file(status, size=512) for _ in range(files)]
    return dataset, entities


def export_all(url: str, auth, dataset, entities, start: threading.Barrier) -> None:
    with ImportClient(f"{url}/import", *auth) as client:
        start.wait(30)
        for entity in entities:
            result = export_entity(client, entity, dataset)
            assert result.state == "complete", result.message


def expected_ids(nights) -> set[str]:
    ids = set()
    for dataset, entities in nights:
        ids |= {status_id.hex for status_id in dataset.statuses}
        ids |= {entity.id.hex for entity in entities}
    return ids


def assert_exactly_once_in_order(seen: list[dict], nights) -> None:
    sequences = [change["sequence"] for change in seen]
    assert sequences == list(range(1, len(sequences) + 1)), "a change was missed, repeated or reordered"
    ids = [change["id"] for change in seen]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_ids(nights)


def export_in_batches(url: str, auth, dataset, entities, start: threading.Barrier) -> None:
    """As an exporter speaking protocol v2 does: batches of plans, statuses, bundles and
    records, each storing many records in one transaction."""
    with ImportClient(f"{url}/import", *auth) as client:
        client.describe()
        stats = BatchStats()
        with BatchSender(client, dataset) as sender:
            start.wait(30)
            # Several batches each, so that the exporters' transactions interleave.
            for first in range(0, len(entities), 4):
                results = sender.send(entities[first:first + 4], stats=stats)
                assert {result.state for result in results.values()} == {"complete"}, results
        assert stats.fallbacks == 0, "some records went one at a time, not in a batch"


def assert_cameras_count_every_record(url: str, auth, nights) -> None:
    """The counts GET /cameras shows were added to by writers committing at once."""
    expected = {}
    for dataset, entities in nights:
        events = [entity for entity in entities if entity.ENTITY_TYPE == "event"]
        files = len(entities) - len(events) + sum(len(event.files) for event in events)
        expected[entities[0].camera_id] = (len(events), files)
    listed = requests.get(f"{url}/cameras", auth=auth, timeout=30).json()["cameras"]
    assert {camera["camera_id"]: (camera["event_count"], camera["file_count"])
            for camera in listed} == expected


def import_concurrently(urls, auth, nights, export=export_all) -> None:
    start = threading.Barrier(len(nights))
    with ThreadPoolExecutor(len(nights)) as pool:
        futures = [pool.submit(export, urls[index % len(urls)], auth, dataset, entities, start)
                   for index, (dataset, entities) in enumerate(nights)]
        for future in futures:
            future.result()


def test_a_follower_sees_every_import_once_in_order(live_server, exporter_auth, make_user, tmp_path):
    reader = make_user("reader", "user")
    nights = [night_of(f"cam-{index}", tmp_path, events=6, files=2) for index in range(4)]
    follower = FeedFollower(live_server, reader)
    follower.start()

    import_concurrently([live_server], exporter_auth, nights)

    total = sum(1 + len(entities) for _, entities in nights)
    assert_exactly_once_in_order(follower.stop(until=total), nights)
    assert_cameras_count_every_record(live_server, reader, nights)


def test_a_follower_sees_every_batched_import_once_in_order(live_server, exporter_auth, make_user,
                                                            tmp_path):
    reader = make_user("reader", "user")
    nights = [night_of(f"cam-{index}", tmp_path, events=8, files=4) for index in range(4)]
    follower = FeedFollower(live_server, reader)
    follower.start()

    import_concurrently([live_server], exporter_auth, nights, export=export_in_batches)

    total = sum(1 + len(entities) for _, entities in nights)
    assert_exactly_once_in_order(follower.stop(until=total), nights)
    assert_cameras_count_every_record(live_server, reader, nights)


@pytest.mark.slow
def test_followers_on_two_hosts_see_every_import_once_in_order(gunicorn_server, exporter_auth,
                                                                make_user, tmp_path):
    """Two servers with two workers each share the database, as two hosts would; exporters
    send to both; one reader long-polls one host, another streams from the other."""
    reader = make_user("reader", "user")
    hosts = [gunicorn_server(workers=2), gunicorn_server(workers=2)]
    nights = [night_of(f"cam-{index}", tmp_path, events=15, files=5) for index in range(6)]
    total = sum(1 + len(entities) for _, entities in nights)
    poller = FeedFollower(hosts[0].url, reader, limit=5)
    poller.start()
    streamed: list[dict] = []

    def stream() -> None:
        with requests.get(f"{hosts[1].url}/changes/stream", auth=reader, stream=True,
                          timeout=60) as response:
            for event in server_sent_events(response):
                if event.event == "change":
                    streamed.append(event.json)
                    if len(streamed) == total:
                        return

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()

    import_concurrently([host.url for host in hosts], exporter_auth, nights)

    assert_exactly_once_in_order(poller.stop(until=total), nights)
    streamer.join(60)
    assert_exactly_once_in_order(streamed, nights)
    assert_cameras_count_every_record(hosts[0].url, reader, nights)
