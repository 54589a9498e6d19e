"""Malformed import requests get a 4xx JSON reply saying what is wrong, and nothing is written."""
from __future__ import annotations

import io
import uuid

import factories
import pytest

from meteorpi_model import md5_bytes
from meteorpi_server.storage import store
from store_queries import nothing_in_store

# Malformed requests are refused before anything reaches a file store: on the local one
# only, as their S3 variants would test nothing more.
pytestmark = pytest.mark.local_store_only

CAMERA = factories.status()
GOOD_EVENT = factories.event(CAMERA, [])


def nothing_written(services) -> bool:
    with services.database.read() as session:
        counts = store.count_rows(session)
    return set(counts.values()) == {0} and nothing_in_store(services.files)


def bad_event(**changes):
    document = GOOD_EVENT.to_dict()
    document.update(changes)
    return {"type": "event", "event": document}


@pytest.mark.parametrize("body, error, mentions, field", [
    (b"{not json", "bad_json", "not valid JSON", None),
    (b"", "bad_json", "not valid JSON", None),
    (b'{"type": "event", "event": NaN}', "bad_json", "NaN", None),
    (b"[1, 2]", "bad_request", "JSON object", None),
    (b'"event"', "bad_request", "JSON object", None),
    (b'{"type": "meteor"}', "bad_request", "type", "type"),
    (b'{"event": {}}', "bad_request", "type", "type"),
    (b'{"type": []}', "bad_request", "type", "type"),
    (b'{"type": {}}', "bad_request", "type", "type"),
    (b'{"type": "event"}', "bad_request", "'event' object", "event"),
    (b'{"type": "cached_entity", "cached_entity_id": "xyz"}', "invalid_entity", "cached_entity_id",
     "cached_entity_id"),
    (b'{"type": "cached_entity"}', "invalid_entity", "cached_entity_id", "cached_entity_id"),
], ids=["truncated", "empty", "nan", "array", "string", "unknown-type", "no-type", "type-is-a-list",
        "type-is-an-object", "no-entity", "bad-cached-id", "no-cached-id"])
def test_a_malformed_request_is_a_400_that_says_why(client, exporter_auth, services, body, error,
                                                    mentions, field):
    response = client.post("/import", data=body, auth=exporter_auth,
                           content_type="application/json")
    assert response.status_code == 400
    reply = response.get_json()
    assert reply["error"] == error
    assert mentions in reply["message"]
    assert reply.get("field") == field
    assert reply["state"] == "failed"  # what a legacy exporter reads
    assert nothing_written(services)


@pytest.mark.parametrize("bad_type", ["m" * 90_000, ["event"] * 20_000, {"k" * 50_000: 1}],
                         ids=["90-KB-string", "long-list", "big-object"])
def test_a_huge_bad_type_is_not_echoed_back(client, exporter_auth, services, bad_type):
    response = client.post("/import", json={"type": bad_type}, auth=exporter_auth)
    assert response.status_code == 400
    reply = response.get_json()
    assert reply["field"] == "type"
    assert len(response.data) < 1000
    assert "type must be one of event, file, status, cached_entity" in reply["message"]
    assert nothing_written(services)


@pytest.mark.parametrize("document, field", [
    (bad_event(event_id="not-an-id"), "event.event_id"),
    (bad_event(event_time="yesterday"), "event.event_time"),
    (bad_event(files={"a": 1}), "event.files"),
    (bad_event(meta=[{"type": "number", "key": "a:b", "value": "x"}]), "event.meta[0].value"),
    ({"type": "status", "status": {**CAMERA.to_dict(), "software_version": True}},
     "status.software_version"),
    ({"type": "file", "file": {**factories.file_record(CAMERA, b"x").to_dict(), "md5": "abc"}},
     "file.md5"),
    ({"type": "file", "file": {**factories.file_record(CAMERA, b"x").to_dict(), "file_size": -1}},
     "file.file_size"),
], ids=["bad-id", "bad-time", "files-not-list", "meta-value", "bool-version", "bad-md5", "negative-size"])
def test_an_invalid_entity_is_a_400_naming_the_field(client, exporter_auth, services, document, field):
    response = client.post("/import", json=document, auth=exporter_auth)
    assert response.status_code == 400
    reply = response.get_json()
    assert reply["error"] == "invalid_entity"
    assert reply["field"] == field
    assert field in reply["message"]
    assert nothing_written(services)


