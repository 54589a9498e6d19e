"""Downloading stored files: whole, by Range, conditionally, under the access policy."""
from __future__ import annotations

import uuid

import pytest

import factories
from protocol import ProtocolClient

SIZE = 100_000


@pytest.fixture
def stored_file(client, exporter_auth, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    record = dataset.add_file(factories.status(), size=SIZE)
    ProtocolClient(client, exporter_auth).replicate(record, dataset.statuses, dataset.contents)
    return record, dataset.contents[record.file_id]


@pytest.fixture
def reader(make_user):
    return make_user("reader", "user")


def test_a_file_downloads_with_its_type_length_etag_and_name(client, reader, stored_file):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader)
    assert response.status_code == 200
    assert response.data == data
    assert response.headers["Content-Type"] == record.mime_type
    assert response.headers["Content-Length"] == str(SIZE)
    assert response.headers["ETag"] == f'"{record.md5}"'
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "Last-Modified" in response.headers
    assert response.headers["Content-Disposition"] == f"inline; filename={record.file_name}"


def test_a_name_in_the_url_becomes_the_suggested_name(client, reader, stored_file):
    record, _ = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}/night-42.png", auth=reader)
    assert response.headers["Content-Disposition"] == "inline; filename=night-42.png"


def test_a_range_request_resumes_a_download(client, reader, stored_file):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"Range": "bytes=60000-"})
    assert response.status_code == 206
    assert response.data == data[60000:]
    assert response.headers["Content-Range"] == f"bytes 60000-{SIZE - 1}/{SIZE}"


def test_a_closed_range_gives_just_those_bytes(client, reader, stored_file):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"Range": "bytes=10-19"})
    assert response.status_code == 206 and response.data == data[10:20]


def test_a_range_past_the_end_is_a_416(client, reader, stored_file):
    record, _ = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"Range": f"bytes={SIZE + 10}-"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{SIZE}"


def test_a_copy_with_the_same_etag_is_not_sent_again(client, reader, stored_file):
    record, _ = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"If-None-Match": f'"{record.md5}"'})
    assert response.status_code == 304 and response.data == b""


def test_if_range_with_a_stale_etag_sends_the_whole_file(client, reader, stored_file):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"Range": "bytes=10-", "If-Range": '"something-else"'})
    assert response.status_code == 200 and response.data == data


def test_an_unchanged_file_since_a_date_is_a_304(client, reader, stored_file):
    record, _ = stored_file
    first = client.get(f"/files/content/{record.file_id.hex}", auth=reader)
    again = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                       headers={"If-Modified-Since": first.headers["Last-Modified"]})
    assert again.status_code == 304


def test_head_gives_the_headers_without_the_bytes(client, reader, stored_file):
    record, _ = stored_file
    response = client.head(f"/files/content/{record.file_id.hex}", auth=reader)
    assert response.status_code == 200 and response.headers["Content-Length"] == str(SIZE)
    assert response.data == b""


@pytest.mark.parametrize("file_id", [uuid.uuid4().hex, "not-an-id"])
def test_an_unknown_file_is_a_404_in_json(client, reader, file_id):
    response = client.get(f"/files/content/{file_id}", auth=reader)
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_bytes_without_a_stored_record_are_not_served(client, reader, exporter_auth, tmp_path):
    from protocol import ProtocolClient as Node

    dataset = factories.DataSet(tmp_path / "node")
    record = dataset.add_file(factories.status())
    Node(client, exporter_auth).upload(record.file_id, dataset.contents[record.file_id])
    assert client.get(f"/files/content/{record.file_id.hex}", auth=reader).status_code == 404


def test_downloads_need_the_user_role_by_default(client, stored_file, exporter_auth):
    record, _ = stored_file
    assert client.get(f"/files/content/{record.file_id.hex}").status_code == 401
    assert client.get(f"/files/content/{record.file_id.hex}", auth=exporter_auth).status_code == 403


def test_a_public_server_serves_files_to_anyone_and_lets_caches_share_them(settings, exporter_auth, tmp_path):
    from meteorpi_server import create_app

    settings["read_access"] = "public"
    app = create_app(settings)
    client = app.test_client()
    dataset = factories.DataSet(tmp_path / "node")
    record = dataset.add_file(factories.status())
    ProtocolClient(client, exporter_auth).replicate(record, dataset.statuses, dataset.contents)
    response = client.get(f"/files/content/{record.file_id.hex}")
    assert response.status_code == 200 and response.data == dataset.contents[record.file_id]
    assert response.cache_control.public and response.cache_control.immutable
    app.extensions["meteorpi"].database.dispose()
