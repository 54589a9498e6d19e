"""GET /cameras: which cameras have been heard from, their statuses, counts and metadata."""
from __future__ import annotations

import json

import factories
import pytest
from local_records import store_locally
from protocol import ProtocolClient

from meteorpi_server.api import cameras as cameras_api
from meteorpi_server.reading.cameras import MAX_META_BYTES, MAX_META_DEPTH
from meteorpi_server.storage import store

HOUR = 3_600_000


@pytest.fixture
def reader(make_user):
    return make_user("reader", "user")


@pytest.fixture
def admin(make_user):
    return make_user("admin", "camera_admin")


@pytest.fixture
def stored(services):
    def store_(*entities):
        store_locally(services.database, *entities)
    return store_


def camera_list(client, auth, query=""):
    response = client.get(f"/cameras{query}", auth=auth)
    assert response.status_code == 200, response.get_json()
    return {camera["camera_id"]: camera for camera in response.get_json()["cameras"]}


def later(monkeypatch, milliseconds):
    """Move the server's clock on, for storing records and for answering."""
    real = store.now_ms
    monkeypatch.setattr(store, "now_ms", lambda: real() + milliseconds)
    monkeypatch.setattr(cameras_api, "now_ms", lambda: real() + milliseconds)


def test_a_camera_is_listed_once_its_records_arrive(client, exporter_auth, reader, tmp_path):
    assert camera_list(client, reader) == {}
    dataset = factories.DataSet(tmp_path / "node")
    status = factories.status("school-7")
    before = store.now_ms()
    for event in (dataset.add_event(status, 2), dataset.add_event(status, 2)):
        ProtocolClient(client, exporter_auth).replicate(event, dataset.statuses, dataset.contents)
    standalone = dataset.add_file(status)
    ProtocolClient(client, exporter_auth).replicate(standalone, dataset.statuses, dataset.contents)

    camera = camera_list(client, reader)["school-7"]

    assert camera["connected"] is True
    assert before <= camera["first_seen"] <= camera["last_seen"] <= store.now_ms()
    assert camera["status"] == status.to_dict()
    assert (camera["event_count"], camera["file_count"]) == (2, 5)
    assert camera["meta"] == {}


@pytest.fixture
def ten_minute_window(settings):
    settings["camera_connected_seconds"] = 600


def test_a_camera_not_heard_from_within_the_window_is_not_connected(
        ten_minute_window, client, reader, stored, monkeypatch):
    stored(factories.status("quiet"))
    later(monkeypatch, 11 * 60 * 1000)
    stored(factories.status("chatty"))

    everyone = camera_list(client, reader)

    assert {name: camera["connected"] for name, camera in everyone.items()} == {
        "chatty": True, "quiet": False}
    assert list(camera_list(client, reader, "?connected=1")) == ["chatty"]


def test_last_seen_moves_with_each_record_and_first_seen_stays(client, reader, stored):
    status = factories.status("cam")
    stored(status)
    first = camera_list(client, reader)["cam"]
    stored(factories.event(status, []))
    second = camera_list(client, reader)["cam"]
    assert second["first_seen"] == first["first_seen"]
    assert second["last_seen"] >= first["last_seen"]
    assert second["event_count"] == 1


def test_one_camera_shows_its_status_history(client, reader, stored):
    old = factories.status("cam", valid_from=factories.NIGHT - 48 * HOUR,
                           valid_to=factories.NIGHT - 24 * HOUR, lens="old lens")
    new = factories.status("cam", valid_from=factories.NIGHT - 24 * HOUR)
    stored(new, old, factories.status("other"))

    camera = client.get("/cameras/cam", auth=reader).get_json()["camera"]

    assert camera["statuses"] == [old.to_dict(), new.to_dict()]
    assert camera["status"] == new.to_dict()
    assert "statuses" not in camera_list(client, reader)["cam"]


def test_an_unknown_camera_is_a_404(client, reader):
    response = client.get("/cameras/nowhere", auth=reader)
    assert response.status_code == 404
    assert "nowhere" in response.get_json()["message"]


def test_the_original_status_routes_answer_the_status_in_force(client, reader, stored):
    old = factories.status("cam", valid_from=factories.NIGHT - 48 * HOUR,
                           valid_to=factories.NIGHT - 24 * HOUR)
    new = factories.status("cam", valid_from=factories.NIGHT - 24 * HOUR)
    stored(old, new)

    def status(path):
        response = client.get(path, auth=reader)
        return response.status_code, (response.get_json() or {}).get("status")

    assert status("/cameras/cam/status") == (200, new.to_dict())
    assert status(f"/cameras/cam/status/{factories.NIGHT - 30 * HOUR}") == (200, old.to_dict())
    assert status(f"/cameras/cam/status/{factories.NIGHT - 24 * HOUR}") == (200, new.to_dict())
    assert status(f"/cameras/cam/status/{factories.NIGHT - 49 * HOUR}")[0] == 404
    assert status("/cameras/other/status")[0] == 404
    assert status("/cameras/cam/status/yesterday")[0] == 400
    assert status("/cameras/cam/status/99999999999999999999")[0] == 400


