"""GET /changes: every stored record numbered in order, filters, latest-only, long polls."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import factories
import pytest
import requests
from local_records import store_locally
from protocol import ProtocolClient
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from meteorpi_server.storage import feed, store
from meteorpi_server.storage.orm import FeedCounterRow


@pytest.fixture
def reader(make_user):
    return make_user("reader", "user")


@pytest.fixture
def stored(services):
    def store_(*entities):
        store_locally(services.database, *entities)
        return entities
    return store_


def changes(client, auth, **query):
    response = client.get("/changes", auth=auth, query_string=query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def summary(reply):
    return [(change["sequence"], change["type"], change["id"]) for change in reply["changes"]]


def test_every_imported_record_is_numbered_in_the_order_it_was_stored(client, exporter_auth, reader, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    status = factories.status("cam-1")
    event = dataset.add_event(status, file_count=2)
    standalone = dataset.add_file(status)
    node = ProtocolClient(client, exporter_auth)
    for entity in (event, standalone):
        assert node.replicate(entity, dataset.statuses, dataset.contents)[-1] == "complete"

    reply = changes(client, reader)

    # The event's files are part of the event's change.
    assert summary(reply) == [(1, "status", status.status_id.hex), (2, "event", event.event_id.hex),
                              (3, "file", standalone.file_id.hex)]
    assert reply["last"] == 3 and reply["more"] is False
    first = reply["changes"][1]
    assert (first["camera_id"], first["time"]) == ("cam-1", event.event_time)
    assert first["recorded_at"] >= reply["changes"][0]["recorded_at"]


def test_records_made_locally_are_numbered_too(client, reader, stored):
    status = factories.status("cam-1")
    stored(status, factories.event(status, []))
    assert [change["type"] for change in changes(client, reader)["changes"]] == ["status", "event"]


def test_a_record_sent_twice_is_one_change(client, exporter_auth, reader, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    event = dataset.add_event(factories.status(), file_count=1)
    node = ProtocolClient(client, exporter_auth)
    for _ in range(2):
        node.replicate(event, dataset.statuses, dataset.contents)
    assert [change["type"] for change in changes(client, reader)["changes"]] == ["status", "event"]


def test_since_and_limit_page_through_the_feed(client, reader, stored):
    status = factories.status()
    stored(status, *[factories.event(status, []) for _ in range(6)])

    first = changes(client, reader, limit=4)
    rest = changes(client, reader, since=first["last"], limit=4)
    nothing = changes(client, reader, since=rest["last"])

    assert [c["sequence"] for c in first["changes"]] == [1, 2, 3, 4]
    assert (first["last"], first["more"]) == (4, True)
    assert [c["sequence"] for c in rest["changes"]] == [5, 6, 7]
    assert (rest["last"], rest["more"]) == (7, False)
    assert nothing == {"changes": [], "last": 7, "more": False}


def test_types_and_cameras_filter_and_last_still_moves_on(client, reader, stored):
    north, south = factories.status("north"), factories.status("south")
    stored(north, south, factories.event(north, []), factories.file_record(south, b"x"),
           factories.event(south, []))

    events = changes(client, reader, types="event")
    south_only = changes(client, reader, camera_id="south")
    files_and_statuses = changes(client, reader, types=["file", "status"])
    nothing_new = changes(client, reader, types="file", since=4)

    assert [(c["type"], c["camera_id"]) for c in events["changes"]] == [("event", "north"), ("event", "south")]
    assert [c["type"] for c in south_only["changes"]] == ["status", "file", "event"]
    assert [c["type"] for c in files_and_statuses["changes"]] == ["status", "status", "file"]
    # Nothing matched after 4, but the reader need not look at 5 again.
    assert nothing_new == {"changes": [], "last": 5, "more": False}


def test_latest_gives_the_newest_change_of_each_camera(client, reader, stored):
    north, south, east = (factories.status(name) for name in ("north", "south", "east"))
    stored(north, south, east)
    north_events = stored(*[factories.event(north, []) for _ in range(3)])
    south_file = stored(factories.file_record(south, b"x"))[0]

    reply = changes(client, reader, latest=1)
    only_events = changes(client, reader, latest=1, types="event")
    after = changes(client, reader, latest=1, since=5)

    assert [(c["camera_id"], c["id"]) for c in reply["changes"]] == [
        ("east", east.status_id.hex), ("north", north_events[-1].event_id.hex),
        ("south", south_file.file_id.hex)]
    assert reply["last"] == 7
    assert [c["id"] for c in only_events["changes"]] == [north_events[-1].event_id.hex]
    assert [c["camera_id"] for c in after["changes"]] == ["north", "south"]


def test_latest_with_a_limit_leaves_the_rest_for_the_next_read(client, reader, stored):
    statuses = [factories.status(f"cam-{index}") for index in range(3)]
    stored(*statuses)
    first = changes(client, reader, latest=1, limit=2)
    second = changes(client, reader, latest=1, limit=2, since=first["last"])
    assert [c["camera_id"] for c in first["changes"]] == ["cam-0", "cam-1"]
    assert first["more"] is True
    assert [c["camera_id"] for c in second["changes"]] == ["cam-2"]


def test_a_long_poll_is_answered_by_an_import_that_arrives_while_it_waits(
        live_server, reader, exporter_auth, monkeypatch):
    # Told when the poll has looked once and found nothing, so the import surely
    # arrives while it waits.
    waiting = threading.Event()
    real_read_changes = feed.read_changes

    def read_changes_and_tell(*args, **kwargs):
        page = real_read_changes(*args, **kwargs)
        if not page.changes:
            waiting.set()
        return page

    monkeypatch.setattr(feed, "read_changes", read_changes_and_tell)
    status = factories.status("cam-1")
    with ThreadPoolExecutor(1) as pool:
        # The client gives up after 30 s, the server would wait 60 s: any reply at all
        # means the import woke the poll.
        poll = pool.submit(requests.get, f"{live_server}/changes", auth=reader,
                           params={"since": 0, "timeout": 60_000}, timeout=(5, 30))
        assert waiting.wait(30), "the long poll never reached the server"
        imported = requests.post(f"{live_server}/import", auth=exporter_auth, timeout=30,
                                 json={"type": "status", "status": status.to_dict()})
        assert imported.status_code == 200, imported.text
        response = poll.result()

    assert response.status_code == 200
    assert summary(response.json()) == [(1, "status", status.status_id.hex)]


def test_a_long_poll_with_nothing_new_answers_empty_at_its_timeout(client, reader, stored):
    stored(factories.status())
    started = time.monotonic()
    reply = changes(client, reader, since=1, timeout=500)
    assert reply == {"changes": [], "last": 1, "more": False}
    assert time.monotonic() - started >= 0.5, "the poll did not wait for its timeout"


@pytest.fixture
def one_second_cap(settings):
    settings["feed_max_wait_seconds"] = 1


def test_a_long_poll_waits_no_longer_than_the_server_allows(one_second_cap, live_server, reader):
    # Asked for an hour, the server answers after its own cap of a second.
    response = requests.get(f"{live_server}/changes", auth=reader, timeout=20,
                            params={"timeout": 3_600_000})
    assert response.json() == {"changes": [], "last": 0, "more": False}


def test_numbers_are_taken_in_commit_order(services, client, reader, monkeypatch):
    """While one writer holds a number it has not committed, another writer waits for it
    and gets the next number; a reader never sees the later number without the earlier."""
    database = services.database
    holding, released = threading.Event(), threading.Event()
    real_next_sequence = feed.next_sequence

    def next_sequence_then_pause(session, count=1):
        number = real_next_sequence(session, count)
        if threading.current_thread().name == "first":
            holding.set()
            released.wait(10)
        return number

    monkeypatch.setattr(feed, "next_sequence", next_sequence_then_pause)
    first = threading.Thread(name="first", target=store_locally,
                             args=(database, factories.status("first")))
    first.start()
    assert holding.wait(10)
    second = threading.Thread(target=store_locally, args=(database, factories.status("second")))
    second.start()
    time.sleep(0.3)  # let the second writer reach the point where it must wait
    seen_while_holding = changes(client, reader)
    released.set()
    first.join(10)
    second.join(10)

    assert seen_while_holding == {"changes": [], "last": 0, "more": False}
    assert [(c["sequence"], c["camera_id"]) for c in changes(client, reader)["changes"]] == [
        (1, "first"), (2, "second")]


def test_a_transaction_storing_many_records_numbers_them_in_order(services, client, reader):
    status = factories.status()
    events = [factories.event(status, []) for _ in range(3)]
    with services.database.write() as session:
        store.insert_status(session, status)
        for event in events:
            assert store.insert_event(session, event) == []
    assert [c["id"] for c in changes(client, reader)["changes"]] == [
        status.status_id.hex, *(event.event_id.hex for event in events)]


def test_a_record_rolled_back_to_its_savepoint_is_not_in_the_feed(services, client, reader):
    status = factories.status()
    kept = factories.event(status, [])
    dropped = factories.event(status, [])
    with services.database.write() as session:
        store.insert_status(session, status)
        try:
            with session.begin_nested():
                store.insert_event(session, dropped)
                raise RuntimeError("this record turns out to be unwanted")
        except RuntimeError:
            pass
        with session.begin_nested():
            store.insert_event(session, kept)
    assert [(c["sequence"], c["id"]) for c in changes(client, reader)["changes"]] == [
        (1, status.status_id.hex), (2, kept.event_id.hex)]


@pytest.mark.parametrize("query, parameter", [
    ("since=-1", "since"),
    ("since=soon", "since"),
    ("limit=0", "limit"),
    ("limit=10001", "limit"),
    ("types=meteor", "types"),
    ("timeout=-5", "timeout"),
    ("timeout=1.5", "timeout"),
    ("latest=perhaps", "latest"),
    ("camera=cam-1", "camera"),
    # Empty filters would match nothing while 'last' moved past every change.
    ("types=", "types"),
    ("types=,", "types"),
    ("camera_id=", "camera_id"),
    ("camera_id=cam-1&camera_id=", "camera_id"),
    ("camera_id=" + "c" * 256, "camera_id"),
    ("camera_id=a%00b", "camera_id"),
])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_bad_query_parameter_is_a_400_naming_it(client, reader, query, parameter):
    response = client.get(f"/changes?{query}", auth=reader)
    assert response.status_code == 400
    assert response.get_json()["field"] == parameter


def test_reading_the_feed_needs_the_user_role(client, make_user):
    assert client.get("/changes").status_code == 401
    assert client.get("/changes", auth=make_user("exporter", "import")).status_code == 403


def test_the_feed_survives_its_counter_row_going_missing(services, client, reader, stored):
    status = factories.status()
    stored(status)
    with services.database.write() as session:
        session.execute(delete(FeedCounterRow))
    stored(factories.event(status, []))
    assert [c["sequence"] for c in changes(client, reader)["changes"]] == [1, 2]


def test_wait_for_changes_polls_without_holding_a_session(services):
    """The long poll is a loop of short reads; nothing new means it sleeps and reads again."""
    ticks = iter(range(100))
    naps = []
    page = feed.wait_for_changes(services.database, 0, 10, 0.35, clock=lambda: next(ticks) * 0.1,
                                 sleep=naps.append)
    assert page.changes == [] and page.last == 0
    assert naps and all(nap <= feed.POLL_INTERVAL_SECONDS for nap in naps)


def test_a_long_transaction_does_not_hold_up_other_writers_before_its_commit(services, client, reader):
    """A batch import stores many records in one transaction while single imports go on;
    the same record may come both ways at once. The batch must not lock the feed before
    its commit, or the two would wait for each other."""
    if services.database.is_sqlite:
        pytest.skip("SQLite runs one writing transaction at a time")
    status = factories.status("cam")
    early, shared = factories.event(status, []), factories.event(status, [])
    store_locally(services.database, status)
    single_import = threading.Thread(target=store_locally, args=(services.database, shared))

    with services.database.write() as session:
        assert store.insert_event(session, early) == []
        single_import.start()
        single_import.join(10)
        assert not single_import.is_alive(), "the single import waited for the open batch"
        try:
            with session.begin_nested():
                store.insert_event(session, shared)
        except IntegrityError:
            pass  # stored a moment ago by the single import, as the batch code expects

    assert [c["id"] for c in changes(client, reader)["changes"]] == [
        status.status_id.hex, shared.event_id.hex, early.event_id.hex]
