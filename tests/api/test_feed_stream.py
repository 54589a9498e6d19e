"""GET /changes/stream: the feed as Server-Sent Events, resumable, with heartbeats."""
from __future__ import annotations

import threading
import time

import pytest
import requests

import factories
from feed_reader import server_sent_events
from local_records import store_locally


@pytest.fixture
def reader(make_user):
    return make_user("reader", "user")


@pytest.fixture
def quick_stream(settings):
    settings["feed_heartbeat_seconds"] = 1
    settings["feed_stream_seconds"] = 3


def open_stream(live_server, auth, headers=None, **params):
    response = requests.get(f"{live_server}/changes/stream", auth=auth, params=params,
                            headers=headers or {}, stream=True, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return response


def next_changes(events, count):
    found = []
    for event in events:
        if event.event == "change":
            found.append(event)
            if len(found) == count:
                return found
    raise AssertionError(f"the stream ended after {len(found)} changes")


def test_the_stream_sends_what_is_stored_and_then_each_new_record(services, live_server, reader):
    status = factories.status("cam-1")
    store_locally(services.database, status)
    with open_stream(live_server, reader) as response:
        events = server_sent_events(response)
        [first] = next_changes(events, 1)
        later = factories.event(status, [])
        threading.Timer(0.3, store_locally, (services.database, later)).start()
        [second] = next_changes(events, 1)

    assert (first.id, first.json["type"], first.json["id"]) == ("1", "status", status.status_id.hex)
    assert (second.id, second.json["type"], second.json["id"]) == ("2", "event", later.event_id.hex)


def test_a_reconnecting_client_resumes_after_its_last_event_id(services, live_server, reader):
    status = factories.status("cam-1")
    store_locally(services.database, status, *[factories.event(status, []) for _ in range(3)])
    headers = {"Last-Event-ID": "2"}
    with open_stream(live_server, reader, headers=headers, since=0) as response:
        resumed = next_changes(server_sent_events(response), 2)
    assert [event.id for event in resumed] == ["3", "4"]


def test_the_stream_filters_like_the_feed(services, live_server, reader):
    north, south = factories.status("north"), factories.status("south")
    wanted = factories.event(south, [])
    store_locally(services.database, north, south, factories.event(north, []), wanted)
    with open_stream(live_server, reader, types="event", camera_id="south") as response:
        [only] = next_changes(server_sent_events(response), 1)
    assert only.json["id"] == wanted.event_id.hex


def test_a_quiet_stream_sends_heartbeats_and_ends_after_a_while(quick_stream, live_server, reader):
    started = time.monotonic()
    with open_stream(live_server, reader) as response:
        blocks = list(server_sent_events(response))  # until the server ends the stream
    assert time.monotonic() - started < 20
    assert any("heartbeat" in block.comments for block in blocks)
    assert not any(block.event == "change" for block in blocks)


@pytest.mark.parametrize("query, parameter", [
    ("since=-1", "since"),
    ("types=meteor", "types"),
    ("types=", "types"),
    ("camera_id=", "camera_id"),
    ("camera_id=" + "c" * 256, "camera_id"),
    ("timeout=5", "timeout"),
])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_bad_query_parameter_is_a_400_naming_it(client, reader, query, parameter):
    # Answered before the stream starts, so a filter naming nothing is never a silent stream.
    response = client.get(f"/changes/stream?{query}", auth=reader)
    assert response.status_code == 400
    assert response.get_json()["field"] == parameter


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_bad_last_event_id_is_a_400(client, reader):
    response = client.get("/changes/stream", auth=reader, headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400
    assert response.get_json()["field"] == "Last-Event-ID"


def test_the_stream_needs_the_user_role(client, make_user):
    assert client.get("/changes/stream").status_code == 401
    assert client.get("/changes/stream", auth=make_user("exporter", "import")).status_code == 403


@pytest.fixture
def one_thread_long_heartbeat(settings):
    settings["threads"] = 1
    settings["feed_heartbeat_seconds"] = 600


@pytest.mark.slow
def test_a_stream_whose_client_left_frees_its_thread(one_thread_long_heartbeat, gunicorn_server, reader):
    server = gunicorn_server(workers=1)
    with open_stream(server.url, reader) as response:
        next(server_sent_events(response))  # the stream is being served
    # The only thread is free again long before the next heartbeat would have noticed.
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
