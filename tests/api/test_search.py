"""GET /events and GET /files over HTTP: the original JSON-in-the-path form, the
query-string form with cursors, bad input, and who may read."""
from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

import factories
from meteorpi_model.limits import MAX_TIME_MS
from local_records import store_locally
from protocol import ProtocolClient

SECOND = 1000
# Input checks that never reach the database run on one of them.
ONE_DATABASE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def reader(make_user):
    return make_user("reader", "user")


@pytest.fixture
def stored(services):
    """Store records locally; returns them."""
    def store(*entities):
        store_locally(services.database, *entities)
        return entities
    return store


def events_at(owner, *times):
    return [factories.event(owner, [], time_ms) for time_ms in times]


def test_an_imported_event_is_found_in_the_original_wire_format(client, exporter_auth, reader, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    event = dataset.add_event(factories.status("cam-1"), file_count=2)
    node = ProtocolClient(client, exporter_auth)
    assert node.replicate(event, dataset.statuses, dataset.contents)[-1] == "complete"

    response = client.get("/events/" + quote(json.dumps({"camera_ids": ["cam-1"]})), auth=reader)

    assert response.status_code == 200
    assert response.get_json() == {"events": [event.to_dict()], "count": 1}


def test_the_original_file_search_takes_a_mime_type_with_its_slash(client, reader, stored):
    owner = factories.status()
    video = factories.file_record(owner, b"video", mime_type="video/mp4")
    stored(owner, video, factories.file_record(owner, b"image"))
    search = json.dumps({"mime_type": "video/mp4", "exclude_events": True})

    for path in ("/files/" + quote(search, safe=""), "/files/" + search):
        reply = client.get(path, auth=reader).get_json()
        assert reply == {"files": [video.to_dict()], "count": 1}, path


def test_the_original_search_also_accepts_json_encoded_twice(client, reader, stored):
    owner = factories.status()
    stored(owner, *events_at(owner, 1, 2))
    twice = quote(quote(json.dumps({"limit": 1}), safe=""), safe="")
    reply = client.get(f"/events/{twice}", auth=reader).get_json()
    assert len(reply["events"]) == 1 and reply["count"] == 2


def test_the_original_search_counts_every_match_and_pages_with_skip(client, reader, stored):
    owner = factories.status()
    events = stored(owner, *events_at(owner, *range(10, 60, 10)))
    newest_first = [event.to_dict() for event in reversed(events)]

    reply = client.get('/events/{"limit": 2, "skip": 1}', auth=reader).get_json()

    assert reply == {"events": newest_first[1:3], "count": 5}


@pytest.mark.parametrize("path, field", [
    ("/events/not json", "search"),
    ("/events/[1, 2]", ""),
    ('/events/{"limit": 0}', "limit"),
    ('/events/{"camera_ids": []}', "camera_ids"),
    ('/events/{"meta_constraints": [{"type": "near", "key": "k", "value": 1}]}', "meta_constraints[0].type"),
    ('/files/{"exclude_events": "yes"}', "exclude_events"),
    ("/events/" + "[" * 100_000, "search"),
])
@ONE_DATABASE
def test_a_bad_original_search_is_a_400_naming_the_field(client, reader, path, field):
    response = client.get(path, auth=reader)
    assert response.status_code == 400
    assert response.get_json()["field"] == field


def test_the_query_form_takes_the_same_criteria(client, reader, stored):
    north, south = factories.status("north"), factories.status("south")
    wanted = factories.event(north, [], factories.NIGHT + 5 * SECOND)
    stored(north, south, wanted, factories.event(north, [], factories.NIGHT),
           factories.event(south, [], factories.NIGHT + 5 * SECOND),
           factories.event(north, [], factories.NIGHT + 6 * SECOND,
                           meta=[factories.Meta.string("meteorpi:class", "plane")]))
    meta = json.dumps({"type": "string_equals", "key": "meteorpi:class", "value": "sporadic"})

    reply = client.get("/events", auth=reader, query_string={
        "camera_id": ["north", "east"], "after": factories.NIGHT, "event_type": "meteor",
        "meta": meta, "limit": 10}).get_json()

    assert reply["events"] == [wanted.to_dict()]
    assert reply["more"] is False


def test_the_query_form_finds_stand_alone_files(client, reader, stored):
    owner = factories.status()
    alone = factories.file_record(owner, b"timelapse")
    stored(owner, alone, factories.event(owner, [factories.file_record(owner, b"in an event")]))

    reply = client.get("/files?exclude_events=1&mime_type=image/png", auth=reader).get_json()

    assert reply["files"] == [alone.to_dict()]


def walk(client, auth, path, **query):
    """Yield each page of a search, following its cursor until no more match."""
    cursor = None
    while True:
        position = {"cursor": cursor} if cursor else {}
        reply = client.get(path, auth=auth, query_string={**query, **position}).get_json()
        yield reply
        if not reply["more"]:
            return
        cursor = reply["next"]


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_a_cursor_walk_sees_each_record_once_while_records_arrive(client, reader, stored, order):
    owner = factories.status()
    # Pairs share a time, so the walk also has to order ties.
    stored(owner)
    before = stored(*events_at(owner, *[factories.NIGHT + (index // 2) * SECOND
                                        for index in range(25)]))
    seen, arrived = [], []
    for page_number, reply in enumerate(walk(client, reader, "/events", limit=4, order=order)):
        seen += [item["event_id"] for item in reply["events"]]
        # New records at the start, the end and in the middle of the ordering.
        arrived += stored(*events_at(owner, factories.NIGHT - SECOND, factories.NIGHT + 99 * SECOND,
                                     factories.NIGHT + page_number * SECOND))

    assert len(seen) == len(set(seen))
    assert {event.event_id.hex for event in before} <= set(seen)
    assert set(seen) <= {event.event_id.hex for event in before + tuple(arrived)}


def test_a_cursor_at_the_end_finds_records_that_arrive_later(client, reader, stored):
    owner = factories.status()
    stored(owner, *events_at(owner, 1, 2))
    last = client.get("/events?order=oldest", auth=reader).get_json()
    assert last["more"] is False

    empty = client.get("/events", auth=reader, query_string={"cursor": last["next"]}).get_json()
    assert empty == {"events": [], "more": False, "next": last["next"]}

    newer = stored(*events_at(owner, 3))[0]
    reply = client.get("/events", auth=reader, query_string={"cursor": last["next"]}).get_json()
    assert [event["event_id"] for event in reply["events"]] == [newer.event_id.hex]


@pytest.mark.parametrize("query, parameter", [
    ("limt=3", "limt"),
    ("limit=many", "limit"),
    ("limit=0", "limit"),
    ("limit=10001", "limit"),
    ("limit=1&limit=2", "limit"),
    ("after=1.5", "after"),
    ("after=-1", "after"),
    ("after=5&before=4", "before"),
    ("lat_min=north", "lat_min"),
    ("lat_min=91", "lat_min"),
    ("after_offset=nan", "after_offset"),
    ("before_offset=86401", "before_offset"),
    ("event_type=:meteor", "event_type"),
    ("camera_id=", "camera_id"),
    ("meta=duration", "meta"),
    ('meta={"type": "less", "key": "meteorpi:duration", "value": "long"}', "meta"),
    ("cursor=nonsense", "cursor"),
    ("cursor=WyJ4IiwxLCJhYiJd", "cursor"),
    ("order=sideways", "order"),
    ("exclude_events=1", "exclude_events"),
])
@ONE_DATABASE
def test_a_bad_query_parameter_is_a_400_naming_it(client, reader, query, parameter):
    response = client.get(f"/events?{query}", auth=reader)
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["field"] == parameter
    assert f"'{parameter}'" in body["message"]


def cursor_of(document) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    cursor_of(["d", 10**30, "0" * 32]),           # more than a 64-bit column holds
    cursor_of(["d", MAX_TIME_MS + 1, "0" * 32]),  # past the latest time a record may have
    cursor_of(["a", -1, "0" * 32]),
    base64.urlsafe_b64encode(b"[" * 5000).decode(),  # nested too deep to parse
    "A" * 10_000,
], ids=["huge time", "time past the limit", "negative time", "deeply nested", "very long"])
@pytest.mark.parametrize("path", ["/events", "/files"])
def test_a_forged_cursor_is_a_400_on_either_database(client, reader, cursor, path):
    response = client.get(path, auth=reader, query_string={"cursor": cursor})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["field"] == "cursor"


