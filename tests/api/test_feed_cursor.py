"""A feed cursor past the newest change (a follower of a database since restored from an
older backup) is refused out loud, so the follower can start again, rather than waiting
silently past the changes that come."""
from __future__ import annotations

import threading

import pytest
import requests
from sqlalchemy import delete

import factories
from feed_reader import server_sent_events
from local_records import store_locally
from meteorpi_server.storage.orm import ChangeRow


@pytest.fixture
def reader(make_user):
    return make_user("reader", "user")


@pytest.fixture
def three_changes(services):
    status = factories.status("cam-1")
    store_locally(services.database, status, factories.event(status, []),
                  factories.event(status, []))


def assert_cursor_ahead(response, newest: int, field: str = "since") -> None:
    assert response.status_code == 400, response.text
    body = response.json() if isinstance(response, requests.Response) else response.get_json()
    assert (body["error"], body["newest"], body["field"]) == ("cursor_ahead", newest, field)
    assert f"newest change, {newest}" in body["message"] and "since=0" in body["message"]


def test_a_cursor_past_the_newest_change_is_a_400_naming_the_newest(client, reader,
                                                                       three_changes):
    assert_cursor_ahead(client.get("/changes?since=10", auth=reader), newest=3)


def test_a_cursor_at_the_newest_change_is_simply_up_to_date(client, reader, three_changes):
    reply = client.get("/changes?since=3", auth=reader).get_json()
    assert reply == {"changes": [], "last": 3, "more": False}


def test_on_an_empty_feed_any_cursor_but_zero_is_ahead(client, reader):
    assert client.get("/changes?since=0", auth=reader).status_code == 200
    assert_cursor_ahead(client.get("/changes?since=1", auth=reader), newest=0)


def test_a_long_poll_from_a_cursor_ahead_answers_at_once_instead_of_waiting(
        live_server, reader, three_changes):
    # A 60 s wait asked for; the reply must come long before (the client gives it 20 s).
    response = requests.get(f"{live_server}/changes", auth=reader, timeout=20,
                            params={"since": 50, "timeout": 60000})
    assert_cursor_ahead(response, newest=3)


def test_a_stream_opened_from_a_cursor_ahead_is_a_400(live_server, reader, three_changes):
    response = requests.get(f"{live_server}/changes/stream", auth=reader, timeout=20,
                            params={"since": 7})
    assert_cursor_ahead(response, newest=3)


def test_a_stream_resumed_with_a_last_event_id_ahead_is_a_400(live_server, reader,
                                                              three_changes):
    response = requests.get(f"{live_server}/changes/stream", auth=reader, timeout=20,
                            headers={"Last-Event-ID": "9"})
    assert_cursor_ahead(response, newest=3, field="Last-Event-ID")


def test_a_stream_whose_feed_goes_back_under_it_ends_with_an_error_event(
        services, live_server, reader, three_changes):
    with requests.get(f"{live_server}/changes/stream", auth=reader, stream=True,
                      timeout=30) as response:
        assert response.status_code == 200
        events = server_sent_events(response)
        seen = []
        for event in events:
            if event.event == "change":
                seen.append(event.id)
            if len(seen) == 3:
                break
        # The database is replaced by an older copy under the open stream.
        threading.Timer(0.2, _forget_changes_after, (services.database, 1)).start()
        ending = [event for event in events if event.event == "error"]
    assert seen == ["1", "2", "3"]
    [error] = ending  # and then the stream ended
    assert (error.json["error"], error.json["newest"]) == ("cursor_ahead", 1)


def _forget_changes_after(database, sequence: int) -> None:
    with database.write() as session:
        session.execute(delete(ChangeRow).where(ChangeRow.sequence > sequence))