def test_a_body_over_the_limit_is_a_413(settings, exporter_auth):
    from meteorpi_server import create_app

    settings["max_json_bytes"] = 1000
    app = create_app(settings)
    document = bad_event(meta=[{"type": "string", "key": "a:b", "value": "x" * 900}])
    response = app.test_client().post("/import", json=document, auth=exporter_auth)
    assert response.status_code == 413
    assert response.get_json()["limit"] == 1000
    assert nothing_written(app.extensions["meteorpi"])
    app.extensions["meteorpi"].database.dispose()


def upload(client, auth, url, **kwargs):
    return client.post(url, auth=auth, **kwargs)


FILE_ID = uuid.uuid4().hex
GOOD_MD5 = md5_bytes(b"data")


@pytest.mark.parametrize("url, error", [
    (f"/import/data/not-an-id/{GOOD_MD5}", "bad_url"),
    (f"/import/data/{FILE_ID}/not-an-md5", "bad_url"),
    (f"/import/data/{FILE_ID}/{'g' * 32}", "bad_url"),
], ids=["bad-id", "bad-md5", "non-hex-md5"])
def test_an_upload_url_with_a_bad_id_or_md5_is_a_400(client, exporter_auth, services, url, error):
    response = upload(client, exporter_auth, url, data={"file": (io.BytesIO(b"data"), "f")},
                      content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.get_json()["error"] == error
    assert nothing_written(services)


def test_an_upload_that_is_not_multipart_is_a_415(client, exporter_auth, services):
    response = upload(client, exporter_auth, f"/import/data/{FILE_ID}/{GOOD_MD5}", data=b"data",
                      content_type="application/octet-stream")
    assert response.status_code == 415
    assert nothing_written(services)


def test_an_upload_without_the_file_field_is_a_400(client, exporter_auth, services):
    response = upload(client, exporter_auth, f"/import/data/{FILE_ID}/{GOOD_MD5}",
                      data={"other": (io.BytesIO(b"data"), "f")}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "missing_field", "field": "file", "state": "failed",
        "message": "the multipart body has no file field named 'file'"}
    assert nothing_written(services)


def test_a_truncated_upload_is_a_400_and_leaves_nothing(client, exporter_auth, services):
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + b"d" * 5000)
    response = upload(client, exporter_auth, f"/import/data/{FILE_ID}/{GOOD_MD5}", data=body,
                      content_type="multipart/form-data; boundary=xyz")
    assert response.status_code == 400
    assert nothing_written(services)


def test_an_upload_over_the_limit_is_a_413_and_leaves_nothing(settings, exporter_auth):
    from meteorpi_server import create_app

    settings["max_upload_bytes"] = 4096
    app = create_app(settings)
    data = b"x" * 10_000
    response = upload(app.test_client(), exporter_auth,
                      f"/import/data/{FILE_ID}/{md5_bytes(data)}",
                      data={"file": (io.BytesIO(data), "f")}, content_type="multipart/form-data")
    assert response.status_code == 413
    assert nothing_written(app.extensions["meteorpi"])
    app.extensions["meteorpi"].database.dispose()


def test_the_wrong_method_is_a_405_in_json(client, exporter_auth):
    response = client.put("/import", auth=exporter_auth)
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_an_unknown_route_is_a_404_in_json(client):
    response = client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_an_unexpected_failure_is_a_500_without_a_traceback(client, exporter_auth, services, monkeypatch):
    def explode(request):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(services.receiver, "receive_event", explode)
    response = client.post("/import", json={"type": "event", "event": GOOD_EVENT.to_dict()},
                           auth=exporter_auth)
    assert response.status_code == 500
    assert "secret internals" not in response.get_data(as_text=True)
    assert response.get_json()["error"] == "internal_error"


def test_multipart_headers_that_never_end_are_refused(client, exporter_auth, services):
    body = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\nX: " + b"a" * (3 << 20)
    response = client.post(f"/import/data/{FILE_ID}/{GOOD_MD5}", data=body, auth=exporter_auth,
                           content_type="multipart/form-data; boundary=xyz")
    assert response.status_code == 413
    assert nothing_written(services)
