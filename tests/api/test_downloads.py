"""Downloading stored files: whole, by Range, conditionally, under the access policy."""
from __future__ import annotations

import datetime
import uuid

import pytest
from werkzeug.http import http_date

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


@pytest.mark.parametrize("file_id", [uuid.uuid4().hex, "not-an-id"], ids=["unknown-id", "not-an-id"])
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


def test_if_range_with_the_current_etag_resumes(client, reader, stored_file):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"Range": "bytes=10-", "If-Range": f'"{record.md5}"'})
    assert response.status_code == 206 and response.data == data[10:]


@pytest.mark.parametrize("validator", ["weak etag", "later date", "earlier date"])
def test_if_range_resumes_only_for_this_very_file(client, reader, stored_file, validator):
    # RFC 9110: If-Range takes the strong ETag or exactly the Last-Modified date.
    record, data = stored_file
    url = f"/files/content/{record.file_id.hex}"
    last_modified = client.get(url, auth=reader).last_modified
    value = {"weak etag": f'W/"{record.md5}"',
             "later date": http_date(last_modified + datetime.timedelta(hours=1)),
             "earlier date": http_date(last_modified - datetime.timedelta(hours=1))}[validator]
    response = client.get(url, auth=reader, headers={"Range": "bytes=10-", "If-Range": value})
    assert response.status_code == 200 and response.data == data
    exact = client.get(url, auth=reader,
                       headers={"Range": "bytes=10-", "If-Range": http_date(last_modified)})
    assert exact.status_code == 206 and exact.data == data[10:]


def test_a_file_dated_beyond_year_9999_still_downloads(client, exporter_auth, reader, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    record = dataset.add_file(factories.status(), time_ms=300_000_000_000_000)
    ProtocolClient(client, exporter_auth).replicate(record, dataset.statuses, dataset.contents)
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader)
    assert response.status_code == 200 and response.data == dataset.contents[record.file_id]
    assert response.headers["Last-Modified"] == "Fri, 31 Dec 9999 23:59:59 GMT"


def test_a_suffix_range_gives_the_last_bytes(client, reader, stored_file):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"Range": "bytes=-500"})
    assert response.status_code == 206 and response.data == data[-500:]
    assert response.headers["Content-Range"] == f"bytes {SIZE - 500}-{SIZE - 1}/{SIZE}"


def test_an_open_range_gives_the_rest_of_the_file(client, reader, stored_file):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"Range": "bytes=500-"})
    assert response.status_code == 206 and response.data == data[500:]


@pytest.mark.parametrize("wanted", ["bytes=0-9,20-29", "items=0-5", "bytes=ten-twenty"],
                         ids=["several-ranges", "unknown-unit", "bad-syntax"])
def test_a_range_this_server_does_not_serve_is_ignored(client, reader, stored_file, wanted):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"Range": wanted})
    assert response.status_code == 200 and response.data == data


@pytest.mark.parametrize("headers", [
    {"If-Match": '"nope"'},
    {"If-Match": '"nope"', "Range": "bytes=0-9"},
    {"If-Unmodified-Since": "Mon, 01 Jan 1990 00:00:00 GMT"},
], ids=["if-match", "if-match-with-range", "if-unmodified-since"])
def test_a_failed_precondition_is_a_bare_412(client, reader, stored_file, headers):
    record, _ = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader, headers=headers)
    assert response.status_code == 412
    assert response.get_json()["error"] == "precondition_failed"


@pytest.mark.parametrize("headers", [
    lambda record: {"If-Match": f'"{record.md5}"'},
    lambda record: {"If-Match": "*"},
    lambda record: {"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
    lambda record: {"If-Match": f'"{record.md5}"',  # If-Match wins over the date
                    "If-Unmodified-Since": "Mon, 01 Jan 1990 00:00:00 GMT"},
], ids=["if-match", "if-match-any", "if-unmodified-since", "if-match-first"])
def test_a_precondition_that_holds_sends_the_file(client, reader, stored_file, headers):
    record, data = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers=headers(record))
    assert response.status_code == 200 and response.data == data


def test_a_matching_if_none_match_is_a_304_even_with_a_range(client, reader, stored_file):
    record, _ = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}", auth=reader,
                          headers={"If-None-Match": f'"{record.md5}"', "Range": "bytes=0-9"})
    assert response.status_code == 304 and response.data == b""


@pytest.mark.parametrize("name, disposition", [
    ("a%0Ab.mp4", "inline; filename=ab.mp4"),
    ("a%0D%0AX-Injected:%201.mp4", "inline; filename=\"aX-Injected: 1.mp4\""),
    ("%E6%B5%81%E6%98%9F.mp4",
     "inline; filename=.mp4; filename*=UTF-8''%E6%B5%81%E6%98%9F.mp4"),
    ('say%20%22hi%22.mp4', 'inline; filename="say \\"hi\\".mp4"'),
], ids=["newline", "header-injection", "unicode", "quotes"])
def test_the_suggested_name_is_a_safe_content_disposition(client, reader, stored_file, name,
                                                          disposition):
    record, _ = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}/{name}", auth=reader)
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == disposition
    assert "X-Injected" not in response.headers


def test_a_name_of_control_characters_only_falls_back_to_the_files_own(client, reader, stored_file):
    record, _ = stored_file
    response = client.get(f"/files/content/{record.file_id.hex}/%0D%0A", auth=reader)
    assert response.headers["Content-Disposition"] == f"inline; filename={record.file_name}"