def test_a_cursor_at_the_latest_possible_time_is_a_position_like_any_other(client, reader, stored):
    owner = factories.status()
    stored(owner, *events_at(owner, 1, 2))
    cursor = cursor_of(["d", MAX_TIME_MS, "f" * 32])
    reply = client.get("/events", auth=reader, query_string={"cursor": cursor}).get_json()
    assert len(reply["events"]) == 2


def test_a_cursor_cannot_change_the_order(client, reader, stored):
    owner = factories.status()
    stored(owner, *events_at(owner, 1, 2))
    cursor = client.get("/events?limit=1", auth=reader).get_json()["next"]
    response = client.get("/events", auth=reader, query_string={"cursor": cursor, "order": "oldest"})
    assert response.status_code == 400
    assert response.get_json()["field"] == "cursor"


@pytest.mark.parametrize("path", ["/events", "/files", '/events/{"limit": 1}', "/files/{}"])
def test_searching_needs_the_user_role(client, make_user, path):
    assert client.get(path).status_code == 401
    assert client.get(path, auth=make_user("exporter", "import")).status_code == 403
    assert client.get(path, auth=make_user("viewer", "user")).status_code == 200


@pytest.mark.parametrize("path", ["/events", "/files", '/events/{"limit": 1}', "/files/{}"])
def test_public_read_access_opens_searches_to_anyone(settings, path):
    from meteorpi_server import create_app

    settings["read_access"] = "public"
    app = create_app(settings)
    try:
        assert app.test_client().get(path).status_code == 200
        assert app.test_client().post("/import", json={}).status_code == 401
    finally:
        app.extensions["meteorpi"].database.dispose()