def test_a_camera_admin_attaches_metadata_that_every_reply_shows(client, reader, admin, stored):
    status = factories.status("school-7")
    stored(status)
    meta = {"school": "Hills Road", "contact": {"name": "Ms Smith", "email": "s@example.org"}}

    response = client.put("/cameras/school-7/meta", json=meta, auth=admin)

    assert response.status_code == 200
    assert response.get_json()["camera"]["meta"] == meta
    stored(factories.event(status, []))  # records arriving later leave it alone
    assert camera_list(client, reader)["school-7"]["meta"] == meta
    assert client.get("/cameras/school-7", auth=reader).get_json()["camera"]["meta"] == meta


def test_metadata_needs_the_camera_admin_role(client, reader, stored):
    stored(factories.status("cam"))
    assert client.put("/cameras/cam/meta", json={"a": 1}).status_code == 401
    assert client.put("/cameras/cam/meta", json={"a": 1}, auth=reader).status_code == 403


@pytest.mark.parametrize("body, status", [
    (json.dumps([1, 2]), 400),
    (json.dumps("school"), 400),
    ("{not json", 400),
    (json.dumps({"notes": "x" * MAX_META_BYTES}), 400),
])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bad_metadata_is_refused_and_nothing_changes(client, admin, reader, stored, body, status):
    stored(factories.status("cam"))
    response = client.put("/cameras/cam/meta", data=body, content_type="application/json", auth=admin)
    assert response.status_code == status
    assert "message" in response.get_json()
    assert camera_list(client, reader)["cam"]["meta"] == {}


def nested(depth: int) -> dict:
    """A metadata document whose objects nest ``depth`` deep (the document is level 1)."""
    meta: dict = {"name": "innermost"}
    for _ in range(depth - 1):
        meta = {"inside": meta}
    return meta


@pytest.mark.parametrize("depth", [MAX_META_DEPTH + 1, 200])
def test_metadata_nested_too_deep_is_a_400_naming_it(client, admin, reader, stored, depth):
    stored(factories.status("cam"))
    response = client.put("/cameras/cam/meta", json=nested(depth), auth=admin)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["field"] == "meta"
    assert f"more than {MAX_META_DEPTH} deep" in response.get_json()["message"]
    assert camera_list(client, reader)["cam"]["meta"] == {}


def test_metadata_nested_about_as_deep_as_the_stack_goes_is_a_400(client, admin, reader, stored):
    # Somewhere in this range a document parses but runs out of stack when written out
    # (where exactly depends on how deep the server's stack already is); beyond it the
    # parser itself gives up. Every depth must be a 400, and nothing stored.
    stored(factories.status("cam"))
    for depth in [*range(800, 1001, 10), 5000]:
        body = '{"inside": ' * (depth - 1) + '{"name": "innermost"}' + "}" * (depth - 1)
        response = client.put("/cameras/cam/meta", data=body, content_type="application/json",
                              auth=admin)
        assert response.status_code == 400, (depth, response.get_data(as_text=True))
    assert camera_list(client, reader)["cam"]["meta"] == {}


@pytest.mark.parametrize("path", ["/cameras/a%00b", "/cameras/a%00b/status",
                                  "/cameras/a%00b/status/1000", "/cameras/" + "c" * 256])
def test_a_camera_id_no_camera_could_have_is_a_400(client, reader, path):
    response = client.get(path, auth=reader)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["field"] == "camera_id"


def test_metadata_for_a_camera_id_no_camera_could_have_is_a_400(client, admin):
    response = client.put("/cameras/a%00b/meta", json={"a": 1}, auth=admin)
    assert response.status_code == 400
    assert response.get_json()["field"] == "camera_id"


def test_metadata_for_a_camera_never_heard_from_is_a_404(client, admin):
    response = client.put("/cameras/ghost/meta", json={"a": 1}, auth=admin)
    assert response.status_code == 404


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_bad_connected_parameter_is_a_400(client, reader):
    response = client.get("/cameras?connected=maybe", auth=reader)
    assert response.status_code == 400
    assert response.get_json()["field"] == "connected"
